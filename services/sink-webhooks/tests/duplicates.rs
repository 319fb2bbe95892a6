//! The same event (one envelope id) twice in the log, in one batch and in a later one (a
//! producer's retry can append a record again): each (event, endpoint) pair is created once,
//! the other events of those batches are delivered, and the fan-out keeps going. On Postgres
//! the deliveries go in by a plain `INSERT` first, and a pair already there rolls back to a
//! savepoint for the insert that skips it.

#[macro_use]
mod support;

use support::receiver::Receiver;
use support::*;

on_every_dialect!(an_event_twice_in_the_log_is_delivered_once_per_endpoint);

async fn an_event_twice_in_the_log_is_delivered_once_per_endpoint(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let a = Receiver::start(Receiver::ok()).await;
    let b = Receiver::start(Receiver::ok()).await;
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("a", &a.url()), endpoint("b", &b.url())]),
    );
    let now_s = terra_core::keys::now_ms() / 1000;
    let twice = record(&body("activity", "u1", 1), None, now_s, Some("t"));
    let other_body = body("sleep", "u2", 2);
    let other = record(&other_body, None, now_s, Some("t"));
    log.append(vec![twice.clone(), other, twice.clone()]).await;
    wait_for(&target, LIMIT, "the first batch", all_ended(4)).await;
    // again, in a batch of its own, beside a new event
    let later = record(&body("daily", "u3", 3), None, now_s, Some("t"));
    log.append(vec![twice, later]).await;
    let rows = wait_for(&target, LIMIT, "the later event", all_ended(6)).await;
    assert!(running.is_running(), "the fan-out keeps going");
    running.stop().await;
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:#?}");
    let mut pairs: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.envelope_id.clone(), r.endpoint.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 6, "one delivery per pair: {rows:#?}");
    // the batch was written as it was, not failed and split (which sends its first attempts
    // again): the other event of the batch reached each endpoint once
    for receiver in [&a, &b] {
        let sent = receiver
            .seen()
            .iter()
            .filter(|s| s.body.as_ref() == other_body.as_slice())
            .count();
        assert_eq!(sent, 1);
    }
    db.drop_now().await;
}
