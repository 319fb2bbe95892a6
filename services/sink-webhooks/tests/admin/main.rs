//! `admin`: what operators see and do, on Postgres, MariaDB and SQLite, over rows inserted
//! here with plain INSERTs (as the fan-out and the dispatcher would leave them).

use sqlx::Executor;
use terra_schema::{Dialect, SqlTarget, TableSet};
use terra_sink_webhooks::admin::{
    self, DeliveryFilter, DeliveryRow, DeliveryState, EndpointState, EndpointStatus,
};
use terra_testkit::TestDb;

/// Runs each named `async fn(Dialect)` as a test on Postgres, MySQL and SQLite.
macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

mod state;

use state::{
    enabling_releases_the_backlog_and_other_states_keep_it,
    missing_tables_and_unknown_states_are_errors, requeue_takes_only_dead_letters_within_the_range,
};

on_every_dialect!(
    endpoints_show_state_and_backlog,
    deliveries_by_every_filter_and_page,
    one_delivery_with_its_attempts_in_order,
    requeue_takes_only_dead_letters_within_the_range,
    enabling_releases_the_backlog_and_other_states_keep_it,
    missing_tables_and_unknown_states_are_errors,
);

pub(crate) const NOW: i64 = 1_780_000_000_000;

/// A fresh database with the webhook tables.
pub(crate) async fn setup(dialect: Dialect) -> (TestDb, SqlTarget) {
    let db = TestDb::new(dialect).await;
    let target = SqlTarget::connect(&db.config()).unwrap();
    terra_schema::migrate_set(&target, TableSet::Webhooks)
        .await
        .unwrap();
    (db, target)
}

pub(crate) async fn exec(target: &SqlTarget, sql: &str) {
    target
        .pool()
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A delivery row; `None` user for events without one.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn delivery(
    target: &SqlTarget,
    id: i64,
    endpoint: &str,
    envelope: &str,
    user: Option<&str>,
    state: &str,
    next_attempt_at_ms: i64,
    created_at_ms: i64,
) {
    let (finished, error) = match state {
        "pending" => ("NULL", "NULL"),
        "dead" => ("5", "'gave up after 8 attempts'"),
        _ => ("5", "NULL"),
    };
    let mut stmt = target.statement(format!(
        "INSERT INTO {} (id, endpoint, envelope_id, user_id, event_type, state, attempts, next_attempt_at_ms, lease_until_ms, lease_token, created_at_ms, finished_at_ms, last_status, last_error) VALUES (",
        target.table("webhook_deliveries")
    ));
    stmt.bind(id)
        .push(", ")
        .bind(endpoint)
        .push(", ")
        .bind(envelope)
        .push(", ")
        .bind(user)
        .push(", 'activity', ")
        .bind(state)
        .push(", 3, ")
        .bind(next_attempt_at_ms)
        .push(", 77, 'lease', ")
        .bind(created_at_ms)
        .push(&format!(", {finished}, 500, {error})"));
    target.pool().execute(stmt.query()).await.unwrap();
}

pub(crate) async fn endpoint_row(target: &SqlTarget, values: &str) {
    exec(
        target,
        &format!(
            "INSERT INTO {} (name, state, reason, changed_at_ms, failing_since_ms, last_success_ms, next_probe_at_ms) VALUES ({values})",
            target.table("webhook_endpoints")
        ),
    )
    .await;
}

pub(crate) fn named<'a>(list: &'a [EndpointStatus], name: &str) -> &'a EndpointStatus {
    list.iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} in {list:?}"))
}

async fn endpoints_show_state_and_backlog(dialect: Dialect) {
    let (db, t) = setup(dialect).await;
    endpoint_row(
        &t,
        "'a', 'disabled', 'failing since Monday', 10, 11, 12, 13",
    )
    .await;
    endpoint_row(&t, "'gone', 'paused', NULL, 20, NULL, NULL, NULL").await;
    delivery(&t, 1, "a", "e1", Some("u"), "pending", NOW, 500).await;
    delivery(&t, 2, "a", "e2", Some("u"), "pending", NOW + 1, 400).await;
    delivery(&t, 3, "a", "e3", None, "dead", 0, 300).await;
    delivery(&t, 4, "a", "e4", None, "delivered", 0, 100).await;
    delivery(&t, 5, "orphan", "e1", None, "dead", 0, 100).await;
    let configured = vec!["b".to_owned(), "a".to_owned()];
    let list = admin::endpoints(&t, &configured, NOW).await.unwrap();
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "gone", "orphan"], "by name");
    let a = named(&list, "a");
    assert!(a.configured);
    assert_eq!(a.state, EndpointState::Disabled);
    assert_eq!(a.reason.as_deref(), Some("failing since Monday"));
    assert_eq!(
        (
            a.changed_at_ms,
            a.failing_since_ms,
            a.last_success_ms,
            a.next_probe_at_ms
        ),
        (Some(10), Some(11), Some(12), Some(13))
    );
    assert_eq!(
        (
            a.backlog.pending,
            a.backlog.due,
            a.backlog.dead,
            a.backlog.oldest_pending_created_at_ms
        ),
        (2, 1, 1, Some(400)),
        "delivered rows are not backlog; a pending row is due once next_attempt_at_ms <= now"
    );
    // configured, no row yet: enabled, nothing waiting
    let b = named(&list, "b");
    assert!(b.configured && b.state == EndpointState::Enabled && b.changed_at_ms.is_none());
    assert_eq!(b.backlog, Default::default());
    let gone = named(&list, "gone");
    assert!(!gone.configured && gone.state == EndpointState::Paused);
    let orphan = named(&list, "orphan");
    assert!(!orphan.configured && orphan.backlog.dead == 1 && orphan.backlog.pending == 0);
    assert_eq!(orphan.backlog.oldest_pending_created_at_ms, None);
    db.drop_now().await;
}

pub(crate) fn ids(rows: &[DeliveryRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

async fn deliveries_by_every_filter_and_page(dialect: Dialect) {
    let (db, t) = setup(dialect).await;
    delivery(&t, 1, "a", "e1", Some("u1"), "pending", 0, 1).await;
    delivery(&t, 2, "b", "e1", Some("u1"), "dead", 0, 1).await;
    delivery(&t, 3, "a", "e2", Some("u2"), "delivered", 0, 2).await;
    delivery(&t, 4, "a", "e3", None, "dead", 0, 3).await;
    delivery(&t, 5, "b", "e3", None, "pending", 0, 3).await;
    let list = |filter: DeliveryFilter| {
        let t = t.clone();
        async move { ids(&admin::deliveries(&t, &filter).await.unwrap()) }
    };
    assert_eq!(list(DeliveryFilter::default()).await, [1, 2, 3, 4, 5]);
    let by = DeliveryFilter::default;
    assert_eq!(
        list(DeliveryFilter {
            endpoint: Some("a".into()),
            ..by()
        })
        .await,
        [1, 3, 4]
    );
    assert_eq!(
        list(DeliveryFilter {
            user_id: Some("u1".into()),
            ..by()
        })
        .await,
        [1, 2]
    );
    assert_eq!(
        list(DeliveryFilter {
            envelope_id: Some("e3".into()),
            ..by()
        })
        .await,
        [4, 5]
    );
    assert_eq!(
        list(DeliveryFilter {
            state: Some(DeliveryState::Dead),
            ..by()
        })
        .await,
        [2, 4]
    );
    assert_eq!(
        list(DeliveryFilter {
            endpoint: Some("a".into()),
            state: Some(DeliveryState::Dead),
            ..by()
        })
        .await,
        [4],
        "filters combine"
    );
    assert!(
        list(DeliveryFilter {
            endpoint: Some("A".into()),
            ..by()
        })
        .await
        .is_empty(),
        "names are exact"
    );
    // pages: after the last id seen, at most `limit`
    assert_eq!(list(DeliveryFilter { limit: 2, ..by() }).await, [1, 2]);
    assert_eq!(
        list(DeliveryFilter {
            after_id: 2,
            limit: 2,
            ..by()
        })
        .await,
        [3, 4]
    );
    assert_eq!(
        list(DeliveryFilter {
            after_id: 4,
            limit: 2,
            ..by()
        })
        .await,
        [5]
    );
    assert_eq!(
        list(DeliveryFilter { limit: 0, ..by() }).await,
        [1],
        "clamped to 1"
    );
    // every column read back
    let rows = admin::deliveries(
        &t,
        &DeliveryFilter {
            after_id: 3,
            limit: 1,
            ..by()
        },
    )
    .await
    .unwrap();
    let dead = &rows[0];
    assert_eq!(
        (
            dead.endpoint.as_str(),
            dead.envelope_id.as_str(),
            dead.user_id.as_deref(),
            dead.event_type.as_str(),
            dead.state,
            dead.attempts,
            dead.lease_until_ms,
            dead.created_at_ms,
            dead.finished_at_ms,
            dead.last_status,
            dead.last_error.as_deref()
        ),
        (
            "a",
            "e3",
            None,
            "activity",
            DeliveryState::Dead,
            3,
            Some(77),
            3,
            Some(5),
            Some(500),
            Some("gave up after 8 attempts")
        )
    );
    // more than the largest page: clamped to MAX_LIMIT
    let mut sql = format!(
        "INSERT INTO {} (id, endpoint, envelope_id, event_type, state, attempts, next_attempt_at_ms, created_at_ms) VALUES ",
        t.table("webhook_deliveries")
    );
    let values: Vec<String> = (10..1_020)
        .map(|i| format!("({i}, 'c', 'x{i}', 'sleep', 'pending', 0, 0, 1)"))
        .collect();
    sql.push_str(&values.join(", "));
    exec(&t, &sql).await;
    let page = list(DeliveryFilter {
        endpoint: Some("c".into()),
        limit: 5_000,
        ..by()
    })
    .await;
    assert_eq!(page.len(), admin::MAX_LIMIT as usize);
    db.drop_now().await;
}

async fn one_delivery_with_its_attempts_in_order(dialect: Dialect) {
    let (db, t) = setup(dialect).await;
    delivery(&t, 7, "a", "e1", Some("u1"), "pending", 0, 1).await;
    delivery(&t, 8, "a", "e2", Some("u1"), "pending", 0, 1).await;
    let table = t.table("webhook_attempts");
    exec(&t, &format!("INSERT INTO {table} (id, delivery_id, attempt, probe, started_at_ms, duration_ms, status_code, error_class, error, response) VALUES \
        (3, 7, 2, 1, 300, 8000, NULL, 'timeout', 'no answer within 8s', NULL), \
        (1, 7, 1, 0, 100, 12, 503, 'status', NULL, 'busy'), \
        (2, 8, 1, 0, 200, 5, 200, 'none', NULL, 'ok')")).await;
    let (row, attempts) = admin::delivery(&t, 7).await.unwrap().expect("delivery 7");
    assert_eq!((row.id, row.envelope_id.as_str()), (7, "e1"));
    assert_eq!(attempts.len(), 2, "only this delivery's: {attempts:?}");
    let first = &attempts[0];
    assert_eq!(
        (
            first.id,
            first.attempt,
            first.probe,
            first.started_at_ms,
            first.duration_ms,
            first.status_code,
            first.error_class.as_str(),
            first.error.as_deref(),
            first.response.as_deref()
        ),
        (
            1,
            1,
            false,
            100,
            12,
            Some(503),
            "status",
            None,
            Some("busy")
        )
    );
    let second = &attempts[1];
    assert_eq!(
        (
            second.id,
            second.probe,
            second.status_code,
            second.error.as_deref()
        ),
        (3, true, None, Some("no answer within 8s"))
    );
    assert!(admin::delivery(&t, 99).await.unwrap().is_none());
    let (_, none) = admin::delivery(&t, 8).await.unwrap().unwrap();
    assert_eq!(none.len(), 1);
    // a first attempt kept in its delivery's row (delivered at once by the fan-out) is listed
    // first, as attempt 1 with id 0, its status the delivery's, before any attempt row
    delivery(&t, 9, "a", "e3", Some("u1"), "delivered", 0, 1).await;
    exec(&t, &format!(
        "UPDATE {} SET last_status = 204, first_started_at_ms = 400, first_duration_ms = 7, first_response = 'taken' WHERE id = 9",
        t.table("webhook_deliveries")
    ))
    .await;
    exec(&t, &format!("INSERT INTO {table} (id, delivery_id, attempt, probe, started_at_ms, duration_ms, status_code, error_class, error, response) VALUES \
        (4, 9, 1, 1, 500, 3, 200, 'none', NULL, NULL)")).await;
    let (_, kept) = admin::delivery(&t, 9).await.unwrap().unwrap();
    assert_eq!(
        kept.iter()
            .map(|a| (
                a.id,
                a.attempt,
                a.probe,
                a.started_at_ms,
                a.duration_ms,
                a.status_code
            ))
            .collect::<Vec<_>>(),
        [
            (0, 1, false, 400, 7, Some(204)),
            (4, 1, true, 500, 3, Some(200))
        ]
    );
    assert_eq!(
        (
            kept[0].error_class.as_str(),
            kept[0].error.as_deref(),
            kept[0].response.as_deref()
        ),
        ("none", None, Some("taken"))
    );
    db.drop_now().await;
}
