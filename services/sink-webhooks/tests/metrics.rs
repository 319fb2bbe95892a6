//! The destination's metrics carry the values of what happened (read from the Prometheus
//! text an operator scrapes): deliveries created per endpoint, attempts by outcome, the
//! attempt latency histogram's count, each endpoint's state, the backlog gauges, and an
//! endpoint found refusing connections.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use support::receiver::{Answer, Receiver};
use support::*;
use terra_sink_webhooks::{Schedule, WebhookMetrics};

on_every_dialect!(
    the_metrics_count_what_happened,
    an_endpoint_refusing_connections_shows_as_unreachable_until_it_answers,
);

/// The value of the sample `name{labels}` in `text` (labels in the order encoded).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("a number"))
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

async fn the_metrics_count_what_happened(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    // refuses each body once, then takes it
    let flaky = Receiver::start(Receiver::failing_first(1, 500)).await;
    let down = Receiver::start(Arc::new(|_, _| Answer::Status(503))).await;
    let mut waiting = endpoint("waiting", &down.url());
    // the second attempt an hour after the first: pending, not due
    waiting.schedule = Schedule::new(vec![Duration::ZERO, Duration::from_secs(3600)]).unwrap();
    let mut registry = Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let running = start_measured(
        &log.log,
        &target,
        settings(vec![
            endpoint("flaky", &flaky.url()),
            endpoint("down", &down.url()),
            waiting,
        ]),
        true,
        metrics,
    );
    let started = Instant::now();
    append(
        &log,
        &[
            body("activity", "u", 1),
            body("sleep", "u", 2),
            body("daily", "v", 3),
        ],
    )
    .await;
    wait_for(
        &target,
        LIMIT,
        "flaky and down ended, waiting tried once",
        |rows| {
            rows.len() == 9
                && rows
                    .iter()
                    .all(|r| r.state != "pending" || (r.endpoint == "waiting" && r.attempts == 1))
        },
    )
    .await;

    let text = scrape(&registry);
    let value = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name}{{{labels}}} in:\n{text}"))
    };
    for endpoint in ["flaky", "down", "waiting"] {
        let created = value(
            "webhook_deliveries_created_total",
            &format!("endpoint=\"{endpoint}\""),
        );
        assert_eq!(created, 3.0, "{endpoint}");
    }
    let attempts = |endpoint: &str, outcome: &str| {
        value(
            "webhook_attempts_total",
            &format!("endpoint=\"{endpoint}\",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(attempts("flaky", "retry"), 3.0);
    assert_eq!(attempts("flaky", "delivered"), 3.0);
    assert_eq!(attempts("down", "retry"), 6.0, "two retries each of three");
    assert_eq!(attempts("down", "dead"), 3.0);
    assert_eq!(attempts("waiting", "retry"), 3.0);
    assert_eq!(
        value("webhook_attempt_seconds_count", "endpoint=\"flaky\""),
        6.0
    );
    assert_eq!(
        value("webhook_attempt_seconds_count", "endpoint=\"down\""),
        9.0
    );
    assert_eq!(
        value(
            "webhook_endpoint_state",
            "endpoint=\"flaky\",state=\"enabled\""
        ),
        1.0
    );
    assert_eq!(
        value(
            "webhook_endpoint_state",
            "endpoint=\"flaky\",state=\"disabled\""
        ),
        0.0
    );
    // the backlog is read every 5 s: "waiting" has 3 pending, none due, the oldest as old
    // as the test; the others none
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(&registry);
        let oldest = sample(
            &text,
            "webhook_oldest_pending_seconds",
            "endpoint=\"waiting\"",
        );
        if oldest.is_some_and(|age| age >= 1.0) {
            let age = oldest.unwrap();
            assert!(
                age <= started.elapsed().as_secs_f64() + 1.0,
                "{age} s, older than the test"
            );
            assert_eq!(
                sample(&text, "webhook_backlog_due", "endpoint=\"waiting\""),
                Some(0.0)
            );
            assert_eq!(
                sample(&text, "webhook_backlog_due", "endpoint=\"down\""),
                Some(0.0)
            );
            assert_eq!(
                sample(&text, "webhook_oldest_pending_seconds", "endpoint=\"down\""),
                Some(0.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no backlog for waiting in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
    db.drop_now().await;
}

/// Polls the scrape until `name{labels}` is `want`.
async fn until_sample(registry: &Registry, name: &str, labels: &str, want: f64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = scrape(registry);
        if sample(&text, name, labels) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{labels}}} never {want} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_endpoint_refusing_connections_shows_as_unreachable_until_it_answers(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let (closed, addr) = closed_endpoint("closed").await;
    let mut registry = Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let running = start_measured(&log.log, &target, settings(vec![closed]), true, metrics);
    let label = "endpoint=\"closed\"";
    assert_eq!(
        sample(&scrape(&registry), "webhook_endpoint_unreachable", label),
        Some(0.0),
        "reachable until found otherwise"
    );
    let bodies: Vec<_> = (0..8)
        .map(|n| body("activity", &format!("u{n}"), n))
        .collect();
    append(&log, &bodies).await;
    until_sample(&registry, "webhook_endpoint_unreachable", label, 1.0).await;
    let receiver = Receiver::start_on(addr, Receiver::ok()).await;
    until_sample(&registry, "webhook_endpoint_unreachable", label, 0.0).await;
    wait_for(&target, LIMIT, "delivered once back", all_ended(8)).await;
    assert_eq!(receiver.seen().len(), 8);
    running.stop().await;
    db.drop_now().await;
}
