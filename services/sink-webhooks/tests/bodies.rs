//! Kept bodies (`webhook_events`): stored as LZ4 blocks when smaller, read back from the
//! database and sent as Terra sent them; an event that cannot be read is a dead letter that
//! says why.

#[macro_use]
mod support;

use std::time::Duration;

use sqlx::Row;
use support::receiver::{Answer, Receiver};
use support::*;
use terra_sink_webhooks::Schedule;

on_every_dialect!(
    kept_bodies_are_stored_compressed_and_sent_as_terra_sent_them,
    an_event_that_cannot_be_read_is_a_dead_letter_that_says_why
);

/// A kept body is stored as an LZ4 block (`body_encoding` = `lz4`, about a third of the
/// bytes for Terra's JSON), read back from the database by a dispatcher that never saw it (a
/// restart: nothing in memory) and sent byte for byte, its signature verified.
async fn kept_bodies_are_stored_compressed_and_sent_as_terra_sent_them(dialect: Dialect) {
    let (_db, target) = database(dialect).await;
    let log = TestLog::new();
    let refusing = Receiver::start(std::sync::Arc::new(|_, _| Answer::Status(503))).await;
    let mut waiting = endpoint("later", &refusing.url());
    waiting.schedule =
        Schedule::new(vec![Duration::ZERO, Duration::from_secs(3600)]).expect("a schedule");
    let running = start(&log.log, &target, settings(vec![waiting]));
    let records: Vec<String> = (0..40)
        .map(|n| {
            format!(
                "{{\"metadata\": {{\"summary_id\": \"s-{n}\", \"start_time\": \"2026-03-12T10:00:00.000000+00:00\", \"end_time\": \"2026-03-12T11:00:00.000000+00:00\", \"type\": {n}, \"name\": \"run {n}\"}}}}"
            )
        })
        .collect();
    let big = format!(
        "{{\"type\": \"activity\", \"user\": {{\"user_id\": \"u\", \"provider\": \"GARMIN\", \"reference_id\": null, \"scopes\": null, \"last_webhook_update\": null, \"active\": true}}, \"data\": [{}], \"version\": \"2022-03-16\"}}",
        records.join(", ")
    );
    assert!(big.len() > 4_000);
    append(&log, &[big.clone().into_bytes(), b"{}".to_vec()]).await;
    wait_for(&target, LIMIT, "both first attempts refused", |rows| {
        rows.len() == 2 && rows.iter().all(|r| r.attempts == 1)
    })
    .await;
    running.stop().await;
    let sql = format!(
        "SELECT length(body), body_encoding FROM {} ORDER BY length(body) DESC",
        target.table("webhook_events")
    );
    let rows = sqlx::Executor::fetch_all(target.pool(), sql.as_str())
        .await
        .expect("the kept bodies");
    let stored: Vec<(i64, Option<String>)> = rows
        .iter()
        .map(|r| {
            let length = r
                .try_get::<i64, _>(0)
                .or_else(|_| r.try_get::<i32, _>(0).map(i64::from))
                .expect("length");
            (
                length,
                terra_sink_webhooks::store::text(r, 1).expect("encoding"),
            )
        })
        .collect();
    assert_eq!(stored.len(), 2);
    let (length, encoding) = &stored[0];
    assert_eq!(encoding.as_deref(), Some("lz4"));
    assert!(
        (*length as usize) * 2 < big.len(),
        "{length} bytes stored for {}",
        big.len()
    );
    // two bytes do not shrink: kept as they are
    assert_eq!(stored[1], (2, None));

    // due now, to a receiver that takes it, from a dispatcher with nothing in memory
    let due = format!(
        "UPDATE {} SET next_attempt_at_ms = 0",
        target.table("webhook_deliveries")
    );
    sqlx::Executor::execute(target.pool(), due.as_str())
        .await
        .unwrap();
    let (taking, running) = taking(&log.log, &target, "later").await;
    wait_for(&target, LIMIT, "both delivered", all_ended(2)).await;
    running.stop().await;
    let mut bodies: Vec<Vec<u8>> = taking.seen().iter().map(|s| s.body.to_vec()).collect();
    bodies.sort_by_key(|b| std::cmp::Reverse(b.len()));
    assert_eq!(bodies, vec![big.into_bytes(), b"{}".to_vec()]);
    assert!(taking.seen().iter().all(|s| s.signed));
}

/// A delivery whose event cannot be sent (its stored body damaged, of an encoding this version
/// does not know, or missing) is a dead letter that says why, and never holds up the others.
async fn an_event_that_cannot_be_read_is_a_dead_letter_that_says_why(dialect: Dialect) {
    let (_db, target) = database(dialect).await;
    let log = TestLog::new();
    let good = b"{\"type\": \"activity\"}".to_vec();
    let mut damaged = lz4_flex::block::compress_prepend_size(&b"{\"data\": [1, 2, 3]}".repeat(50));
    damaged.truncate(damaged.len() - 5);
    // (envelope id, stored body if any, its body_encoding)
    type Stored<'a> = (&'a str, Option<Vec<u8>>, Option<&'a str>);
    let rows: [Stored; 4] = [
        ("e-good", Some(good.clone()), None),
        ("e-damaged", Some(damaged), Some("lz4")),
        ("e-unknown", Some(b"{}".to_vec()), Some("zstd")),
        ("e-missing", None, None),
    ];
    for (n, (envelope, body, encoding)) in rows.iter().enumerate() {
        if let Some(body) = body {
            let mut stmt = target.statement(format!(
                "INSERT INTO {} (envelope_id, log_partition, log_offset, source, event_type, received_at_ms, body, body_encoding) VALUES (",
                target.table("webhook_events")
            ));
            stmt.bind(*envelope)
                .push(", 0, ")
                .bind(n as i64)
                .push(", 'terra', 'activity', 1, ")
                .bind(terra_schema::Val::Blob(body.clone()))
                .push(", ")
                .bind(*encoding)
                .push(")");
            sqlx::Executor::execute(target.pool(), stmt.query())
                .await
                .unwrap();
        }
        let mut stmt = target.statement(format!(
            "INSERT INTO {} (endpoint, envelope_id, user_id, event_type, state, attempts, next_attempt_at_ms, created_at_ms) VALUES ('e', ",
            target.table("webhook_deliveries")
        ));
        stmt.bind(*envelope)
            .push(", 'u', 'activity', 'pending', 0, 0, 1)");
        sqlx::Executor::execute(target.pool(), stmt.query())
            .await
            .unwrap();
    }
    let (taking, running) = taking(&log.log, &target, "e").await;
    let ended = wait_for(&target, LIMIT, "every delivery ended", all_ended(4)).await;
    running.stop().await;
    let by_event: std::collections::BTreeMap<&str, (&str, String)> = ended
        .iter()
        .map(|r| {
            (
                r.envelope_id.as_str(),
                (r.state.as_str(), r.last_error.clone().unwrap_or_default()),
            )
        })
        .collect();
    assert_eq!(by_event["e-good"].0, "delivered");
    for (envelope, needle) in [
        ("e-damaged", "does not decode"),
        ("e-unknown", "zstd"),
        ("e-missing", "missing from webhook_events"),
    ] {
        let (state, reason) = &by_event[envelope];
        assert_eq!(*state, "dead", "{envelope}: {reason}");
        assert!(reason.contains(needle), "{envelope}: {reason}");
    }
    let seen = taking.seen();
    assert_eq!(seen.len(), 1, "only the readable event was sent");
    assert_eq!(seen[0].body.to_vec(), good);
}

/// A receiver that takes every request, and a dispatcher (with a fan-out) sending endpoint
/// `name`'s deliveries to it.
async fn taking(
    log: &terra_eventlog::EventLog,
    target: &terra_schema::SqlTarget,
    name: &str,
) -> (Receiver, Running) {
    let taking = Receiver::start(std::sync::Arc::new(|_, _| Answer::Status(200))).await;
    let running = start(log, target, settings(vec![endpoint(name, &taking.url())]));
    (taking, running)
}
