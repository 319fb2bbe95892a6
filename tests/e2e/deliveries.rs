//! `terra-ingest deliveries …` against a SQLite file holding webhook rows inserted here (as
//! the fan-out and the dispatcher leave them): every command's text, and its errors.

use sqlx::Executor;
use terra_schema::{SqlConfig, SqlTarget, TableSet};

use super::{terra_ingest, text};

/// The webhook tables in `dir/terra.db`: endpoint `a` disabled with a pending delivery (1),
/// two dead letters created at 2026-12-03T10:00:00Z (2) and an hour later (3), and a
/// delivered one of endpoint `b` (4) with two attempts.
async fn database(dir: &std::path::Path) -> String {
    let url = format!("sqlite://{}", dir.join("terra.db").display());
    let t = SqlTarget::connect(&SqlConfig::new(&url)).unwrap();
    terra_schema::migrate_set(&t, TableSet::Webhooks)
        .await
        .unwrap();
    let ten = 1_796_292_000_000i64;
    for sql in [
        format!(
            "INSERT INTO {} (name, state, reason, changed_at_ms) VALUES ('a', 'disabled', 'failing for 5 days', {ten}), ('b', 'enabled', NULL, {ten})",
            t.table("webhook_endpoints")
        ),
        format!(
            "INSERT INTO {} (id, endpoint, envelope_id, user_id, event_type, state, attempts, next_attempt_at_ms, created_at_ms, finished_at_ms, last_status, last_error) VALUES \
            (1, 'a', 'env-1', 'user-1', 'activity', 'pending', 2, 4102444800000, {ten}, NULL, 503, 'HTTP 503'), \
            (2, 'a', 'env-2', NULL, 'auth', 'dead', 8, 0, {ten}, {ten}, 500, 'gave up after 8 attempts'), \
            (3, 'a', 'env-3', NULL, 'sleep', 'dead', 8, 0, {}, {ten}, 500, 'gave up after 8 attempts'), \
            (4, 'b', 'env-1', 'user-1', 'activity', 'delivered', 2, 0, {ten}, {ten}, 200, NULL)",
            t.table("webhook_deliveries"),
            ten + 3_600_000
        ),
        format!(
            "INSERT INTO {} (id, delivery_id, attempt, probe, started_at_ms, duration_ms, status_code, error_class, error, response) VALUES \
            (1, 4, 1, 0, {ten}, 8000, NULL, 'timeout', 'no answer within 8s', NULL), \
            (2, 4, 2, 0, {ten}, 12, 200, 'none', NULL, 'thanks')",
            t.table("webhook_attempts")
        ),
    ] {
        t.pool().execute(sql.as_str()).await.unwrap();
    }
    t.close().await;
    url
}

/// Runs `deliveries <args> --sql <url>`; its stdout, or a panic with its stderr.
fn ok(dir: &std::path::Path, url: &str, args: &[&str]) -> String {
    let out = run(dir, url, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn run(dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["deliveries"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--sql", url]);
    terra_ingest(dir, &all)
}

fn refused(dir: &std::path::Path, url: &str, args: &[&str], needle: &str) {
    let out = run(dir, url, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = text(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[tokio::test]
async fn operators_see_and_repair_deliveries_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let d = dir.path();

    let endpoints = ok(d, &url, &["endpoints"]);
    let a = endpoints.lines().find(|l| l.starts_with("a ")).unwrap();
    let cells: Vec<&str> = a.split_whitespace().collect();
    assert_eq!(&cells[..5], ["a", "disabled", "1", "0", "2"], "{endpoints}");
    assert!(a.contains("failing for 5 days"), "{a}");
    assert!(
        endpoints.contains("2026-12-03T10:00:00.000Z"),
        "{endpoints}"
    );

    let list = ok(d, &url, &["list"]);
    assert_eq!(list.lines().count(), 5, "a header and 4 deliveries: {list}");
    let ids = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter(|l| !l.starts_with("more"))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&ok(d, &url, &["list", "--state", "dead"])), ["2", "3"]);
    assert_eq!(ids(&ok(d, &url, &["list", "--endpoint", "b"])), ["4"]);
    assert_eq!(ids(&ok(d, &url, &["list", "--user", "user-1"])), ["1", "4"]);
    assert_eq!(ids(&ok(d, &url, &["list", "--event", "env-1"])), ["1", "4"]);
    let page = ok(d, &url, &["list", "--limit", "2"]);
    assert_eq!(ids(&page), ["1", "2"]);
    assert!(page.contains("more: --after 2"), "{page}");
    assert_eq!(
        ids(&ok(d, &url, &["list", "--after", "2", "--limit", "2"])),
        ["3", "4"]
    );

    let show = ok(d, &url, &["show", "4"]);
    assert!(show.contains("state         delivered"), "{show}");
    let attempts: Vec<&str> = show
        .lines()
        .skip_while(|l| !l.contains("ATTEMPT"))
        .skip(1)
        .collect();
    assert_eq!(attempts.len(), 2, "{show}");
    assert!(
        attempts[0].contains("timeout") && attempts[0].contains("no answer within 8s"),
        "{show}"
    );
    assert!(
        attempts[1].contains("200") && attempts[1].contains("thanks"),
        "{show}"
    );

    // re-queue the 10:00 dead letter only (RFC 3339 and Unix ms alike)
    let requeued = ok(
        d,
        &url,
        &[
            "requeue",
            "--endpoint",
            "a",
            "--from",
            "2026-12-03T09:59:00Z",
            "--to",
            "1796292000000",
        ],
    );
    assert!(requeued.contains("re-queued 1 dead letter"), "{requeued}");
    assert_eq!(ids(&ok(d, &url, &["list", "--state", "dead"])), ["3"]);

    let paused = ok(d, &url, &["disable", "b", "--reason", "receiver migration"]);
    assert!(paused.contains("endpoint b paused"), "{paused}");
    let endpoints = ok(d, &url, &["endpoints"]);
    let b = endpoints.lines().find(|l| l.starts_with("b ")).unwrap();
    assert!(
        b.contains("paused") && b.contains("receiver migration"),
        "{b}"
    );

    let enabled = ok(d, &url, &["enable", "a"]);
    assert!(
        enabled.contains("endpoint a enabled: 2 pending, 2 due now"),
        "{enabled}"
    );

    // mistakes are named
    refused(d, &url, &["list", "--state", "lost"], "--state");
    refused(d, &url, &["list", "--limit", "0"], "--limit");
    refused(
        d,
        &url,
        &["requeue", "--endpoint", "a", "--from", "2", "--to", "1"],
        "--from is after --to",
    );
    refused(
        d,
        &url,
        &[
            "requeue",
            "--endpoint",
            "a",
            "--from",
            "yesterday",
            "--to",
            "1",
        ],
        "RFC 3339",
    );
    refused(d, &url, &["disable", "nobody"], "no endpoint \"nobody\"");
    refused(d, &url, &["show", "99"], "no delivery with id 99");
    let empty = format!("sqlite://{}", d.join("empty.db").display());
    refused(d, &empty, &["endpoints"], "terra-ingest project webhooks");
}
