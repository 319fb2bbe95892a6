//! SQLite with first attempts commits a batch's last chunk in a task of its own (its tail)
//! while the next batch's first attempts are sent: the next batch does not wait for that
//! commit to start sending, a tail that fails has its records read again (the runner's split
//! still finds a record the database refuses), and every other pair is delivered once.

#[macro_use]
mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::{Connection, Executor};
use support::receiver::Receiver;
use support::*;
use terra_schema::{Dialect, SqlTarget};
use terra_sink_webhooks::WebhookMetrics;

/// Records per fan-out batch in these tests, so that one append is several batches.
const BATCH: usize = 10;

/// The bodies of `n` activity events of users `u-<i>`, except `poison` for the given index.
fn bodies(n: usize, poison: Option<usize>) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match poison == Some(i) {
            true => body("activity", "poison", i),
            false => body("activity", &format!("u-{i}"), i),
        })
        .collect()
}

/// Appends `bodies` in one append, so that the fan-out finds them all at once.
async fn append_at_once(log: &TestLog, bodies: &[Vec<u8>]) {
    let now = terra_core::keys::now_ms() / 1000;
    let records = bodies
        .iter()
        .map(|b| support::record(b, None, now, None))
        .collect();
    log.append(records).await;
}

/// A trigger on new deliveries (`WHEN NEW.user_id <trigger>; END`), then the destination
/// started with batches of [`BATCH`] and a warm-up event delivered (so that the endpoint
/// takes first attempts from the fan-out).
async fn warmed_up(target: &SqlTarget, trigger: &str) -> (TestLog, Receiver, Running) {
    target
        .pool()
        .execute(
            format!(
                "CREATE TRIGGER test_trigger BEFORE INSERT ON {} WHEN NEW.user_id {trigger}; END",
                target.table("webhook_deliveries")
            )
            .as_str(),
        )
        .await
        .expect("the trigger");
    let log = TestLog::new();
    let ok = Receiver::start(Receiver::ok()).await;
    let settings = settings(vec![endpoint("ok", &ok.url())]);
    let running = start_batched(
        &log.log,
        target,
        settings,
        (true, BATCH),
        WebhookMetrics::unregistered(),
    );
    append(&log, &[body("activity", "warm-up", 999)]).await;
    wait_for(target, LIMIT, "the warm-up delivered", all_ended(1)).await;
    (log, ok, running)
}

/// A slow commit (a trigger that spends some 50 ms on each delivery of the test's events) of
/// a batch's last chunk does not hold up the next batch: its first attempts are sent while
/// that commit runs; afterwards every event is delivered once, with one attempt, sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_sent_while_a_batch_s_last_chunk_commits() {
    let (db, target) = database(Dialect::Sqlite).await;
    // some 50 ms per delivery of the test's events
    let slow = "SELECT COUNT(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL \
                SELECT x + 1 FROM c WHERE x < 300000) SELECT x FROM c)";
    let (log, ok, running) = warmed_up(&target, &format!("LIKE 'u-%' BEGIN {slow}")).await;

    let events = bodies(3 * BATCH, None);
    append_at_once(&log, &events).await;
    while ok.seen().len() < 1 + 2 * BATCH {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // read beside the fan-out's connection (WAL: a reader does not wait for the writer)
    let mut reader = sqlx::AnyConnection::connect(&db.url)
        .await
        .expect("connect");
    let written: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {}",
        target.table("webhook_deliveries")
    ))
    .fetch_one(&mut reader)
    .await
    .expect("count");
    drop(reader);
    assert_eq!(
        written, 1,
        "the second batch's first attempts went out while the first batch's last chunk was committing"
    );

    let rows = wait_for(&target, LIMIT, "every event delivered", all_ended(31)).await;
    running.stop().await;
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.attempts == 1),
        "{rows:#?}"
    );
    let ids: HashSet<_> = rows.iter().map(|r| &r.envelope_id).collect();
    assert_eq!(ids.len(), 31, "one delivery per event");
    assert_eq!(ok.seen().len(), 31, "each event sent once");
    for row in &rows {
        assert_eq!(attempts(&target, row.id).await.len(), 1, "{row:?}");
    }
    db.drop_now().await;
}

/// A record the database refuses in a batch's last chunk: the tail fails after its first
/// attempts were sent; the batch is read again and committed whole, the runner's split finds
/// the record (skipped, as without tails), and every other event is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_in_a_tail_is_found_and_the_others_are_delivered() {
    let (db, target) = database(Dialect::Sqlite).await;
    let refuse = "= 'poison' BEGIN SELECT RAISE(ABORT, 'refused by the test')";
    let (log, ok, running) = warmed_up(&target, refuse).await;

    // the poison in the second batch; more batches after it
    let events = bodies(4 * BATCH, Some(BATCH + 3));
    append_at_once(&log, &events).await;
    let rows = wait_for(&target, LIMIT, "every other event delivered", all_ended(40)).await;
    // the records after the poison are all written, so the runner is past it
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running.is_running(), "the refusal must not end the fan-out");
    let rows_after = deliveries(&target).await;
    running.stop().await;
    assert_eq!(rows_after.len(), 40, "no delivery for the refused record");
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:#?}");
    let per_event: HashMap<_, usize> = rows.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.envelope_id.clone()).or_default() += 1;
        m
    });
    assert!(
        per_event.values().all(|n| *n == 1),
        "one delivery per event"
    );
    // every event reached the receiver, the refused one too (its first attempt goes out
    // before its row is refused); some more than once: a batch read again sends its first
    // attempts again, with the same idempotency id, as after a crash
    let seen: HashSet<Vec<u8>> = ok.seen().iter().map(|r| r.body.to_vec()).collect();
    for (i, b) in events.iter().enumerate() {
        assert!(seen.contains(b), "event {i} sent");
    }
    db.drop_now().await;
}
