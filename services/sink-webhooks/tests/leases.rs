//! Leases: picked in the order they fall due, handed back uncounted (a worker's queue when
//! it stops, a queued delivery whose lease would not cover its attempt), never sent by two
//! workers at once. On Postgres, MariaDB and SQLite.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Executor, Row};
use support::receiver::{Answer, Receiver};
use support::*;
use terra_schema::SqlTarget;
use terra_sink_webhooks::Ordering;
use terra_sink_webhooks::store::{self, LeaseRequest, Leased};

on_every_dialect!(
    leases_go_in_due_order_and_a_release_takes_the_counted_attempt_back,
    stopping_hands_the_queued_deliveries_back_uncounted,
    a_queued_delivery_whose_lease_would_not_cover_its_attempt_is_handed_back,
);

/// A pending delivery of endpoint `e`, never attempted, due at `due`.
async fn pending(target: &SqlTarget, id: i64, due: i64) {
    let mut stmt = target.statement(format!(
        "INSERT INTO {} (id, endpoint, envelope_id, user_id, event_type, state, attempts, next_attempt_at_ms, created_at_ms) VALUES (",
        target.table("webhook_deliveries")
    ));
    stmt.bind(id)
        .push(", 'e', ")
        .bind(format!("env-{id}"))
        .push(", ")
        .bind(format!("u{id}"))
        .push(", 'activity', 'pending', 0, ")
        .bind(due)
        .push(", 1)");
    target.pool().execute(stmt.query()).await.unwrap();
}

async fn lease(target: &SqlTarget, limit: usize, token: &str) -> Vec<Leased> {
    store::lease(
        target,
        &LeaseRequest {
            endpoint: "e",
            ordering: Ordering::Unordered,
            limit,
            now_ms: 1_000,
            lease_until_ms: 50_000,
            token,
            probe: false,
        },
    )
    .await
    .unwrap()
}

/// id → (attempts, lease token), every delivery.
async fn leases(target: &SqlTarget) -> Vec<(i64, i64, Option<String>)> {
    let sql = format!(
        "SELECT id, attempts, lease_token FROM {} ORDER BY id",
        target.table("webhook_deliveries")
    );
    let rows = target.pool().fetch_all(sql.as_str()).await.unwrap();
    rows.iter()
        .map(|r| {
            let attempts = r
                .try_get::<i64, _>(1)
                .or_else(|_| r.try_get::<i32, _>(1).map(i64::from))
                .unwrap();
            (r.try_get(0).unwrap(), attempts, store::text(r, 2).unwrap())
        })
        .collect()
}

async fn leases_go_in_due_order_and_a_release_takes_the_counted_attempt_back(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    for (id, due) in [(1, 300), (2, 100), (3, 200), (4, 100)] {
        pending(&target, id, due).await;
    }
    let first = lease(&target, 3, "t1").await;
    let ids: Vec<i64> = first.iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![2, 4, 3], "by when due, then by id");
    assert!(
        first
            .iter()
            .all(|l| l.attempts == 1 && l.lease_until_ms == 50_000)
    );
    // a release under another token (a lease taken since) touches nothing
    let mut stolen = first[2].clone();
    stolen.token = "other".to_owned();
    store::release(&target, &[stolen]).await.unwrap();
    store::release(&target, &first[..2]).await.unwrap();
    let t1 = Some("t1".to_owned());
    assert_eq!(
        leases(&target).await,
        vec![(1, 0, None), (2, 0, None), (3, 1, t1.clone()), (4, 0, None)],
        "released: uncounted and free; the other keeps its lease and its count"
    );
    let again: Vec<i64> = lease(&target, 10, "t2")
        .await
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(again, vec![2, 4, 1], "released ones are due again at once");
    db.drop_now().await;
}

/// Each delivery's counted attempts against the attempts recorded for it, and whether any
/// lease is left.
async fn counted_and_recorded(target: &SqlTarget) -> Vec<(i64, i64, usize, bool)> {
    let mut out = Vec::new();
    for (id, counted, token) in leases(target).await {
        let recorded = attempts(target, id).await.len();
        out.push((id, counted, recorded, token.is_some()));
    }
    out
}

async fn stopping_hands_the_queued_deliveries_back_uncounted(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver =
        Receiver::start(Arc::new(|_, _| Answer::SlowOk(Duration::from_millis(150)))).await;
    let mut e = endpoint("slow", &receiver.url());
    e.max_in_flight = 1;
    let mut s = settings(vec![e]);
    s.first_from_fan_out = false;
    let running = start(&log.log, &target, s);
    let bodies: Vec<_> = (0..12)
        .map(|n| body("activity", &format!("u{n}"), n))
        .collect();
    append(&log, &bodies).await;
    let started = std::time::Instant::now();
    while receiver.seen().len() < 2 {
        assert!(started.elapsed() < LIMIT, "nothing sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
    let rows = counted_and_recorded(&target).await;
    assert_eq!(rows.len(), 12, "{rows:?}");
    assert!(
        rows.iter().any(|r| r.2 == 0),
        "some never attempted (the queue held them): {rows:?}"
    );
    for (id, counted, recorded, leased) in &rows {
        assert_eq!(
            *counted as usize, *recorded,
            "delivery {id}: attempts counted = attempts made ({rows:?})"
        );
        assert!(
            !leased,
            "delivery {id} is left leased after a clean stop ({rows:?})"
        );
    }
    db.drop_now().await;
}

async fn a_queued_delivery_whose_lease_would_not_cover_its_attempt_is_handed_back(
    dialect: Dialect,
) {
    // leases of 2 x 300 ms + 400 ms: a queued delivery goes only with 500 ms of lease left,
    // so of each worker's 8 leased at once only the first few go before it is handed back
    slow_replicas_send_each_pair_once(dialect, false).await;
}
