//! An endpoint made `per_user` while deliveries queued for it unordered are pending: the
//! dispatcher keys that backlog by user when it starts (`ordering_key`, which only a per_user
//! endpoint's rows carry), so the backlog too is sent a user's events one after the other,
//! each delivered before the next is sent, across retries.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::receiver::{Answer, Receiver};
use support::*;
use terra_sink_webhooks::{Ordering, Schedule};

on_every_dialect!(
    a_backlog_queued_unordered_is_sent_in_user_order_once_the_endpoint_orders_per_user
);

async fn a_backlog_queued_unordered_is_sent_in_user_order_once_the_endpoint_orders_per_user(
    dialect: Dialect,
) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    // down while the events come: every delivery stays pending (50 s of attempts)
    let (mut down, addr) = closed_endpoint("e").await;
    down.schedule = Schedule::new(vec![Duration::from_millis(500); 100]).expect("schedule");
    let running = start(&log.log, &target, settings(vec![down.clone()]));
    let bodies: Vec<Vec<u8>> = (0..30)
        .map(|n| body("activity", &format!("user-{}", n % 3), n))
        .collect();
    append(&log, &bodies).await;
    wait_for(&target, LIMIT, "30 deliveries pending", |rows| {
        rows.len() == 30 && rows.iter().all(|r| r.state == "pending")
    })
    .await;
    running.stop().await;

    // back, failing each event's first attempt; the endpoint now orders per user
    let receiver = Receiver::start_on(
        addr,
        Arc::new(|_, before| {
            if before == 0 {
                Answer::Status(500)
            } else {
                Answer::Status(200)
            }
        }),
    )
    .await;
    let mut ordered = down;
    ordered.ordering = Ordering::PerUser;
    ordered.schedule = Schedule::new(vec![Duration::from_millis(30); 100]).expect("schedule");
    let running = start(&log.log, &target, settings(vec![ordered]));
    wait_for(&target, LIMIT, "all delivered", |rows| {
        rows.len() == 30 && rows.iter().all(|r| r.state == "delivered")
    })
    .await;
    running.stop().await;
    assert_sent_in_user_order(&receiver.seen(), &bodies);
    db.drop_now().await;
}
