//! One attempt against receivers that fail in every way, and the address guard: how each
//! outcome is classified.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use bytes::Bytes;
use common::*;
use terra_sink_webhooks::SignatureMode;
use terra_sink_webhooks::address::AddressPolicy;
use terra_sink_webhooks::send::{ErrorClass, RESPONSE_LIMIT, Sender};

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let hits = Seen::default();
    let record = hits.clone();
    let app = Router::new()
        .route(
            "/hook",
            post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/elsewhere")]) }),
        )
        .route(
            "/elsewhere",
            post(move |headers: HeaderMap, body: Bytes| async move { record.push(headers, body) })
                .get(|| async { "followed" }),
        );
    let addr = serve(app).await;
    let body = fixture();
    let target = endpoint(
        &format!("http://{addr}/hook"),
        &[NEW_SECRET],
        SignatureMode::Terra,
    );
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert_eq!(
        (result.status, result.class),
        (Some(302), ErrorClass::Status),
        "{result:?}"
    );
    assert!(!result.delivered());
    let error = result.error.unwrap();
    assert!(
        error.contains("302") && error.contains("not followed"),
        "{error}"
    );
    assert!(hits.all().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_hanging_receiver_times_out() {
    let app = Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(120)).await;
            "late"
        }),
    );
    let addr = serve(app).await;
    let body = fixture();
    let mut target = endpoint(
        &format!("http://{addr}/hook"),
        &[NEW_SECRET],
        SignatureMode::Terra,
    );
    target.timeout = Duration::from_secs(1);
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert_eq!(
        (result.status, result.class),
        (None, ErrorClass::Timeout),
        "{result:?}"
    );
    assert!(result.error.unwrap().contains("no response within 1s"));
}

async fn answering(status: StatusCode, retry_after: &'static str) -> SocketAddr {
    let app = Router::new().route(
        "/hook",
        post(move || async move { (status, [(header::RETRY_AFTER, retry_after)], "busy") }),
    );
    serve(app).await
}

#[tokio::test]
async fn retry_after_is_read_on_429_and_503_only() {
    let body = fixture();
    let sender = loopback_sender();
    let send = |addr: SocketAddr| {
        let target = endpoint(
            &format!("http://{addr}/hook"),
            &[NEW_SECRET],
            SignatureMode::Terra,
        );
        let sender = sender.clone();
        let body = body.clone();
        async move { sender.send(&target, &outgoing(&body)).await }
    };
    let result = send(answering(StatusCode::TOO_MANY_REQUESTS, "7").await).await;
    assert_eq!(
        (result.status, result.class),
        (Some(429), ErrorClass::Status)
    );
    assert_eq!(result.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(result.response.as_deref(), Some("busy"));

    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let result = send(answering(StatusCode::SERVICE_UNAVAILABLE, date.leak()).await).await;
    assert_eq!(result.status, Some(503));
    let after = result.retry_after.expect("an HTTP date is honoured");
    assert!(
        (Duration::from_secs(100)..=Duration::from_secs(120)).contains(&after),
        "{after:?}"
    );

    let result = send(answering(StatusCode::INTERNAL_SERVER_ERROR, "7").await).await;
    assert_eq!((result.status, result.retry_after), (Some(500), None));

    let result = send(answering(StatusCode::GONE, "7").await).await;
    assert!(result.gone() && !result.delivered(), "{result:?}");
}

#[tokio::test]
async fn a_large_response_is_read_only_to_1_kib() {
    let app = Router::new().route("/hook", post(|| async { vec![b'x'; 2 << 20] }));
    let addr = serve(app).await;
    let body = fixture();
    let target = endpoint(
        &format!("http://{addr}/hook"),
        &[NEW_SECRET],
        SignatureMode::Terra,
    );
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert!(result.delivered(), "{result:?}");
    assert_eq!(result.response.map(|r| r.len()), Some(RESPONSE_LIMIT));
}

#[tokio::test]
async fn connection_refused_is_connect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let body = fixture();
    let target = endpoint(
        &format!("http://user:hunter2@{addr}/hook?token=s3cr3t-query"),
        &["the-signing-secret"],
        SignatureMode::Both,
    );
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert_eq!(
        (result.status, result.class),
        (None, ErrorClass::Connect),
        "{result:?}"
    );
    let error = result.error.unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");
    for secret in ["hunter2", "s3cr3t-query", "the-signing-secret", "user:"] {
        assert!(!error.contains(secret), "{secret} in {error}");
    }
}

#[tokio::test]
async fn a_tls_failure_is_tls() {
    // a plain-HTTP peer on an https:// URL: the handshake gets an HTTP answer
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let body = fixture();
    let target = endpoint(
        &format!("https://{addr}/hook"),
        &[NEW_SECRET],
        SignatureMode::Terra,
    );
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert_eq!(
        (result.status, result.class),
        (None, ErrorClass::Tls),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_address_guard_refuses_loopback_literals_names_mapped_forms_and_metadata() {
    let (addr, seen) = recording().await;
    let port = addr.port();
    let closed = Sender::new(AddressPolicy::default()).unwrap();
    let body = fixture();
    let cases = [
        (
            format!("http://127.0.0.1:{port}/hook"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://localhost:{port}/hook"),
            "localhost resolved only to refused addresses",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
            "(it carries 127.0.0.1)",
        ),
        (
            format!("http://[::1]:{port}/hook"),
            "::1 is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "cloud metadata address",
        ),
    ];
    for (url, words) in &cases {
        let target = endpoint(url, &[NEW_SECRET], SignatureMode::Terra);
        let result = closed.send(&target, &outgoing(&body)).await;
        assert_eq!(
            (result.status, result.class),
            (None, ErrorClass::RefusedAddress),
            "{url}"
        );
        let error = result.error.unwrap();
        assert!(error.contains(words), "{url}: {error}");
        assert!(error.contains("webhooks.allow_cidrs"), "{url}: {error}");
    }
    // the metadata address stays refused with the loopback range allowed
    let target = endpoint(&cases[4].0, &[NEW_SECRET], SignatureMode::Terra);
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert_eq!(result.class, ErrorClass::RefusedAddress);
    assert!(seen.all().is_empty(), "a refused address was connected to");
    // and the same receiver is reached once allowed
    let target = endpoint(&cases[1].0, &[NEW_SECRET], SignatureMode::Terra);
    assert!(
        loopback_sender()
            .send(&target, &outgoing(&body))
            .await
            .delivered()
    );
}

#[tokio::test]
async fn a_status_error_names_the_status_and_never_the_url() {
    let addr = answering(StatusCode::NOT_FOUND, "1").await;
    let body = fixture();
    let target = endpoint(
        &format!("http://user:hunter2@{addr}/hook?token=s3cr3t-query"),
        &["the-signing-secret"],
        SignatureMode::Terra,
    );
    let result = loopback_sender().send(&target, &outgoing(&body)).await;
    assert_eq!(
        result.error.as_deref(),
        Some("the endpoint answered 404 Not Found")
    );
    assert_eq!(result.retry_after, None);
}

#[tokio::test]
async fn what_cannot_be_signed_or_sent_is_other() {
    let (addr, seen) = recording().await;
    let body = fixture();
    let url = format!("http://{addr}/hook");
    let empty = endpoint(&url, &["  "], SignatureMode::Terra);
    let result = loopback_sender().send(&empty, &outgoing(&body)).await;
    assert_eq!(result.class, ErrorClass::Other);
    assert_eq!(result.error.as_deref(), Some("signing secret 1 is empty"));

    let fine = endpoint(&url, &[NEW_SECRET], SignatureMode::Terra);
    let mut bad = outgoing(&body);
    bad.terra_reference = Some("line\nbreak");
    let result = loopback_sender().send(&fine, &bad).await;
    assert_eq!(result.class, ErrorClass::Other);
    assert_eq!(
        result.error.as_deref(),
        Some("terra-reference is not a valid header value")
    );
    assert!(seen.all().is_empty());
}
