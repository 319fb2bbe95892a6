//! Dead letters re-queued by an operator (`admin::requeue_dead`: what the gRPC service and
//! `terra-ingest deliveries requeue` call) are sent again for real by the running
//! dispatcher, from their first attempt, signed as before, and end delivered with their
//! whole attempt history; dead letters of another endpoint, or outside the time range, stay
//! dead and are not sent again.

#[macro_use]
mod support;

use support::receiver::Receiver;
use support::*;

on_every_dialect!(requeued_dead_letters_are_sent_again_and_delivered);

async fn requeued_dead_letters_are_sent_again_and_delivered(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    // each body is refused three times (the test schedule: three attempts), then taken
    let recovering = Receiver::start(Receiver::failing_first(3, 503)).await;
    let other = Receiver::start(Receiver::failing_first(3, 503)).await;
    let running = start(
        &log.log,
        &target,
        settings(vec![
            endpoint("recovering", &recovering.url()),
            endpoint("other", &other.url()),
        ]),
    );
    let early = body("activity", "u", 1);
    append(&log, std::slice::from_ref(&early)).await;
    wait_for(&target, LIMIT, "the first dead letters", all_ended(2)).await;
    // the range ends before the later events are created
    let range_end = terra_core::keys::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let later = [body("sleep", "u", 2), body("daily", "v", 3)];
    append(&log, &later).await;
    let rows = wait_for(&target, LIMIT, "every dead letter", all_ended(6)).await;
    assert!(rows.iter().all(|r| r.state == "dead" && r.attempts == 3));
    assert_eq!(recovering.seen().len(), 9);

    let now = terra_core::keys::now_ms();
    let requeued =
        terra_sink_webhooks::admin::requeue_dead(&target, "recovering", 0, range_end, now)
            .await
            .unwrap();
    assert_eq!(requeued, 1, "one dead letter of that endpoint in the range");
    let rows = wait_for(&target, LIMIT, "the re-queued one delivered", |rows| {
        rows.iter().any(|r| r.state == "delivered")
    })
    .await;
    // nothing else moves
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows_after = deliveries(&target).await;
    let delivered: Vec<_> = rows_after
        .iter()
        .filter(|r| r.state == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{rows_after:#?}");
    assert_eq!(delivered[0].endpoint, "recovering");
    assert_eq!(
        delivered[0].attempts, 1,
        "counted from the first attempt again"
    );
    assert_eq!(rows_after.len(), rows.len());
    assert_eq!(rows_after.iter().filter(|r| r.state == "dead").count(), 5);
    let history = attempts(&target, delivered[0].id).await;
    let codes: Vec<_> = history.iter().map(|(code, _, _)| *code).collect();
    assert_eq!(
        codes,
        [Some(503), Some(503), Some(503), Some(200)],
        "the earlier attempts are kept"
    );

    let seen = recovering.seen();
    assert_eq!(
        seen.len(),
        10,
        "one more request, to the recovering endpoint only"
    );
    let resent = seen.last().unwrap();
    assert_eq!(resent.body.as_ref(), early.as_slice(), "the same bytes");
    assert!(resent.signed, "signed with the endpoint's secret");
    assert_eq!(resent.status, 200);
    assert_eq!(
        resent.headers.get("idempotency-key"),
        seen[0].headers.get("idempotency-key"),
        "the same idempotency id as the first attempts"
    );
    assert_eq!(
        other.seen().len(),
        9,
        "the other endpoint's dead letters stay dead"
    );
    running.stop().await;
    db.drop_now().await;
}
