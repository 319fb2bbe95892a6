//! One attempt against real HTTP receivers on 127.0.0.1 (let through by an allow list of
//! 127.0.0.0/8): what arrives, and receivers we did not write verifying it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use common::*;
use terra_core::signature::{SigningSecret, Verifier};
use terra_sink_webhooks::SignatureMode;
use terra_sink_webhooks::endpoint::RESERVED_HEADERS;
use terra_sink_webhooks::send::ErrorClass;

#[tokio::test]
async fn the_exact_body_arrives_signed_with_every_header() {
    let (addr, seen) = recording().await;
    let mut target = endpoint(
        &format!("http://{addr}/hook"),
        &[NEW_SECRET, OLD_SECRET],
        SignatureMode::Both,
    );
    target
        .headers
        .push(("x-team".parse().unwrap(), "blue".parse().unwrap()));
    let body = fixture();
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert!(result.delivered(), "{result:?}");
    assert_eq!((result.status, result.class), (Some(200), ErrorClass::None));
    assert_eq!(result.response.as_deref(), Some("thanks"));
    assert_eq!(result.error, None);

    let seen = seen.all();
    assert_eq!(seen.len(), 1);
    let (headers, got) = &seen[0];
    assert_eq!(got.as_ref(), body.as_ref(), "the body bytes, unchanged");
    assert_eq!(text(headers, "content-type"), "application/json");
    assert!(text(headers, "user-agent").starts_with("terra-ingest/"));
    assert_eq!(
        text(headers, "idempotency-key"),
        "01JD6ZC3W7Q0PZ7V9S5B8Y4K2M"
    );
    assert_eq!(text(headers, "terra-reference"), "ref-7f3a");
    assert_eq!(text(headers, "x-terra-trace-id"), "trace-9c1e:chunk:2");
    assert_eq!(text(headers, "x-terra-ordering-timestamp"), "1791100000123");
    assert!(text(headers, "traceparent").starts_with("00-4bf92f35"));
    assert_eq!(text(headers, "x-team"), "blue");
    assert_eq!(text(headers, "webhook-id"), "01JD6ZC3W7Q0PZ7V9S5B8Y4K2M");
    let signature = text(headers, "terra-signature");
    assert_eq!(signature, text(headers, "x-terra-signature"));
    assert_eq!(signature.matches("v1=").count(), 2, "{signature}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for secret in [NEW_SECRET, OLD_SECRET] {
        let verifier = Verifier::new(vec![SigningSecret::new(secret).unwrap()], 300);
        let at = verifier
            .verify(Some(signature), got, now)
            .expect("verifies");
        assert_eq!(at.to_string(), text(headers, "webhook-timestamp"));
    }
    let stranger = Verifier::new(vec![SigningSecret::new("not-the-secret").unwrap()], 300);
    assert!(stranger.verify(Some(signature), got, now).is_err());
}

#[tokio::test]
async fn each_signature_mode_sends_only_its_headers_and_retries_keep_the_idempotency_key() {
    let (addr, seen) = recording().await;
    let url = format!("http://{addr}/hook");
    let body = fixture();
    let sender = loopback_sender();
    let mut bare = outgoing(&body);
    bare.terra_reference = None;
    bare.terra_trace_id = None;
    bare.ordering_timestamp_ms = None;
    bare.traceparent = None;
    for mode in [SignatureMode::Terra, SignatureMode::Standard] {
        let result = sender
            .send(&endpoint(&url, &[NEW_SECRET], mode), &bare)
            .await;
        assert!(result.delivered(), "{result:?}");
    }
    let seen = seen.all();
    let (terra, standard) = (&seen[0].0, &seen[1].0);
    assert!(terra.contains_key("terra-signature") && !terra.contains_key("webhook-signature"));
    assert!(!standard.contains_key("terra-signature") && standard.contains_key("webhook-id"));
    assert_eq!(
        terra.get("idempotency-key"),
        standard.get("idempotency-key")
    );
    for absent in [
        "terra-reference",
        "x-terra-trace-id",
        "x-terra-ordering-timestamp",
        "traceparent",
    ] {
        assert!(!terra.contains_key(absent), "{absent} sent without a value");
    }
}

/// A raw HTTP/1.1 receiver: each request's head as sent (request line and headers, exactly),
/// answered 200 on the same connection.
async fn raw_heads() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 8192];
                    let Ok(n @ 1..) = socket.read(&mut chunk).await else {
                        return;
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    // one request at a time: its head, then content-length bytes of body
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            break;
                        }
                        buf.drain(..end + 4 + length);
                        seen.lock().unwrap().push(head);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[tokio::test]
async fn the_request_target_host_and_user_info_are_sent_as_a_browser_would() {
    let (addr, heads) = raw_heads().await;
    let body = fixture();
    let sender = loopback_sender();
    // user info (percent-encoded) becomes Basic credentials; it is never in the request line
    let mut target = endpoint(
        &format!("http://us%40er:p%3Ass@{addr}/hooks/terra?token=abc&x=1#frag"),
        &[NEW_SECRET],
        SignatureMode::Terra,
    );
    let result = sender.send(&target, &outgoing(&body)).await;
    assert!(result.delivered(), "{result:?}");
    // the same endpoint, its settings changed: the new ones are sent
    target.url = format!("http://{addr}/other").parse().unwrap();
    target.headers.push((
        "authorization".parse().unwrap(),
        "Bearer t0k".parse().unwrap(),
    ));
    let result = sender.send(&target, &outgoing(&body)).await;
    assert!(result.delivered(), "{result:?}");
    // an extra Authorization header wins over the URL's user info
    target.url = format!("http://a:b@{addr}/third").parse().unwrap();
    let result = sender.send(&target, &outgoing(&body)).await;
    assert!(result.delivered(), "{result:?}");

    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    let lines: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
    assert_eq!(
        lines,
        [
            "POST /hooks/terra?token=abc&x=1 HTTP/1.1",
            "POST /other HTTP/1.1",
            "POST /third HTTP/1.1"
        ]
    );
    for head in &heads {
        assert_eq!(header(head, "host"), [addr.to_string().as_str()], "{head}");
        assert_eq!(
            header(head, "content-length"),
            [body.len().to_string().as_str()]
        );
        assert_eq!(header(head, "content-type"), ["application/json"]);
    }
    // base64("us@er:p:ss")
    assert_eq!(
        header(&heads[0], "authorization"),
        ["Basic dXNAZXI6cDpzcw=="]
    );
    assert_eq!(header(&heads[1], "authorization"), ["Bearer t0k"]);
    assert_eq!(header(&heads[2], "authorization"), ["Bearer t0k"]);
}

fn verdict(python: &str, args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/verify_terra_sdk.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run tests/verify_terra_sdk.py");
    assert!(
        out.status.success(),
        "tests/verify_terra_sdk.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Terra's Python SDK and the Standard Webhooks library (in moto's venv, where
/// tests/run-all.sh installs them) accept each secret of a rotation, and refuse another.
#[tokio::test]
async fn terra_sdk_and_standard_webhooks_verify_each_secret_in_the_moto_venv() {
    let python = std::env::var("TERRA_TEST_PYTHON").expect(
        "TERRA_TEST_PYTHON must name moto's venv python, with terra-python and standardwebhooks (tests/run-all.sh installs them; tests that need it have `moto` in their names)",
    );
    let (addr, seen) = recording().await;
    let target = endpoint(
        &format!("http://{addr}/hook"),
        &[NEW_SECRET, OLD_SECRET],
        SignatureMode::Both,
    );
    let body = fixture();
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert!(result.delivered(), "{result:?}");
    let (headers, got) = seen.all().remove(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, &got).unwrap();
    let file = file.to_str().unwrap();
    let (id, ts, sig) = (
        text(&headers, "webhook-id"),
        text(&headers, "webhook-timestamp"),
        text(&headers, "webhook-signature"),
    );
    for secret in [NEW_SECRET, OLD_SECRET] {
        let terra = verdict(
            &python,
            &["terra", secret, file, text(&headers, "terra-signature")],
        );
        assert_eq!(terra, "ok", "Terra's SDK with {secret}");
        let standard = verdict(&python, &["standard", secret, file, id, ts, sig]);
        assert_eq!(standard, "ok", "standardwebhooks with {secret}");
    }
    let other = "whsec_b3RoZXItc2VjcmV0LW5vdC1jb25maWd1cmVk";
    let terra = verdict(
        &python,
        &["terra", other, file, text(&headers, "terra-signature")],
    );
    assert!(terra.starts_with("refused"), "{terra}");
    let standard = verdict(&python, &["standard", other, file, id, ts, sig]);
    assert!(standard.starts_with("refused"), "{standard}");
}

#[test]
fn extra_headers_may_not_override_what_the_sender_sets() {
    let mut target = endpoint(
        "https://hooks.example.com/terra",
        &[NEW_SECRET],
        SignatureMode::Both,
    );
    target
        .headers
        .push(("x-team".parse().unwrap(), "blue".parse().unwrap()));
    assert_eq!(target.validate(), Ok(()));
    for name in RESERVED_HEADERS
        .iter()
        .chain(&["Content-Type", "X-Terra-Signature"])
    {
        let mut bad = target.clone();
        bad.headers
            .push((name.parse().unwrap(), "x".parse().unwrap()));
        let err = bad.validate().expect_err(name);
        assert!(
            err.contains("headers") && err.contains("cannot be overridden"),
            "{err}"
        );
        assert!(err.contains(&name.to_lowercase()), "{err}");
    }
}
