//! The destination across a database outage (a private Postgres cluster stopped and started
//! by the test, so no other test is disturbed): events that arrive while the database is down
//! wait in the log, attempts in flight when it goes away have their results written once it
//! is back, and afterwards every (event, endpoint) pair is delivered; nothing is lost,
//! nothing dead-lettered, and neither the fan-out nor the dispatcher gives up.

#[macro_use]
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::receiver::{Answer, Receiver};
use support::*;
use terra_schema::{SqlConfig, SqlTarget, TableSet};
use terra_testkit::PrivatePostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_no_delivery() {
    let pg = PrivatePostgres::start();
    let target = SqlTarget::connect(&SqlConfig::new(pg.url())).unwrap();
    terra_schema::migrate_set(&target, TableSet::Webhooks)
        .await
        .unwrap();
    let log = TestLog::new();
    // slow enough that attempts are in flight when the database goes
    let receiver =
        Receiver::start(Arc::new(|_, _| Answer::SlowOk(Duration::from_millis(100)))).await;
    let mut slow = endpoint("slow", &receiver.url());
    slow.max_in_flight = 4;
    let running = start(&log.log, &target, settings(vec![slow]));
    let before: Vec<_> = (0..60).map(|n| body("activity", "u", n)).collect();
    append(&log, &before).await;
    wait_for(&target, LIMIT, "the first deliveries", |rows| {
        rows.len() == 60 && rows.iter().filter(|r| r.state == "delivered").count() >= 10
    })
    .await;

    pg.down();
    let during: Vec<_> = (60..100).map(|n| body("sleep", "v", n)).collect();
    append(&log, &during).await;
    // the outage lasts past several attempts' worth of time
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        running.is_running(),
        "the outage must not end the destination"
    );
    pg.up();

    let rows = wait_for(&target, LIMIT, "every delivery after the outage", |rows| {
        rows.len() == 100 && rows.iter().all(|r| r.state == "delivered")
    })
    .await;
    assert!(running.is_running());
    let ids: HashSet<_> = rows.iter().map(|r| r.envelope_id.clone()).collect();
    assert_eq!(ids.len(), 100, "one delivery per event");
    let received: HashSet<Vec<u8>> = receiver
        .seen()
        .iter()
        .filter(|s| s.signed && s.status == 200)
        .map(|s| s.body.to_vec())
        .collect();
    for b in before.iter().chain(&during) {
        assert!(received.contains(b), "an event never reached the receiver");
    }
    running.stop().await;
}
