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
    assert_eq!(fixtures.len(), 23);
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
async fn signature_failures_say_which() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("activity");
    let now = unix_now();
    type Case<'a> = (Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], 400, "missing_signature"),
        (
            vec![("terra-signature", "v1=abcd".into())],
            400,
            "no_timestamp",
        ),
        (
            vec![("terra-signature", "t=soon,v1=abcd".into())],
            400,
            "bad_timestamp",
        ),
        (
            vec![("terra-signature", sign(SECRET, &body).replace("v1=", "v0="))],
            400,
            "no_v1_signature",
        ),
        (
            vec![("terra-signature", sign("whsec_wrong", &body))],
            401,
            "signature_mismatch",
        ),
        (
            vec![("terra-signature", sign_at(SECRET, &body, now - 301))],
            401,
            "timestamp_outside_tolerance",
        ),
        (
            vec![("terra-signature", sign_at(SECRET, &body, now + 400))],
            401,
            "timestamp_outside_tolerance",
        ),
    ];
    for (headers, status, code) in cases {
        let response = app.post("/webhook", &body, &headers).await;
        assert_eq!(response.status(), status, "{code}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["error"], code);
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("terra-signature"),
            "{json}"
        );
    }
    // a tampered body with a valid header for the original
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let response = app
        .post(
            "/webhook",
            &tampered,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 401);
    app.assert_log_empty().await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"terra_ingest_webhook_requests_total{source="default",outcome="signature_mismatch"} 2"#), "{metrics}");
}

#[tokio::test]
async fn rotated_secrets_and_both_header_names_verify() {
    let app = spawn(config(vec![source("default", &["whsec_new", "whsec_old"])])).await;
    let body = fixture("daily");
    for (name, secret) in [
        ("terra-signature", "whsec_old"),
        ("X-Terra-Signature", "whsec_new"),
        ("Terra-Signature", "whsec_new"),
    ] {
        let response = app
            .post("/webhook", &body, &[(name, sign(secret, &body))])
            .await;
        assert_eq!(response.status(), 200, "{name} {secret}");
    }
    app.read_log(3).await;
}

#[tokio::test]
async fn named_sources_have_their_own_secrets_and_unknown_ones_are_404() {
    let app = spawn(config(vec![
        source("default", &[SECRET]),
        source("prod-eu", &["whsec_prod"]),
    ]))
    .await;
    let body = fixture("body");
    assert_eq!(
        app.post(
            "/webhooks/prod-eu",
            &body,
            &[("terra-signature", sign("whsec_prod", &body))]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.post(
            "/webhooks/prod-eu",
            &body,
            &[("terra-signature", sign(SECRET, &body))]
        )
        .await
        .status(),
        401
    );
    let response = app
        .post(
            "/webhooks/staging",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 404);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "unknown_source");
    let envelope = Envelope::decode(app.read_log(1).await[0].value.clone()).unwrap();
    assert_eq!(envelope.source, "prod-eu");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"source="unknown",outcome="unknown_source""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn allowlist_and_trusted_proxies() {
    let mut terra_only = source("default", &[SECRET]);
    terra_only.allowlist = Some(terra_ingress::AllowEntry::TerraPreset.networks());
    let mut behind_proxy = source("proxied", &[SECRET]);
    behind_proxy.allowlist = Some(
        terra_ingress::AllowEntry::parse("terra")
            .unwrap()
            .networks(),
    );
    behind_proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let app = spawn(config(vec![terra_only, behind_proxy])).await;
    let body = fixture("auth");
    let signed = sign(SECRET, &body);

    // loopback is not Terra, and X-Forwarded-For from an untrusted peer is ignored
    let response = app
        .post(
            "/webhook",
            &body,
            &[
                ("terra-signature", signed.clone()),
                ("x-forwarded-for", "18.133.218.210".into()),
            ],
        )
        .await;
    assert_eq!(response.status(), 403);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "forbidden");
    assert!(json["message"].as_str().unwrap().contains("127.0.0.1"));

    // through a trusted proxy, the forwarded Terra address counts, and is what gets stored
    let ok = app
        .post(
            "/webhooks/proxied",
            &body,
            &[
                ("terra-signature", signed.clone()),
                ("x-forwarded-for", "6.6.6.6, 18.133.218.210".into()),
            ],
        )
        .await;
    assert_eq!(ok.status(), 200);
    let not_terra = app
        .post(
            "/webhooks/proxied",
            &body,
            &[
                ("terra-signature", signed.clone()),
                ("x-forwarded-for", "18.133.218.210, 6.6.6.6".into()),
            ],
        )
        .await;
    assert_eq!(not_terra.status(), 403);
    let garbage = app
        .post(
            "/webhooks/proxied",
            &body,
            &[
                ("terra-signature", signed),
                ("x-forwarded-for", "nonsense".into()),
            ],
        )
        .await;
    assert_eq!(garbage.status(), 403);
    let envelope = Envelope::decode(app.read_log(1).await[0].value.clone()).unwrap();
    assert_eq!(envelope.remote_addr, "18.133.218.210");
    app.assert_log_empty().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let mut cfg = config(vec![source("default", &[SECRET])]);
    cfg.body_limit = 1024;
    let app = spawn(cfg).await;
    let big = vec![b'x'; 2048];
    let response = app
        .post("/webhook", &big, &[("terra-signature", sign(SECRET, &big))])
        .await;
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "too_large");
    assert!(json["message"].as_str().unwrap().contains("1024"));
    // chunked, with no Content-Length to refuse early on
    let chunked = app.raw(&format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\nterra-signature: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        sign(SECRET, &big), "x".repeat(2048)
    )).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    // exactly at the limit is fine
    let fits = vec![b' '; 1024];
    assert_eq!(
        app.post(
            "/webhook",
            &fits,
            &[("terra-signature", sign(SECRET, &fits))]
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    for path in ["/webhook", "/webhooks/default"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], "POST");
    }
    assert_eq!(
        app.client
            .post(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(app.get("/nowhere").await.status(), 404);
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
    let body = fixture("activity");
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
    app.kafka_broker_up(false);
    let response = app
        .post(
            "/webhook",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
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
    let mut recovered = false;
    for _ in 0..20 {
        if app
            .post(
                "/webhook",
                &body,
                &[("terra-signature", sign(SECRET, &body))],
            )
            .await
            .status()
            == 200
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "appends work again once the broker is back");
    assert_eq!(app.get("/readyz").await.status(), 200);
    // what got a 200 is in the log
    let records = app.read_log(2).await;
    assert!(
        records
            .iter()
            .all(|r| Envelope::decode(r.value.clone()).unwrap().body.as_ref() == body.as_slice())
    );
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
