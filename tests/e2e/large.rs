//! Nothing lost (issue 11 §1), through the whole product: a 5 MB webhook (Terra's larger
//! payloads with samples) sent to `standalone` on a Kafka log is acknowledged and projected
//! everywhere: Terra's SQL row and the object at Terra's key. Before the Kafka limits were
//! fitted to the body limit, it was answered 503 on every retry.

use std::time::Duration;

use crate::{start, terminate, terra_ingest, text};

#[tokio::test]
async fn a_5_mb_webhook_on_kafka_is_projected_to_sql_and_objects() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server = start(
        cwd.path(),
        &[
            "standalone",
            "--log",
            "kafka-mock://terra-events",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
    );
    let body = terra_testkit::large_activity(5_000_000);
    let file = cwd.path().join("large.json");
    std::fs::write(&file, &body).unwrap();
    let url = format!("http://{}/webhook", server.addr);
    let out = terra_ingest(
        cwd.path(),
        &["send", "--url", &url, "--file", file.to_str().unwrap()],
    );
    assert!(
        out.status.success() && text(&out.stdout).starts_with("200\n"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let user = "8b2c7e4e-1c0a-4c55-9a55-0c1d1e6f2a10";
    let db = format!("sqlite://{}", cwd.path().join("data/terra.db").display());
    let target = terra_schema::SqlTarget::connect(&terra_schema::SqlConfig::new(db)).unwrap();
    let rows = || async {
        terra_schema::rows(
            &target,
            &format!(
                "SELECT data_type, payload_id FROM terra_data_payloads WHERE user_id = '{user}'"
            ),
        )
        .await
        .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let row = loop {
        if let Some(row) = rows().await.into_iter().next() {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "no SQL row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row[0].as_deref(), Some("activity"));
    let key = row[1].clone().expect("a payload id");
    // the object at Terra's key holds the record with every sample
    let object = cwd.path().join("data/objects").join(format!("{key}.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !object.exists() {
        assert!(std::time::Instant::now() < deadline, "no object at {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let samples = |v: &serde_json::Value| {
        v.pointer("/heart_rate_data/detailed/hr_samples")
            .or_else(|| v.pointer("/data/0/heart_rate_data/detailed/hr_samples"))
            .and_then(|s| s.as_array())
            .map(|s| s.len())
    };
    assert_eq!(samples(&stored), samples(&sent), "every sample stored");
    assert!(samples(&sent).unwrap() > 50_000);
    assert!(terminate(&mut server).success());
}
