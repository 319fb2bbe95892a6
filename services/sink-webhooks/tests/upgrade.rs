//! Webhook tables an earlier release made, holding deliveries delivered, dead and pending,
//! upgrade by migration (`pending_indexes`: on Postgres and SQLite the worker's indexes then
//! cover pending rows only, `finished` finished ones, and listing by user has an index of its
//! own; `ordering_key`: pending rows keyed by user), and what was written before is found
//! after it: listed by user and by state, re-queued, leased and sent.

#[macro_use]
mod support;

use sqlx::Executor;
use support::receiver::Receiver;
use support::*;
use terra_schema::{SqlTarget, TableSet, Val, insert_rows};
use terra_sink_webhooks::admin::{self, DeliveryFilter, DeliveryState};
use terra_sink_webhooks::store::text;

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

/// Rows as the previous release wrote them: events `e1` (user `u1`) and `e2` (`u2`), each
/// delivered to `ok`, dead at `refusing` and pending (due) at `down`; the bodies of the
/// events still to send.
async fn previous_release_rows(target: &SqlTarget, bodies: &[Vec<u8>; 2]) {
    let dialect = target.dialect();
    let now = terra_core::keys::now_ms();
    let mut events = Vec::new();
    let mut rows = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (envelope, user) = (envelope_id(i), format!("u{}", i + 1));
        events.push(vec![
            Val::from(&envelope),
            Val::from(0),
            Val::from(i as i64),
            Val::from("terra"),
            Val::from("activity"),
            Val::from(user.as_str()),
            Val::from(now),
            Val::Blob(body.clone()),
        ]);
        for (endpoint, state, attempts, finished, status, error) in [
            ("ok", "delivered", 1, Some(now), Some(200), None),
            (
                "refusing",
                "dead",
                3,
                Some(now),
                Some(503),
                Some("HTTP 503 three times"),
            ),
            ("down", "pending", 0, None, None, None),
        ] {
            rows.push(vec![
                Val::from(endpoint),
                Val::from(&envelope),
                Val::from(user.as_str()),
                Val::from("activity"),
                Val::from(state),
                Val::from(attempts),
                Val::from(now),
                Val::from(now),
                Val::from(finished),
                Val::from(status),
                Val::from(error),
            ]);
        }
    }
    let tables = [
        (
            "webhook_events",
            &[
                "envelope_id",
                "log_partition",
                "log_offset",
                "source",
                "event_type",
                "user_id",
                "received_at_ms",
                "body",
            ][..],
            events,
        ),
        (
            "webhook_deliveries",
            &[
                "endpoint",
                "envelope_id",
                "user_id",
                "event_type",
                "state",
                "attempts",
                "next_attempt_at_ms",
                "created_at_ms",
                "finished_at_ms",
                "last_status",
                "last_error",
            ][..],
            rows,
        ),
    ];
    for (table, columns, rows) in tables {
        for stmt in insert_rows(dialect, &target.table(table), columns, &[], rows, "") {
            target.pool().execute(stmt.query()).await.expect(table);
        }
    }
}

fn envelope_id(i: usize) -> String {
    format!("0193a1b2-0000-7000-8000-00000000000{i}")
}

async fn deliveries_written_before_the_index_migration_are_found_after_it(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = SqlTarget::connect(&db.config()).expect("a SQL config");
    terra_schema::migrate_set_up_to(&target, TableSet::Webhooks, PREVIOUS)
        .await
        .expect("the previous release's tables");
    let bodies = [body("activity", "u1", 1), body("activity", "u2", 2)];
    previous_release_rows(&target, &bodies).await;

    let report = terra_schema::migrate_set(&target, TableSet::Webhooks)
        .await
        .expect("the upgrade");
    // MySQL has no partial indexes: its indexes stay as they were (ordering_key adds a column)
    let expected: &[&str] = match dialect {
        Dialect::MySql => &["20261205000400_ordering_key"],
        Dialect::Sqlite => &[
            "20261205000300_pending_indexes",
            "20261205000400_ordering_key",
        ],
        Dialect::Postgres => &[
            "20261205000300_pending_indexes",
            "20261205000400_ordering_key",
            "20261205000500_byte_order_keys",
        ],
    };
    assert_eq!(report.applied, expected);
    if dialect == Dialect::Postgres {
        // the keys compare byte by byte, those compared with each other alike
        let collations: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, collation_name::text \
             FROM information_schema.columns WHERE table_name IN \
             ('webhook_deliveries', 'webhook_events', 'webhook_endpoints') \
             AND column_name IN ('endpoint', 'envelope_id', 'user_id', 'ordering_key', 'state', 'name') \
             ORDER BY 1, 2",
        )
        .fetch_all(target.pool())
        .await
        .expect("the columns");
        let c = |table: &str, column: &str, collation: Option<&str>| {
            (
                table.to_owned(),
                column.to_owned(),
                collation.map(str::to_owned),
            )
        };
        let byte_order = Some("C");
        assert_eq!(
            collations,
            [
                c("webhook_deliveries", "endpoint", byte_order),
                c("webhook_deliveries", "envelope_id", byte_order),
                c("webhook_deliveries", "ordering_key", byte_order),
                c("webhook_deliveries", "state", byte_order),
                c("webhook_deliveries", "user_id", byte_order),
                c("webhook_endpoints", "name", byte_order),
                // compared with literals only: the database's collation
                c("webhook_endpoints", "state", None),
                c("webhook_events", "envelope_id", byte_order),
                c("webhook_events", "user_id", None),
            ]
        );
    }
    // the pending rows are keyed by user (the per_user check reads only keyed rows)
    let keyed = target
        .pool()
        .fetch_all(
            format!(
                "SELECT endpoint, ordering_key FROM {} WHERE ordering_key IS NOT NULL ORDER BY id",
                target.table("webhook_deliveries")
            )
            .as_str(),
        )
        .await
        .expect("keys");
    let keyed: Vec<(String, String)> = keyed
        .iter()
        .map(|r| (text(r, 0).unwrap().unwrap(), text(r, 1).unwrap().unwrap()))
        .collect();
    assert_eq!(
        keyed,
        [("down", "u1"), ("down", "u2")].map(|(e, u)| (e.to_owned(), u.to_owned()))
    );

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

    // re-queued, and sent with the pending ones by the destination of this release
    let now = terra_core::keys::now_ms();
    let requeued = admin::requeue_dead(&target, "refusing", 0, now, now)
        .await
        .expect("requeue");
    assert_eq!(requeued, 2);
    let ok = Receiver::start(Receiver::ok()).await;
    let refusing = Receiver::start(Receiver::ok()).await;
    let down = Receiver::start(Receiver::ok()).await;
    let endpoints = vec![
        endpoint("ok", &ok.url()),
        endpoint("refusing", &refusing.url()),
        endpoint("down", &down.url()),
    ];
    let log = TestLog::new();
    let running = start(&log.log, &target, settings(endpoints));
    let rows = wait_for(&target, LIMIT, "every delivery delivered", |rows| {
        rows.len() == 6 && rows.iter().all(|r| r.state == "delivered")
    })
    .await;
    running.stop().await;
    assert_eq!(rows.len(), 6);
    for (receiver, sent) in [(&ok, 0), (&refusing, 2), (&down, 2)] {
        let seen = receiver.seen();
        assert_eq!(seen.len(), sent, "each delivery still to send sent once");
        assert!(
            seen.iter()
                .all(|s| s.signed && bodies.iter().any(|b| b.as_slice() == s.body.as_ref()))
        );
    }
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
