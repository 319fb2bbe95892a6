//! First attempts sent by the fan-out itself: a delivery answered at once is written once,
//! delivered, with its one attempt, and its body is not kept; one that failed is written
//! pending with its next attempt and its body; one cut off in flight is leased to its attempt
//! and recorded once. On Postgres, MariaDB and SQLite.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use sqlx::Executor;
use support::receiver::{Answer, Receiver};
use support::*;
use terra_schema::SqlTarget;

on_every_dialect!(
    a_quick_endpoint_gets_its_first_attempt_from_the_fan_out_and_no_body_is_kept,
    first_attempts_cut_off_in_flight_are_recorded_once,
    a_batch_goes_in_chunks_written_while_the_next_chunk_is_sent,
    responses_are_recorded_as_the_endpoints_sent_them,
);

/// The envelope ids of the kept events (bodies), sorted.
async fn kept_events(target: &SqlTarget) -> Vec<String> {
    let sql = format!(
        "SELECT envelope_id FROM {} ORDER BY envelope_id",
        target.table("webhook_events")
    );
    let rows = target.pool().fetch_all(sql.as_str()).await.unwrap();
    rows.iter()
        .map(|r| terra_sink_webhooks::store::text(r, 0).unwrap().unwrap())
        .collect()
}

async fn a_quick_endpoint_gets_its_first_attempt_from_the_fan_out_and_no_body_is_kept(
    dialect: Dialect,
) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let ok = Receiver::start(Receiver::ok()).await;
    // the bodies of users "retry-…" are refused once, then taken
    let flaky = Receiver::start(Arc::new(|body, before| {
        let retry = String::from_utf8_lossy(body).contains("\"retry-");
        Answer::Status(if retry && before == 0 { 503 } else { 200 })
    }))
    .await;
    let mut schedule = endpoint("flaky", &flaky.url());
    schedule.schedule =
        terra_sink_webhooks::Schedule::new(vec![Duration::ZERO, Duration::from_secs(1)]).unwrap();
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("ok", &ok.url()), schedule]),
    );
    // a first event, once delivered, shows the dispatcher (and so the fan-out's lane) is up
    append(&log, &[body("activity", "warm-up", 99)]).await;
    let warm = wait_for(&target, LIMIT, "the first event delivered", all_ended(2)).await;
    let bodies: Vec<_> = (0..30)
        .map(|n| {
            let user = if n % 10 == 3 { "retry-" } else { "u-" };
            body("activity", &format!("{user}{n}"), n)
        })
        .collect();
    append(&log, &bodies).await;
    // while the three retry- deliveries wait for their second attempt (a second), their
    // events keep a body, and no other event does
    let waiting = wait_for(&target, LIMIT, "first attempts written", |rows| {
        rows.len() == 62
            && rows.iter().filter(|r| r.state == "pending").count() == 3
            && rows.iter().filter(|r| r.state == "delivered").count() == 59
    })
    .await;
    let mut waiting: Vec<String> = waiting
        .into_iter()
        .filter(|r| r.state == "pending")
        .map(|r| r.envelope_id)
        .collect();
    waiting.sort();
    assert_eq!(
        kept_events(&target).await,
        waiting,
        "only events with a delivery left to send keep their body"
    );
    let rows = wait_for(&target, LIMIT, "all delivered", all_ended(62)).await;
    running.stop().await;
    let warm: Vec<&str> = warm.iter().map(|r| r.envelope_id.as_str()).collect();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| !warm.contains(&r.envelope_id.as_str()))
        .collect();
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:#?}");
    let mut retried: Vec<String> = Vec::new();
    for row in &rows {
        let attempts = attempts(&target, row.id).await;
        let statuses: Vec<Option<i64>> = attempts.iter().map(|a| a.0).collect();
        if row.attempts == 2 {
            assert_eq!(row.endpoint, "flaky", "{row:?}");
            assert_eq!(statuses, vec![Some(503), Some(200)], "{row:?}");
            retried.push(row.envelope_id.clone());
        } else {
            assert_eq!(row.attempts, 1, "{row:?}");
            assert_eq!(statuses, vec![Some(200)], "{row:?}: one attempt recorded");
        }
    }
    assert_eq!(retried.len(), 3, "the three retry- users: {rows:#?}");
    retried.sort();
    assert_eq!(retried, waiting);
    assert_eq!(
        kept_events(&target).await,
        Vec::<String>::new(),
        "delivered everywhere: no body is kept"
    );
    assert_eq!(ok.seen().len(), 31, "each event sent once to ok");
    assert_eq!(flaky.seen().len(), 34, "31 first attempts and 3 retries");
    db.drop_now().await;
}

/// The fan-out's wait ends with first attempts waiting for a permit (left to the
/// dispatchers) and one in flight (leased to itself), a second replica's dispatcher beside.
async fn first_attempts_cut_off_in_flight_are_recorded_once(dialect: Dialect) {
    slow_replicas_send_each_pair_once(dialect, true).await;
}

mod shared_log {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        two_fan_outs_send_each_pair_once(Dialect::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        two_fan_outs_send_each_pair_once(Dialect::MySql).await;
    }
}

/// Two whole replicas, each with a fan-out, over one log and one database (Postgres, MySQL:
/// SQLite serves one node): the positions' writer lock is held while first attempts are in
/// flight, so the second fan-out finds each batch written and sends nothing of it.
async fn two_fan_outs_send_each_pair_once(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Arc::new(|_, _| Answer::SlowOk(Duration::from_millis(5)))).await;
    let make = || settings(vec![endpoint("shared", &receiver.url())]);
    let first = start(&log.log, &target, make());
    let second = start(&log.log, &target, make());
    for round in 0..10 {
        let bodies: Vec<_> = (0..20)
            .map(|n| body("activity", &format!("u{round}-{n}"), round * 100 + n))
            .collect();
        append(&log, &bodies).await;
    }
    let rows = wait_for(&target, LIMIT, "all delivered", all_ended(200)).await;
    first.stop().await;
    second.stop().await;
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.attempts == 1),
        "{rows:#?}"
    );
    assert_eq!(receiver.overlaps(), 0, "a pair was in flight twice at once");
    assert_eq!(receiver.seen().len(), 200, "each pair sent once");
    db.drop_now().await;
}

/// A batch larger than a chunk: each chunk's deliveries are written while the next chunk's
/// first attempts are in flight (so some delivery is written before the batch's last attempt
/// starts), and every pair is still sent once, written once and recorded once.
async fn a_batch_goes_in_chunks_written_while_the_next_chunk_is_sent(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let ok = Receiver::start(Receiver::ok()).await;
    let mut settings = settings(vec![endpoint("ok", &ok.url())]);
    settings.chunk_pairs = 16;
    let running = start(&log.log, &target, settings);
    append(&log, &[body("activity", "warm-up", 999)]).await;
    wait_for(&target, LIMIT, "the first event delivered", all_ended(1)).await;
    // one append: the fan-out reads them as one batch (or a few), of many chunks
    let records = (0..200)
        .map(|n| {
            support::record(
                &body("activity", &format!("u-{n}"), n),
                None,
                terra_core::keys::now_ms() / 1000,
                None,
            )
        })
        .collect();
    log.append(records).await;
    let rows = wait_for(&target, LIMIT, "all delivered", all_ended(201)).await;
    running.stop().await;
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.attempts == 1),
        "{rows:#?}"
    );
    assert_eq!(ok.seen().len(), 201, "each event sent once");
    for row in &rows {
        assert_eq!(
            attempts(&target, row.id).await.len(),
            1,
            "{row:?}: one attempt"
        );
    }
    let first_written: i64 = sqlx::query_scalar(&format!(
        "SELECT MIN(created_at_ms) FROM {} WHERE envelope_id <> '{}'",
        target.table("webhook_deliveries"),
        first_envelope(&target).await,
    ))
    .fetch_one(target.pool())
    .await
    .unwrap();
    // attempts delivered at once are kept in their delivery's row, the others in attempt rows
    let mut last_started = None;
    for (column, table) in [
        ("first_started_at_ms", "webhook_deliveries"),
        ("started_at_ms", "webhook_attempts"),
    ] {
        let started: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MAX({column}) FROM {}",
            target.table(table)
        ))
        .fetch_one(target.pool())
        .await
        .unwrap();
        last_started = last_started.max(started);
    }
    let last_started = last_started.expect("attempts recorded");
    assert!(
        first_written < last_started,
        "the first chunk's deliveries were written ({first_written}) before the last attempt started ({last_started})"
    );
    db.drop_now().await;
}

/// The envelope id of the delivery with the lowest id (the warm-up event's).
async fn first_envelope(target: &SqlTarget) -> String {
    let sql = format!(
        "SELECT envelope_id FROM {} ORDER BY id LIMIT 1",
        target.table("webhook_deliveries")
    );
    let row = target.pool().fetch_one(sql.as_str()).await.unwrap();
    terra_sink_webhooks::store::text(&row, 0).unwrap().unwrap()
}

/// What an endpoint answered is recorded as it sent it, whatever its characters (on Postgres
/// the rows go through array literals: quotes, backslashes, braces, commas and the word NULL
/// must come back as they were).
async fn responses_are_recorded_as_the_endpoints_sent_them(dialect: Dialect) {
    const ODD: &str = r#"{"error": "busy, \"retry\" \\ later"} NULL, {} é 🙂 \N"#;
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let ok = Receiver::start(Arc::new(|_, _| Answer::Body(200, ODD))).await;
    let failing = Receiver::start(Arc::new(|_, _| Answer::Body(500, ODD))).await;
    let mut later = endpoint("failing", &failing.url());
    later.schedule =
        terra_sink_webhooks::Schedule::new(vec![Duration::ZERO, Duration::from_secs(3600)])
            .unwrap();
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("ok", &ok.url()), later]),
    );
    append(&log, &[body("activity", "u-1", 1)]).await;
    wait_for(&target, LIMIT, "both first attempts written", |rows| {
        rows.len() == 2 && rows.iter().all(|r| r.attempts == 1)
    })
    .await;
    running.stop().await;
    // the failing endpoint's attempt is a row of its own; the delivered one is kept in its
    // delivery's row: both read back the same through admin::delivery
    let mut rows = deliveries(&target).await;
    rows.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    assert_eq!(rows.len(), 2);
    for (row, (state, status, stored)) in rows.iter().zip([
        ("pending", 500, "webhook_attempts"),
        ("delivered", 200, "webhook_deliveries"),
    ]) {
        let (delivery, attempts) = terra_sink_webhooks::admin::delivery(&target, row.id)
            .await
            .unwrap()
            .expect("the delivery");
        assert_eq!(delivery.state.as_str(), state);
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        let attempt = &attempts[0];
        assert_eq!(attempt.response.as_deref(), Some(ODD));
        assert_eq!((attempt.attempt, attempt.status_code), (1, Some(status)));
        assert_eq!(
            attempt.error_class,
            if status == 200 { "none" } else { "status" }
        );
        assert!(attempt.started_at_ms > 0 && attempt.duration_ms >= 0);
        // where it is kept
        let stored_there: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {} WHERE {} = {}",
            target.table(stored),
            if stored == "webhook_attempts" {
                "delivery_id"
            } else {
                "first_started_at_ms IS NOT NULL AND id"
            },
            row.id
        ))
        .fetch_one(target.pool())
        .await
        .unwrap();
        assert_eq!(stored_there, 1, "{state}: kept in {stored}");
    }
    db.drop_now().await;
}
