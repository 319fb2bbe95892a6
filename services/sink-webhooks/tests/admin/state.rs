//! `requeue_dead` and `set_state`: only what they should touch, and the errors of all of them.

use terra_schema::{Dialect, SqlError, SqlTarget};
use terra_sink_webhooks::admin::{
    self, DeliveryFilter, DeliveryState, EndpointState, EndpointStatus,
};
use terra_testkit::TestDb;

use super::{NOW, delivery, endpoint_row, exec, named, setup};

pub(crate) async fn requeue_takes_only_dead_letters_within_the_range(dialect: Dialect) {
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

pub(crate) async fn enabling_releases_the_backlog_and_other_states_keep_it(dialect: Dialect) {
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

pub(crate) async fn missing_tables_and_unknown_states_are_errors(dialect: Dialect) {
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
