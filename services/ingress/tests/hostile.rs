//! Hostile clients: slow senders, connection and request floods, large bodies at once,
//! header tricks and enumeration (replays: `replay.rs`). Each test failed before the limit
//! it checks.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection or `within` passes; returns what arrived
/// and whether the server closed it.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn hostile_slow_clients_are_cut_off_while_others_are_served() {
    let mut config = config(vec![source("default", &[SECRET])]);
    config.limits.header_read_timeout = Duration::from_millis(1500);
    config.limits.body_read_timeout = Duration::from_millis(1500);
    let app = spawn(config).await;
    let body = fixture("sleep");

    // 150 clients trickle their headers, 150 their body, 100 send part of a body and stall
    let mut trickling = Vec::new();
    let mut stalled = Vec::new();
    for i in 0..400 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        if i < 150 {
            stream
                .write_all(b"POST /webhook HTTP/1.1\r\nho")
                .await
                .unwrap();
        } else {
            let signature = sign_at(SECRET, &body, unix_now() - 1);
            stream
                .write_all(head(body.len(), &signature).as_bytes())
                .await
                .unwrap();
            stream.write_all(&body[..10]).await.unwrap();
        }
        if i < 300 {
            trickling.push(stream);
        } else {
            stalled.push(stream);
        }
    }
    let trickle = tokio::spawn(async move {
        // one more byte each every 200 ms: never enough to finish
        for _ in 0..25 {
            for stream in &mut trickling {
                let _ = stream.write_all(b"s").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickling
    });

    // meanwhile a normal client gets every answer; 20 distinct deliveries (one signing time
    // each, counted from one start: `unix_now() - i` repeats a time when a second passes
    // between two requests, and that copy is a replay, answered without an append)
    let start = unix_now();
    for i in 0..20 {
        let response = app
            .post(
                "/webhook",
                &body,
                &[("terra-signature", sign_at(SECRET, &body, start - i))],
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
    app.read_log(20).await;

    let mut closed = 0;
    for stream in &mut stalled {
        let (answer, was_closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
        closed += usize::from(was_closed);
    }
    let mut trickling = trickle.await.unwrap();
    for stream in &mut trickling {
        // the server is long gone: end of stream, or a reset for the bytes sent after it
        let (_, was_closed) = read_until_closed(stream, Duration::from_secs(3)).await;
        closed += usize::from(was_closed);
    }
    assert_eq!(closed, 400, "every slow client is disconnected");
    app.assert_log_empty().await;
}

#[tokio::test]
async fn hostile_connections_over_the_cap_get_503_at_once() {
    let mut config = config(vec![source("default", &[SECRET])]);
    config.limits.max_connections = 20;
    let app = spawn(config).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(closed);

    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = fixture("daily");
    let response = app
        .post(
            "/webhook",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "served again once connections close"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("terra_ingest_connections_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn hostile_requests_over_the_in_flight_cap_get_503() {
    let mut config = config(vec![source("default", &[SECRET])]);
    config.limits.max_in_flight_requests = 2;
    let app = spawn(config).await;
    let body = fixture("sleep");
    let mut held = Vec::new();
    // two distinct deliveries: signing times from one start (see above)
    let start = unix_now();
    for i in 0..2 {
        let signature = sign_at(SECRET, &body, start - i);
        let mut stream = app
            .raw_start(&[head(body.len(), &signature).as_bytes(), &body[..5]].concat())
            .await;
        stream.flush().await.unwrap();
        held.push((stream, signature));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app
        .post(
            "/webhook",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "overloaded");
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "health is not a webhook"
    );
    // the held requests finish and get their 200s
    for (stream, _) in &mut held {
        let answer = raw_finish(stream, &body[5..]).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    app.read_log(2).await;
}

#[tokio::test]
async fn hostile_large_bodies_at_once_are_bounded_in_bytes() {
    let mut config = config(vec![source("default", &[SECRET])]);
    config.body_limit = 100_000;
    config.limits.max_in_flight_bytes = 150_000;
    let app = spawn(config).await;
    let big = |fill: u8| {
        let mut body = br#"{"type": "sleep", "pad": ""#.to_vec();
        body.resize(99_990, fill);
        body.extend_from_slice(br#""}"#);
        body
    };
    let (first, second) = (big(b'a'), big(b'b'));
    // the first reserves its declared length and sends only part of it
    let mut held = app
        .raw_start(
            &[
                head(first.len(), &sign(SECRET, &first)).as_bytes(),
                &first[..1000],
            ]
            .concat(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app
        .post(
            "/webhook",
            &second,
            &[("terra-signature", sign(SECRET, &second))],
        )
        .await;
    assert_eq!(response.status(), 503, "a second 100 kB body does not fit");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "overloaded");

    // chunked bodies are counted as they arrive
    let mut chunked = app
        .raw_start(
            format!(
                "POST /webhook HTTP/1.1\r\nhost: x\r\nterra-signature: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                sign(SECRET, &second)
            )
            .as_bytes(),
        )
        .await;
    for chunk in second.chunks(10_000) {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if chunked.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = chunked.write_all(b"0\r\n\r\n").await;
    let (answer, _) = read_until_closed(&mut chunked, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");

    // once the first is done, there is room again
    let answer = raw_finish(&mut held, &first[1000..]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let response = app
        .post(
            "/webhook",
            &second,
            &[("terra-signature", sign(SECRET, &second))],
        )
        .await;
    assert_eq!(response.status(), 200);
    app.read_log(2).await;
}

#[tokio::test]
async fn hostile_request_deadline_is_503_and_body_deadline_is_408() {
    let body = fixture("sleep");
    for (body_read, request, status, code) in [
        (3000, 300, "503", "request_timeout"),
        (300, 3000, "408", "body_timeout"),
    ] {
        let mut config = config(vec![source("default", &[SECRET])]);
        config.limits.body_read_timeout = Duration::from_millis(body_read);
        config.limits.request_timeout = Duration::from_millis(request);
        let app = spawn(config).await;
        let mut stream = app
            .raw_start(
                &[
                    head(body.len(), &sign(SECRET, &body)).as_bytes(),
                    &body[..5],
                ]
                .concat(),
            )
            .await;
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains(code), "{answer}");
        if status == "503" {
            assert!(answer.contains("retry-after: 5"), "{answer}");
        }
        app.assert_log_empty().await;
    }
}

#[tokio::test]
async fn a_malformed_signature_header_does_not_hide_a_valid_one() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("activity");
    let now = unix_now();
    let cases: Vec<Vec<(&str, String)>> = vec![
        // the header looked up first is garbage, the other is valid
        vec![
            ("X-Terra-Signature", "garbage".to_owned()),
            ("terra-signature", sign_at(SECRET, &body, now)),
        ],
        // a stale copy of the same header name first
        vec![
            ("terra-signature", sign_at(SECRET, &body, now - 1000)),
            ("terra-signature", sign_at(SECRET, &body, now - 1)),
        ],
    ];
    for headers in cases {
        let response = app.post("/webhook", &body, &headers).await;
        assert_eq!(response.status(), 200);
    }
    app.read_log(2).await;
    // none valid: the well-formed refusal is the answer
    let response = app
        .post(
            "/webhook",
            &body,
            &[
                ("X-Terra-Signature", "garbage".to_owned()),
                ("terra-signature", sign("whsec_wrong", &body)),
            ],
        )
        .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn unknown_sources_are_forbidden_outside_every_allowlist() {
    let mut closed = source("prod-eu", &["whsec_prod"]);
    closed.allowlist = Some(vec!["203.0.113.0/24".parse().unwrap()]);
    let app = spawn(config(vec![closed.clone()])).await;
    let body = fixture("body");
    for path in ["/webhooks/prod-eu", "/webhooks/staging", "/webhook"] {
        let response = app
            .post(
                path,
                &body,
                &[("terra-signature", sign("whsec_prod", &body))],
            )
            .await;
        assert_eq!(response.status(), 403, "{path}: names cannot be enumerated");
    }
    // a client inside an allowlist is told the name is unknown
    let mut open = closed;
    open.allowlist = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    let app = spawn(config(vec![open])).await;
    let response = app
        .post(
            "/webhooks/staging",
            &body,
            &[("terra-signature", sign("whsec_prod", &body))],
        )
        .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn hostile_rejections_are_logged_at_a_bounded_rate() {
    let mut config = config(vec![source("default", &[SECRET])]);
    config.rejection_logs_per_sec = 5;
    let app = spawn(config).await;
    let body = fixture("sleep");
    let started = Instant::now();
    for _ in 0..300 {
        let response = app
            .post(
                "/webhook",
                &body,
                &[("terra-signature", sign("whsec_guess", &body))],
            )
            .await;
        assert_eq!(response.status(), 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let logged = captured_logs().matches("webhook rejected").count() as u64;
    assert!(
        (1..=5 * seconds).contains(&logged),
        "{logged} lines in {seconds} s"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"outcome="signature_mismatch"} 300"#),
        "the metric counts every one: {metrics}"
    );
}

#[tokio::test]
async fn readiness_and_metrics_on_the_ops_port_only() {
    let app = spawn_with_ops(config(vec![source("default", &[SECRET])])).await;
    let ops = app.ops_addr.unwrap();
    let body = fixture("sleep");
    let response = app
        .post(
            "/webhook",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 200);
    for path in ["/metrics", "/readyz"] {
        assert_eq!(
            app.get(path).await.status(),
            404,
            "{path} on the public port"
        );
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    let get = |path: &str| reqwest::get(format!("http://{ops}{path}"));
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"terra_ingest_webhook_requests_total{source="default",outcome="accepted"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn public_readiness_does_not_echo_internals() {
    let app = spawn_kafka_mock(config(vec![source("default", &[SECRET])])).await;
    app.kafka_broker_up(false);
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert_eq!(
        text,
        "not ready: the event log cannot take appends (details in the service log and on the operations port)\n"
    );
    app.kafka_broker_up(true);
    // end only once the log is healthy again: the readiness check's metadata request (on a
    // blocking thread, outliving the handler's 3 s timeout) must not still be in flight
    // while the mock cluster is destroyed (a CI run hung there for an hour)
    app.wait_ready().await;
}
