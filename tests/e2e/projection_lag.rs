//! `standalone` bounds how far its projections fall behind (`--max-lag`): while one is more
//! than that many records behind, new webhooks are held until it catches up (then accepted),
//! never refused; with 0 nothing is held. Checked on the real binary over HTTP, with its
//! `/metrics`.

use std::time::Duration;

use super::{distinct_activity, fixtures_dir, post_signed, start, terminate};

/// Sends `count` distinct signed activity webhooks over 16 connections; every answer's status.
async fn send_distinct(url: &str, secret: &str, count: usize) -> Vec<u16> {
    let template = std::fs::read(format!("{}/webhooks/activity.json", fixtures_dir())).unwrap();
    let signer = terra_core::SigningSecret::new(secret).unwrap();
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (url, template, signer) = (url.to_owned(), template.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            for n in (task..count).step_by(16) {
                let body = distinct_activity(&template, &n.to_string());
                let response = post_signed(&client, &url, &signer, body).await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    statuses
}

/// The value of an unlabelled metric, or the sum over a labelled one's series.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs standalone with `--max-lag max_lag`, sends 400 webhooks, waits for both projections
/// to have them all; the webhooks held (count of the hold histogram).
async fn held_with(max_lag: &str) -> f64 {
    let cwd = tempfile::tempdir().unwrap();
    let secret = "whsec_e2e_lag";
    let mut server = start(
        cwd.path(),
        &[
            "standalone",
            "--signing-secret",
            secret,
            "--data-dir",
            "d",
            "--grpc-addr",
            "127.0.0.1:0",
            "--max-lag",
            max_lag,
        ],
    );
    let statuses = send_distinct(&format!("http://{}/webhook", server.addr), secret, 400).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every webhook accepted, held or not: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let metrics_url = format!("http://{}/metrics", server.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // both projections (sql and objects) have every record
        if metric(&text, "terra_ingest_projector_records_total") >= 800.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(terminate(&mut server).success());
    assert_eq!(
        metric(&text, "terra_ingest_projection_holds_expired_total"),
        0.0,
        "no hold ran its full 2 s: the projections kept catching up"
    );
    metric(&text, "terra_ingest_projection_hold_seconds_count")
}

#[tokio::test]
async fn webhooks_are_held_while_a_projection_is_too_far_behind_and_all_accepted() {
    // one record behind is too far: every batch of more than one record holds what comes
    let held = held_with("1").await;
    assert!(held > 0.0, "webhooks held: {held}");
}

#[tokio::test]
async fn with_max_lag_0_no_webhook_is_held() {
    assert_eq!(held_with("0").await, 0.0);
}
