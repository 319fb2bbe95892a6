//! End-to-end tests: the real `terra-ingest` binary as a child process, driven over HTTP and
//! through its own `send` / `verify` commands, with the embedded log read back from disk.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use prost::Message;
use terra_core::envelope::Envelope;
use terra_eventlog::{EventLog, LogUrl};

mod at_rest;
mod azure;
mod deliveries;
mod kafka_tools;
mod large;
mod log_repair;
mod objects;
mod projection_lag;
mod projector;
mod query;
mod terra_sdks;
mod tools;
mod webhooks;

const BIN: &str = env!("CARGO_BIN_EXE_terra-ingest");

fn fixtures_dir() -> String {
    format!("{}/../../tests/fixtures", env!("CARGO_MANIFEST_DIR"))
}

/// The activity fixture (`template`) as a delivery of its own: `"seq": tag` first (the same
/// signed body again would be a replay, answered without an append).
fn distinct_activity(template: &[u8], tag: &str) -> Vec<u8> {
    [format!("{{\"seq\": \"{tag}\", ").as_bytes(), &template[1..]].concat()
}

/// POSTs `body` to `url`, signed now with `signer`.
async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    signer: &terra_core::SigningSecret,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    let now = terra_core::keys::now_ms() / 1000;
    client
        .post(url)
        .header("terra-signature", signer.sign(now, &body))
        .body(body)
        .send()
        .await
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `terra-ingest <args>` with `--http-addr 127.0.0.1:0` in `cwd` and waits for its
/// "ingress listening" line.
fn start(cwd: &Path, args: &[&str]) -> Server {
    start_with_env(cwd, args, &[])
}

fn start_with_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(BIN);
    command.args(args);
    serve(command, cwd, env)
}

/// Runs `command` (the binary and its arguments) with `--http-addr 127.0.0.1:0` in `cwd`
/// and `env`, and waits for its "ingress listening" line.
fn serve(mut command: Command, cwd: &Path, env: &[(&str, &str)]) -> Server {
    let mut child = command
        .args(["--http-addr", "127.0.0.1:0"])
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .env_remove("TERRA_INGEST_SIGNING_SECRET")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            if let Some(addr) = line.split("ingress listening addr=").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server did not start");
    Server { child, addr }
}

fn terra_ingest(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("TERRA_INGEST_SIGNING_SECRET")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn terminate(server: &mut Server) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not stop on SIGTERM");
}

async fn read_envelopes(log_dir: &Path) -> Vec<Envelope> {
    read_records(log_dir)
        .await
        .into_iter()
        .map(|r| Envelope::decode(r.value).unwrap())
        .collect()
}

async fn read_records(log_dir: &Path) -> Vec<terra_eventlog::Record> {
    let log = EventLog::open(
        &LogUrl::parse(&format!("embedded:{}", log_dir.display()), log_dir).unwrap(),
        &[],
    )
    .await
    .unwrap();
    let mut consumer = log.consumer("e2e-check").unwrap();
    let mut out = Vec::new();
    loop {
        let batch = consumer
            .poll(10_000, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.into_iter().map(|c| c.record));
    }
}

#[tokio::test]
async fn standalone_on_zero_config_takes_every_fixture_from_send() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(cwd.path(), &["standalone"]);
    let secret_file = cwd.path().join("data/signing-secret");
    assert!(
        secret_file.exists(),
        "standalone generated its secret under ./data"
    );
    let url = format!("http://{}/webhook", server.addr);
    let mut sent = Vec::new();
    for entry in std::fs::read_dir(format!("{}/webhooks", fixtures_dir())).unwrap() {
        let path = entry.unwrap().path();
        // `send` finds the generated secret in ./data by itself
        let out = terra_ingest(
            cwd.path(),
            &["send", "--url", &url, "--file", path.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(text(&out.stdout).starts_with("200\n"));
        sent.push(std::fs::read(&path).unwrap());
    }
    // the loop sent user_reauth too: signed a minute earlier, this is another delivery
    let earlier = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60)
        .to_string();
    let by_name = terra_ingest(
        cwd.path(),
        &[
            "send",
            "--url",
            &url,
            "--at",
            &earlier,
            "--fixture",
            "user_reauth",
            "-H",
            "X-Terra-Ordering-Timestamp: 1791100000123",
            "-H",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ],
    );
    assert!(by_name.status.success(), "{}", text(&by_name.stderr));
    let wrong = terra_ingest(
        cwd.path(),
        &[
            "send",
            "--url",
            &url,
            "--secret",
            "whsec_wrong",
            "--fixture",
            "sleep",
        ],
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stdout).starts_with("401\n")
            && text(&wrong.stdout).contains("signature_mismatch")
    );
    let unknown = terra_ingest(cwd.path(), &["send", "--url", &url, "--fixture", "nope"]);
    assert!(
        !unknown.status.success() && text(&unknown.stderr).contains("does not exist"),
        "{}",
        text(&unknown.stderr)
    );

    assert!(terminate(&mut server).success(), "clean exit on SIGTERM");
    let records = read_records(&cwd.path().join("data/log")).await;
    // without an OTLP endpoint no spans are built, yet every record carries trace context, and
    // the caller's trace continues
    assert!(
        records
            .iter()
            .all(|r| r.header("traceparent").is_some_and(|t| t.len() == 55))
    );
    let continued = records
        .iter()
        .filter(|r| {
            r.header("traceparent")
                .unwrap()
                .starts_with(b"00-4bf92f3577b34da6a3ce929d0e0e4736-")
        })
        .count();
    assert_eq!(
        continued,
        1,
        "{:?}",
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r.header("traceparent").unwrap()).into_owned())
            .collect::<Vec<_>>()
    );
    let envelopes: Vec<Envelope> = records
        .into_iter()
        .map(|r| Envelope::decode(r.value).unwrap())
        .collect();
    assert_eq!(envelopes.len(), sent.len() + 1);
    let stored: HashSet<Vec<u8>> = envelopes.iter().map(|e| e.body.to_vec()).collect();
    for body in &sent {
        assert!(stored.contains(body), "a sent body is missing or altered");
    }
    assert!(envelopes.iter().any(
        |e| e.ordering_timestamp_ms == Some(1_791_100_000_123) && e.event_type == "user_reauth"
    ));
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_webhook() {
    let cwd = tempfile::tempdir().unwrap();
    let secret = "whsec_e2e_kill";
    let server = start(
        cwd.path(),
        &["ingress", "--signing-secret", secret, "--data-dir", "d"],
    );
    let url = format!("http://{}/webhook", server.addr);
    let body = std::fs::read(format!("{}/webhooks/activity.json", fixtures_dir())).unwrap();
    let signer = terra_core::SigningSecret::new(secret).unwrap();
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (url, template, signer) = (url.clone(), body.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            for n in 0u64.. {
                let body = distinct_activity(&template, &format!("{task}-{n}"));
                let sent = post_signed(&client, &url, &signer, body).await;
                let Ok(response) = sent else { return acked };
                if response.status() != 200 {
                    return acked;
                }
                let Ok(json) = response.json::<serde_json::Value>().await else {
                    return acked;
                };
                acked.push(json["envelope_id"].as_str().unwrap().to_owned());
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(server); // SIGKILL while requests are in flight
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert!(acked.len() > 100, "load ran: {} acked", acked.len());
    let stored: HashSet<String> = read_envelopes(&cwd.path().join("d/log"))
        .await
        .into_iter()
        .map(|e| e.envelope_id)
        .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged webhooks lost",
        lost.len(),
        acked.len()
    );
}

#[tokio::test]
async fn ingress_runs_on_the_kafka_mock_log() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(
        cwd.path(),
        &[
            "ingress",
            "--signing-secret",
            "whsec_k",
            "--log",
            "kafka-mock://terra-events",
        ],
    );
    let url = format!("http://{}/webhook", server.addr);
    let out = terra_ingest(
        cwd.path(),
        &[
            "send",
            "--url",
            &url,
            "--secret",
            "whsec_k",
            "--fixture",
            "daily",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ready = reqwest::get(format!("http://{}/readyz", server.addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(terminate(&mut server).success());
}

/// The reproduction of a replay attack on last-writer-wins: a captured `auth` delivery sent
/// again within the tolerance window, after the user deauthorised, with a far-future
/// `X-Terra-Ordering-Timestamp`. It is answered with its first 200, is not stored again, and
/// the user stays deauthorised.
#[tokio::test]
async fn a_replayed_auth_cannot_reactivate_a_deauthorised_user() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(cwd.path(), &["standalone", "--grpc-addr", "127.0.0.1:0"]);
    let secret = std::fs::read_to_string(cwd.path().join("data/signing-secret")).unwrap();
    let signer = terra_core::SigningSecret::new(secret).unwrap();
    let url = format!("http://{}/webhook", server.addr);
    let user = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
    let auth = std::fs::read(format!("{}/webhooks/auth.json", fixtures_dir())).unwrap();
    let deauth = std::fs::read_to_string(format!("{}/webhooks/deauth.json", fixtures_dir()))
        .unwrap()
        .replace("7b1e44d0-3c2a-4f5e-8d9b-61a0c2e8f4b7", user)
        .into_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let client = reqwest::Client::new();
    let post = |body: &[u8], signature: &str, ordering: String| {
        client
            .post(&url)
            .header("terra-signature", signature)
            .header("X-Terra-Ordering-Timestamp", ordering)
            .body(body.to_vec())
            .send()
    };
    let captured = signer.sign(now - 20, &auth);
    let first = post(&auth, &captured, ((now - 20) * 1000).to_string())
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let deauthed = post(
        &deauth,
        &signer.sign(now - 10, &deauth),
        ((now - 10) * 1000).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(deauthed.status(), 200);
    let replay = post(&auth, &captured, "9999999999999".to_owned())
        .await
        .unwrap();
    assert_eq!(
        replay.status(),
        200,
        "answered as before, so Terra would stop"
    );
    let replay: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(replay, first);

    let db = format!("sqlite://{}", cwd.path().join("data/terra.db").display());
    let target = terra_schema::SqlTarget::connect(&terra_schema::SqlConfig::new(db)).unwrap();
    let state = || async {
        terra_schema::rows(
            &target,
            &format!("SELECT state FROM terra_users WHERE user_id = '{user}'"),
        )
        .await
        .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while state().await != vec![vec![Some("deauth".to_owned())]] {
        assert!(std::time::Instant::now() < deadline, "{:?}", state().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state().await, vec![vec![Some("deauth".to_owned())]]);
    assert!(terminate(&mut server).success());
    let stored = read_envelopes(&cwd.path().join("data/log")).await;
    assert_eq!(stored.len(), 2, "the replay was not stored");
}
