//! `admin`: what operators see and do, on Postgres, MariaDB and SQLite, over rows inserted
//! here with plain INSERTs (as the fan-out and the dispatcher would leave them).

use sqlx::Executor;
use terra_schema::{Dialect, SqlError, SqlTarget, TableSet};
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

on_every_dialect!(
    endpoints_show_state_and_backlog,
    deliveries_by_every_filter_and_page,
    one_delivery_with_its_attempts_in_order,
    requeue_takes_only_dead_letters_within_the_range,
    enabling_releases_the_backlog_and_other_states_keep_it,
    missing_tables_and_unknown_states_are_errors,
);

const NOW: i64 = 1_780_000_000_000;

/// A fresh database with the webhook tables.
async fn setup(dialect: Dialect) -> (TestDb, SqlTarget) {
    let db = TestDb::new(dialect).await;
    let target = SqlTarget::connect(&db.config()).unwrap();
    terra_schema::migrate_set(&target, TableSet::Webhooks)
        .await
        .unwrap();
    (db, target)
}

async fn exec(target: &SqlTarget, sql: &str) {
    target
        .pool()
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A delivery row; `None` user for events without one.
#[allow(clippy::too_many_arguments)]
async fn delivery(
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

async fn endpoint_row(target: &SqlTarget, values: &str) {
    exec(
        target,
        &format!(
            "INSERT INTO {} (name, state, reason, changed_at_ms, failing_since_ms, last_success_ms, next_probe_at_ms) VALUES ({values})",
            target.table("webhook_endpoints")
        ),
    )
    .await;
}

fn named<'a>(list: &'a [EndpointStatus], name: &str) -> &'a EndpointStatus {
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

fn ids(rows: &[DeliveryRow]) -> Vec<i64> {
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
        (3, 7, 2, TRUE, 300, 8000, NULL, 'timeout', 'no answer within 8s', NULL), \
        (1, 7, 1, FALSE, 100, 12, 503, 'status', NULL, 'busy'), \
        (2, 8, 1, FALSE, 200, 5, 200, 'none', NULL, 'ok')")).await;
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
    db.drop_now().await;
}

async fn requeue_takes_only_dead_letters_within_the_range(dialect: Dialect) {
    let (db, t) = setup(dialect).await;
    delivery(&t, 1, "a", "e1", None, "dead", 0, 100).await;
    delivery(&t, 2, "a", "e2", None, "dead", 0, 200).await;
    delivery(&t, 3, "a", "e3", None, "dead", 0, 300).await;
    delivery(&t, 4, "a", "e4", None, "dead", 0, 301).await;
    delivery(&t, 5, "a", "e5", None, "pending", 9, 250).await;
    delivery(&t, 6, "a", "e6", None, "delivered", 0, 250).await;
    delivery(&t, 7, "b", "e2", None, "dead", 0, 250).await;
    let n = admin::requeue_dead(&t, "a", 200, 300, NOW).await.unwrap();
    assert_eq!(
        n, 2,
        "dead letters of a created in [200, 300], bounds included"
    );
    let all = admin::deliveries(&t, &DeliveryFilter::default())
        .await
        .unwrap();
    let state = |id: i64| all.iter().find(|r| r.id == id).unwrap().clone();
    for id in [2, 3] {
        let r = state(id);
        assert_eq!(
            (
                r.state,
                r.attempts,
                r.next_attempt_at_ms,
                r.finished_at_ms,
                r.last_error,
                r.lease_until_ms
            ),
            (DeliveryState::Pending, 0, NOW, None, None, None),
            "{id}"
        );
    }
    for (id, expected) in [
        (1, DeliveryState::Dead),
        (4, DeliveryState::Dead),
        (5, DeliveryState::Pending),
        (6, DeliveryState::Delivered),
        (7, DeliveryState::Dead),
    ] {
        let r = state(id);
        assert_eq!(r.state, expected, "{id} untouched");
        assert_eq!(r.attempts, 3, "{id} untouched");
    }
    assert_eq!(state(5).next_attempt_at_ms, 9);
    let lease: Vec<Vec<Option<String>>> = terra_schema::rows(
        &t,
        &format!(
            "SELECT lease_token FROM {} WHERE id IN (2, 3)",
            t.table("webhook_deliveries")
        ),
    )
    .await
    .unwrap();
    assert_eq!(lease, vec![vec![None], vec![None]], "lease tokens cleared");
    // again: nothing left to re-queue there
    assert_eq!(
        admin::requeue_dead(&t, "a", 200, 300, NOW).await.unwrap(),
        0
    );
    assert_eq!(
        admin::requeue_dead(&t, "a", 300, 200, NOW).await.unwrap(),
        0
    );
    db.drop_now().await;
}

async fn endpoint(t: &SqlTarget, name: &str) -> EndpointStatus {
    named(&admin::endpoints(t, &[], NOW).await.unwrap(), name).clone()
}

async fn next_attempts(t: &SqlTarget) -> Vec<(i64, i64)> {
    admin::deliveries(t, &DeliveryFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.id, r.next_attempt_at_ms))
        .collect()
}

async fn enabling_releases_the_backlog_and_other_states_keep_it(dialect: Dialect) {
    let (db, t) = setup(dialect).await;
    endpoint_row(&t, "'a', 'disabled', 'HTTP 410 Gone', 10, 11, 12, 13").await;
    delivery(&t, 1, "a", "e1", None, "pending", NOW + 60_000, 1).await;
    delivery(&t, 2, "a", "e2", None, "pending", NOW + 90_000, 2).await;
    delivery(&t, 3, "a", "e3", None, "dead", 55, 3).await;
    delivery(&t, 4, "b", "e1", None, "pending", NOW + 60_000, 1).await;
    admin::set_state(&t, "a", EndpointState::Enabled, Some("ignored"), NOW)
        .await
        .unwrap();
    let a = endpoint(&t, "a").await;
    assert_eq!(
        (
            a.state,
            a.reason.clone(),
            a.changed_at_ms,
            a.failing_since_ms,
            a.next_probe_at_ms,
            a.last_success_ms
        ),
        (
            EndpointState::Enabled,
            None,
            Some(NOW),
            None,
            None,
            Some(12)
        )
    );
    assert_eq!(
        next_attempts(&t).await,
        [(1, 0), (2, 0), (3, 55), (4, NOW + 60_000)],
        "a's pending deliveries are due at once; dead ones and b's are untouched"
    );
    assert_eq!(a.backlog.due, 2);

    // enabling an enabled endpoint changes nothing: retries keep their schedule
    delivery(&t, 5, "a", "e5", None, "pending", NOW + 5_000, 5).await;
    admin::set_state(&t, "a", EndpointState::Enabled, None, NOW + 1)
        .await
        .unwrap();
    assert_eq!(endpoint(&t, "a").await.changed_at_ms, Some(NOW));
    assert_eq!(next_attempts(&t).await[4], (5, NOW + 5_000));

    // an operator pauses it (the row is created for an endpoint that has none yet)
    admin::set_state(&t, "c", EndpointState::Paused, Some("maintenance"), NOW + 2)
        .await
        .unwrap();
    let c = endpoint(&t, "c").await;
    assert_eq!(
        (
            c.state,
            c.reason.as_deref(),
            c.changed_at_ms,
            c.next_probe_at_ms
        ),
        (
            EndpointState::Paused,
            Some("maintenance"),
            Some(NOW + 2),
            None
        )
    );
    // paused again with another reason: the reason changes, not when it was paused
    admin::set_state(&t, "c", EndpointState::Paused, Some("still"), NOW + 3)
        .await
        .unwrap();
    let c = endpoint(&t, "c").await;
    assert_eq!(
        (c.reason.as_deref(), c.changed_at_ms),
        (Some("still"), Some(NOW + 2))
    );

    // the dispatcher disables it: failing since now unless known, a probe due now
    admin::set_state(
        &t,
        "a",
        EndpointState::Disabled,
        Some("HTTP 410 Gone"),
        NOW + 4,
    )
    .await
    .unwrap();
    let a = endpoint(&t, "a").await;
    assert_eq!(
        (
            a.state,
            a.reason.as_deref(),
            a.changed_at_ms,
            a.failing_since_ms,
            a.next_probe_at_ms
        ),
        (
            EndpointState::Disabled,
            Some("HTTP 410 Gone"),
            Some(NOW + 4),
            Some(NOW + 4),
            Some(NOW + 4)
        )
    );
    // disabled again (a probe answered 410): the scheduled probe and failing_since stay
    exec(
        &t,
        &format!(
            "UPDATE {} SET next_probe_at_ms = {}, failing_since_ms = 7 WHERE name = 'a'",
            t.table("webhook_endpoints"),
            NOW + 600_000
        ),
    )
    .await;
    admin::set_state(&t, "a", EndpointState::Disabled, Some("again"), NOW + 5)
        .await
        .unwrap();
    let a = endpoint(&t, "a").await;
    assert_eq!(
        (a.failing_since_ms, a.next_probe_at_ms, a.changed_at_ms),
        (Some(7), Some(NOW + 600_000), Some(NOW + 4))
    );
    // paused: no more probes; pending deliveries keep their next attempt
    admin::set_state(&t, "a", EndpointState::Paused, None, NOW + 6)
        .await
        .unwrap();
    let a = endpoint(&t, "a").await;
    assert_eq!(
        (a.state, a.next_probe_at_ms, a.failing_since_ms),
        (EndpointState::Paused, None, Some(7))
    );
    assert_eq!(next_attempts(&t).await[4], (5, NOW + 5_000));
    // and enabled: the backlog is due at once again
    admin::set_state(&t, "a", EndpointState::Enabled, None, NOW + 7)
        .await
        .unwrap();
    assert_eq!(next_attempts(&t).await[4], (5, 0));
    db.drop_now().await;
}

async fn missing_tables_and_unknown_states_are_errors(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let bare = SqlTarget::connect(&db.config()).unwrap();
    assert!(admin::endpoints(&bare, &[], NOW).await.is_err());
    assert!(
        admin::deliveries(&bare, &DeliveryFilter::default())
            .await
            .is_err()
    );
    assert!(admin::delivery(&bare, 1).await.is_err());
    assert!(admin::requeue_dead(&bare, "a", 0, 1, NOW).await.is_err());
    assert!(
        admin::set_state(&bare, "a", EndpointState::Paused, None, NOW)
            .await
            .is_err()
    );
    db.drop_now().await;

    let (db, t) = setup(dialect).await;
    endpoint_row(&t, "'a', 'sleeping', NULL, 1, NULL, NULL, NULL").await;
    match admin::endpoints(&t, &[], NOW).await {
        Err(SqlError::Schema(e)) => assert!(e.contains("\"sleeping\""), "{e}"),
        other => panic!("{other:?}"),
    }
    delivery(&t, 1, "a", "e1", None, "lost", 0, 1).await;
    match admin::deliveries(&t, &DeliveryFilter::default()).await {
        Err(SqlError::Schema(e)) => assert!(e.contains("\"lost\""), "{e}"),
        other => panic!("{other:?}"),
    }
    db.drop_now().await;
}
