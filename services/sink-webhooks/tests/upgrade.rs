//! Webhook tables an earlier release made, holding deliveries delivered, dead and pending,
//! upgrade by migration (`pending_indexes`: on Postgres and SQLite the worker's indexes then
//! cover pending rows only, `finished` finished ones, and listing by user has an index of its
//! own), and what was written before is found after it: listed by user and by state,
//! re-queued, leased and sent.

#[macro_use]
mod support;

use std::time::Duration;

use support::receiver::Receiver;
use support::*;
use terra_schema::{SqlTarget, TableSet};
use terra_sink_webhooks::Schedule;
use terra_sink_webhooks::admin::{self, DeliveryFilter, DeliveryState};

on_every_dialect!(deliveries_written_before_the_index_migration_are_found_after_it);

/// The last webhook migration before `pending_indexes`.
const PREVIOUS: i64 = 20261205000200;

async fn listed(target: &SqlTarget, filter: DeliveryFilter) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = admin::deliveries(target, &filter)
        .await
        .expect("listed")
        .into_iter()
        .map(|r| (r.endpoint, r.state.as_str().to_owned()))
        .collect();
    rows.sort();
    rows
}

fn of_user(user: &str) -> DeliveryFilter {
    DeliveryFilter {
        user_id: Some(user.to_owned()),
        ..DeliveryFilter::default()
    }
}

fn in_state(endpoint: &str, state: DeliveryState) -> DeliveryFilter {
    DeliveryFilter {
        endpoint: Some(endpoint.to_owned()),
        state: Some(state),
        ..DeliveryFilter::default()
    }
}

async fn deliveries_written_before_the_index_migration_are_found_after_it(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = SqlTarget::connect(&db.config()).expect("a SQL config");
    terra_schema::migrate_set_up_to(&target, TableSet::Webhooks, PREVIOUS)
        .await
        .expect("the previous release's tables");
    let log = TestLog::new();
    let ok = Receiver::start(Receiver::ok()).await;
    let refusing = Receiver::start(Receiver::failing_first(1_000, 503)).await;
    // nothing listens there until the end: its deliveries stay pending (50 s of attempts)
    let (mut down, down_addr) = closed_endpoint("down").await;
    down.schedule = Schedule::new(vec![Duration::from_millis(500); 100]).expect("schedule");
    let endpoints = vec![
        endpoint("ok", &ok.url()),
        endpoint("refusing", &refusing.url()),
        down,
    ];
    let running = start(&log.log, &target, settings(endpoints.clone()));
    append(&log, &[body("activity", "u1", 1), body("sleep", "u2", 2)]).await;
    wait_for(
        &target,
        LIMIT,
        "delivered to ok, dead at refusing",
        |rows| {
            let count = |endpoint: &str, state: &str| {
                rows.iter()
                    .filter(|r| r.endpoint == endpoint && r.state == state)
                    .count()
            };
            count("ok", "delivered") == 2 && count("refusing", "dead") == 2 && rows.len() == 6
        },
    )
    .await;
    running.stop().await;

    let report = terra_schema::migrate_set(&target, TableSet::Webhooks)
        .await
        .expect("the upgrade");
    // MySQL has no partial indexes: its indexes stay as they were
    let expected: &[&str] = match dialect {
        Dialect::MySql => &[],
        Dialect::Postgres | Dialect::Sqlite => &["20261205000300_pending_indexes"],
    };
    assert_eq!(report.applied, expected);

    let every_state = vec![
        ("down".to_owned(), "pending".to_owned()),
        ("ok".to_owned(), "delivered".to_owned()),
        ("refusing".to_owned(), "dead".to_owned()),
    ];
    assert_eq!(listed(&target, of_user("u1")).await, every_state);
    assert_eq!(listed(&target, of_user("u2")).await, every_state);
    for (endpoint, state) in [
        ("ok", DeliveryState::Delivered),
        ("refusing", DeliveryState::Dead),
        ("down", DeliveryState::Pending),
    ] {
        let rows = listed(&target, in_state(endpoint, state)).await;
        assert_eq!(rows.len(), 2, "{endpoint} {state:?}: {rows:?}");
    }
    assert!(
        listed(&target, in_state("ok", DeliveryState::Dead))
            .await
            .is_empty()
    );

    // re-queued, and sent with the pending ones once their endpoints take them
    let now = terra_core::keys::now_ms();
    let requeued = admin::requeue_dead(&target, "refusing", 0, now, now)
        .await
        .expect("requeue");
    assert_eq!(requeued, 2);
    refusing.set(Receiver::ok());
    let back = Receiver::start_on(down_addr, Receiver::ok()).await;
    let running = start(&log.log, &target, settings(endpoints));
    let rows = wait_for(&target, LIMIT, "every delivery delivered", |rows| {
        rows.len() == 6 && rows.iter().all(|r| r.state == "delivered")
    })
    .await;
    running.stop().await;
    assert_eq!(rows.len(), 6);
    assert_eq!(back.seen().len(), 2, "each pending delivery sent once");
    assert_eq!(
        listed(&target, in_state("refusing", DeliveryState::Delivered))
            .await
            .len(),
        2
    );
    assert_eq!(
        listed(&target, of_user("u1")).await,
        [
            ("down", "delivered"),
            ("ok", "delivered"),
            ("refusing", "delivered")
        ]
        .map(|(e, s)| (e.to_owned(), s.to_owned()))
    );
    db.drop_now().await;
}
