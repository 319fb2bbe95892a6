//! Replays: a delivery accepted before is answered with its first 200 and not appended
//! again, and an unsigned ordering timestamp cannot pin a far-future version. Each test
//! failed before the replay cache and the cap.

mod support;

use std::time::Duration;

use prost::Message;
use support::*;
use terra_core::envelope::Envelope;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_replayed_delivery_is_answered_again_without_a_second_append() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("activity");
    let now = unix_now();
    let signature = sign_at(SECRET, &body, now);
    let first: serde_json::Value = app
        .post(
            "/webhook",
            &body,
            &[
                ("terra-signature", signature.clone()),
                ("x-terra-trace-id", "trace-1".to_owned()),
            ],
        )
        .await
        .json()
        .await
        .unwrap();
    let respaced = signature.replace(',', ", ") + ",v1=00";
    let replays: Vec<Vec<(&str, String)>> = vec![
        // the captured delivery as it was
        vec![("terra-signature", signature.clone())],
        // re-spaced, an extra v1, the other header name, a far-future ordering timestamp
        vec![
            ("X-Terra-Signature", respaced),
            ("X-Terra-Ordering-Timestamp", "9999999999999".to_owned()),
        ],
        // Terra's own retry: signed anew, same trace id and body
        vec![
            ("terra-signature", sign_at(SECRET, &body, now - 5)),
            ("x-terra-trace-id", "trace-1".to_owned()),
        ],
    ];
    for headers in replays {
        let response = app.post("/webhook", &body, &headers).await;
        assert_eq!(response.status(), 200);
        let again: serde_json::Value = response.json().await.unwrap();
        assert_eq!(again, first, "the first answer, again");
    }
    app.read_log(1).await;
    app.assert_log_empty().await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"outcome="replayed"} 3"#), "{metrics}");

    // another body under the same trace id is a new delivery
    let other = fixture("sleep");
    let response = app
        .post(
            "/webhook",
            &other,
            &[
                ("terra-signature", sign_at(SECRET, &other, now)),
                ("x-terra-trace-id", "trace-1".to_owned()),
            ],
        )
        .await;
    let json: serde_json::Value = response.json().await.unwrap();
    assert_ne!(json["envelope_id"], first["envelope_id"]);
    app.read_log(1).await;
}

#[tokio::test]
async fn two_copies_in_flight_at_once_are_appended_once() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("daily");
    let signature = sign(SECRET, &body);
    let start = head(body.len(), &signature);
    let (half, rest) = body.split_at(body.len() / 2);
    let mut a = app.raw_start(&[start.as_bytes(), half].concat()).await;
    let mut b = app.raw_start(&[start.as_bytes(), half].concat()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.write_all(rest).await.unwrap();
    b.write_all(rest).await.unwrap();
    let (a, b) = (raw_finish(&mut a, b"").await, raw_finish(&mut b, b"").await);
    let id = |answer: &str| {
        let json: serde_json::Value =
            serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        json["envelope_id"].as_str().unwrap().to_owned()
    };
    assert!(
        a.starts_with("HTTP/1.1 200") && b.starts_with("HTTP/1.1 200"),
        "{a}\n{b}"
    );
    assert_eq!(id(&a), id(&b));
    app.read_log(1).await;
    app.assert_log_empty().await;
}

#[tokio::test]
async fn the_ordering_timestamp_is_bounded_by_the_signature() {
    // without the replay cache, a replay with a far-future ordering timestamp is appended,
    // but cannot carry a value later than its signed second
    let mut config = config(vec![source("default", &[SECRET])]);
    config.replay_cache_entries = 0;
    let app = spawn(config).await;
    let body = fixture("auth");
    let t = unix_now();
    for ordering in ["9999999999999", &(t * 1000 - 5000).to_string()] {
        let response = app
            .post(
                "/webhook",
                &body,
                &[
                    ("terra-signature", sign_at(SECRET, &body, t)),
                    ("X-Terra-Ordering-Timestamp", ordering.to_owned()),
                ],
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let records = app.read_log(2).await;
    let ordering: Vec<_> = records
        .iter()
        .map(|r| {
            Envelope::decode(r.value.clone())
                .unwrap()
                .ordering_timestamp_ms
        })
        .collect();
    assert_eq!(ordering, vec![Some(t * 1000 + 999), Some(t * 1000 - 5000)]);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("terra_ingest_ordering_timestamps_capped_total 1"),
        "{metrics}"
    );
}
