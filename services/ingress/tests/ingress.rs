//! The ingress over real HTTP (reqwest and raw TCP) on port 0, appending to a real embedded
//! log in a temporary folder or to Kafka through librdkafka's in-process mock cluster.

mod support;

use std::time::Duration;

use prost::Message;
use support::*;
use terra_core::envelope::Envelope;

#[tokio::test]
async fn every_fixture_is_accepted_and_stored_byte_for_byte() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 29);
    let mut ids = Vec::new();
    for (name, body) in &fixtures {
        let response = app
            .post("/webhook", body, &[("terra-signature", sign(SECRET, body))])
            .await;
        assert_eq!(response.status(), 200, "{name}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["body_is_json"], true, "{name}");
        ids.push(json["envelope_id"].as_str().unwrap().to_owned());
    }
    let records: std::collections::HashMap<_, _> = app
        .read_log(fixtures.len())
        .await
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.header("envelope-id").unwrap().to_vec()).unwrap(),
                r,
            )
        })
        .collect();
    for ((name, body), id) in fixtures.iter().zip(&ids) {
        let record = &records[id];
        let envelope = Envelope::decode(record.value.clone()).unwrap();
        assert_eq!(&envelope.envelope_id, id);
        assert_eq!(
            envelope.body.as_ref(),
            body.as_slice(),
            "{name}: exact bytes"
        );
        assert_eq!(envelope.body_sha256.len(), 32);
        assert_eq!(envelope.source, "default");
        assert_eq!(envelope.remote_addr, "127.0.0.1");
        let classification = terra_core::classify(body).unwrap();
        assert_eq!(envelope.event_type, classification.event_type, "{name}");
        assert_eq!(envelope.user_id, classification.user_id, "{name}");
        assert_eq!(
            record.key.as_deref(),
            classification.user_id.as_deref().map(str::as_bytes),
            "{name}: key is the user"
        );
        assert_eq!(record.header("envelope-id"), Some(id.as_bytes()));
        assert!(
            record
                .header("content-type")
                .unwrap()
                .starts_with(b"application/x-protobuf")
        );
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
    }
}

#[tokio::test]
async fn delivery_headers_are_carried_into_the_envelope() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("sleep");
    let response = app
        .post(
            "/webhook",
            &body,
            &[
                ("X-Terra-Signature", sign(SECRET, &body)),
                ("terra-reference", "ref-77".into()),
                ("X-Terra-Trace-Id", "trace-1:chunk:2".into()),
                ("X-Terra-Ordering-Timestamp", "1791100000123".into()),
                ("content-type", "application/json".into()),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = &app.read_log(1).await[0];
    let envelope = Envelope::decode(record.value.clone()).unwrap();
    assert_eq!(envelope.terra_reference.as_deref(), Some("ref-77"));
    assert_eq!(envelope.terra_trace_id.as_deref(), Some("trace-1:chunk:2"));
    assert_eq!(envelope.ordering_timestamp_ms, Some(1_791_100_000_123));
    assert_eq!(envelope.content_type.as_deref(), Some("application/json"));
    assert_eq!(envelope.payload_version.as_deref(), Some("2022-03-16"));
    // the request's trace continues in the record: same trace id, the ingress span as parent
    let traceparent =
        std::str::from_utf8(record.header("traceparent").expect("traceparent")).unwrap();
    let parts: Vec<_> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[2], "00f067aa0ba902b7");
}

#[tokio::test]
async fn a_request_without_trace_context_starts_a_trace() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("auth");
    assert_eq!(
        app.post(
            "/webhook",
            &body,
            &[("terra-signature", sign(SECRET, &body))]
        )
        .await
        .status(),
        200
    );
    let record = &app.read_log(1).await[0];
    let traceparent =
        std::str::from_utf8(record.header("traceparent").expect("traceparent")).unwrap();
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent}"
    );
}

#[tokio::test]
async fn a_signed_body_that_is_not_json_is_kept() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = b"\x00\x01 not json at all {".to_vec();
    let response = app
        .post(
            "/webhook",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["body_is_json"], false);
    let record = &app.read_log(1).await[0];
    let envelope = Envelope::decode(record.value.clone()).unwrap();
    assert!(!envelope.body_is_json);
    assert_eq!(envelope.body.as_ref(), body.as_slice());
    assert_eq!(envelope.event_type, "");
    assert_eq!(record.key, None);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"outcome="accepted_not_json"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    let body = fixture("sleep");
    app.post(
        "/webhook",
        &body,
        &[("terra-signature", sign(SECRET, &body))],
    )
    .await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            r#"terra_ingest_webhook_requests_total{source="default",outcome="accepted"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("terra_ingest_log_append_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("terra_ingest_log_append_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn kafka_outage_is_503_with_retry_after_then_recovers() {
    let app = spawn_kafka_mock(config(vec![source("default", &[SECRET])])).await;
    // distinct deliveries (distinct bodies), so the log shows which ones landed
    let fixture = fixture("activity");
    let body_of = |attempt: i64| {
        let mut json: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
        json["test_attempt"] = attempt.into();
        serde_json::to_vec(&json).unwrap()
    };
    let mut attempt = 0;
    let mut send = || {
        attempt += 1;
        let body = body_of(attempt);
        let signature = sign_at(SECRET, &body, unix_now() - attempt);
        let app = &app;
        async move {
            let response = app
                .post("/webhook", &body, &[("terra-signature", signature)])
                .await;
            (attempt, response)
        }
    };
    // attempt -> envelope id, for the deliveries answered 200
    let mut acked = std::collections::BTreeMap::new();
    let (n, first) = send().await;
    assert_eq!(first.status(), 200);
    let json: serde_json::Value = first.json().await.unwrap();
    acked.insert(n, json["envelope_id"].as_str().unwrap().to_owned());
    app.kafka_broker_up(false);
    // the mock cluster takes the broker down asynchronously: wait until the log says so
    for _ in 0..100 {
        if app.get("/readyz").await.status() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, response) = send().await;
    assert_eq!(response.status(), 503);
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "log_unavailable");
    assert_eq!(app.get("/readyz").await.status(), 503);
    app.kafka_broker_up(true);
    for _ in 0..20 {
        let (n, response) = send().await;
        if response.status() == 200 {
            let json: serde_json::Value = response.json().await.unwrap();
            acked.insert(n, json["envelope_id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(response.status(), 503, "attempt {n}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(acked.len(), 2, "appends work again once the broker is back");
    assert_eq!(app.get("/readyz").await.status(), 200);
    // every delivery answered 200 is in the log once, with its own body; a delivery answered
    // 503 may have landed too (Terra's retry of it is then a harmless duplicate), at most
    // once
    let mut records = app.read_log(acked.len()).await;
    records.extend(app.drain_log().await);
    let mut logged = std::collections::BTreeMap::new();
    for record in &records {
        let envelope = Envelope::decode(record.value.clone()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&envelope.body).unwrap();
        let n = json["test_attempt"].as_i64().unwrap();
        assert_eq!(envelope.body.as_ref(), body_of(n).as_slice());
        let twice = logged.insert(n, envelope.envelope_id);
        assert!(twice.is_none(), "attempt {n} is in the log twice");
    }
    for (n, id) in &acked {
        assert_eq!(
            logged.get(n),
            Some(id),
            "acknowledged attempt {n} is not in the log"
        );
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("sleep");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\nterra-signature: {}\r\ncontent-length: {}\r\n\r\n",
        sign(SECRET, &body),
        body.len()
    );
    let (half, rest) = body.split_at(body.len() / 2);
    let mut stream = app.raw_start(&[head.as_bytes(), half].concat()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = app.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = raw_finish(&mut stream, rest).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert_eq!(app.read_log(1).await.len(), 1);
}

#[tokio::test]
async fn logs_never_contain_secrets_or_bodies() {
    let app = spawn(config(vec![source("default", &["whsec_TOPSECRET_value"])])).await;
    let body = br#"{"type": "sleep", "user": {"user_id": "u-1"}, "data": [{"note": "PRIVATE_HEALTH_MARKER"}]}"#.to_vec();
    let good = sign("whsec_TOPSECRET_value", &body);
    assert_eq!(
        app.post("/webhook", &body, &[("terra-signature", good.clone())])
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post(
            "/webhook",
            &body,
            &[("terra-signature", sign("whsec_OTHER_guess", &body))]
        )
        .await
        .status(),
        401
    );
    let logs = captured_logs();
    assert!(
        logs.contains("webhook accepted") && logs.contains("webhook rejected"),
        "logs are captured: {logs}"
    );
    for needle in [
        "TOPSECRET",
        "OTHER_guess",
        "PRIVATE_HEALTH_MARKER",
        &good[15..],
    ] {
        assert!(!logs.contains(needle), "{needle} leaked into logs");
    }
}
