//! The user lifecycle in the SQL projection, against the machine's real Postgres and MariaDB
//! (a fresh database per test) and SQLite, fed through a real embedded log: authentication
//! events move each user's state, late ones only add history, and a batch of steps ends as
//! one step at a time. Every test runs on every dialect.

#[macro_use]
mod support;

use support::*;
use terra_schema::{Dialect, SqlTarget};

const T0: i64 = 1_780_000_000;

on_every_dialect!(
    the_user_lifecycle_follows_authentication_events,
    a_batch_of_lifecycle_steps_ends_as_one_step_at_a_time,
);

async fn the_user_lifecycle_follows_authentication_events(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let state = |user: &'static str| {
        let target = target.clone();
        async move {
            rows(
                &target,
                &format!(
                    "SELECT state FROM {} WHERE user_id = '{user}'",
                    target.table("terra_users")
                ),
            )
            .await
            .first()
            .and_then(|r| r[0].clone())
        }
    };
    const OLD: &str = "e4d3c2b1-a098-4765-8321-0fedcba98765";
    const NEW: &str = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
    const OURA: &str = "7b1e44d0-3c2a-4f5e-8d9b-61a0c2e8f4b7";
    let old_auth = fixture("auth").as_slice().to_vec();
    let old_auth = String::from_utf8(old_auth).unwrap().replace(NEW, OLD);
    log.append(vec![
        record(old_auth.as_bytes(), Some(T0 * 1000), T0, None),
        record(&fixture("sleep"), Some(T0 * 1000 + 1), T0, None),
    ])
    .await;
    project(&log.log, &target, "sql", 10).await;
    assert_eq!(state(OLD).await.as_deref(), Some("active"));

    log.append(vec![record(
        &fixture("user_reauth"),
        Some(T0 * 1000 + 10),
        T0,
        None,
    )])
    .await;
    project(&log.log, &target, "sql", 10).await;
    assert_eq!(
        state(OLD).await.as_deref(),
        Some("user_reauth"),
        "the old user leaves"
    );
    assert_eq!(
        state(NEW).await.as_deref(),
        Some("active"),
        "the new user is active"
    );

    // deauth, then an older auth of the same user arriving late: the state stays deauth
    let oura_auth = String::from_utf8(fixture("auth"))
        .unwrap()
        .replace(NEW, OURA);
    log.append(vec![record(
        &fixture("deauth"),
        Some(T0 * 1000 + 20),
        T0,
        None,
    )])
    .await;
    log.append(vec![record(
        oura_auth.as_bytes(),
        Some(T0 * 1000 + 5),
        T0,
        None,
    )])
    .await;
    project(&log.log, &target, "sql", 10).await;
    assert_eq!(state(OURA).await.as_deref(), Some("deauth"));

    // access revoked and a permission change
    log.append(vec![record(
        &fixture("permission_change"),
        Some(T0 * 1000 + 30),
        T0,
        None,
    )])
    .await;
    project(&log.log, &target, "sql", 10).await;
    let scopes = rows(
        &target,
        &format!(
            "SELECT granted_scopes, state FROM {} WHERE user_id = '{NEW}'",
            target.table("terra_users")
        ),
    )
    .await;
    assert_eq!(
        scopes[0][0].as_deref(),
        Some("activity:read,sleep:read,daily:read,nutrition:read")
    );
    assert_eq!(
        scopes[0][1].as_deref(),
        Some("active"),
        "a permission change keeps the state"
    );
    log.append(vec![record(
        &fixture("access_revoked"),
        Some(T0 * 1000 + 40),
        T0,
        None,
    )])
    .await;
    project(&log.log, &target, "sql", 10).await;
    let revoked_user = terra_core::classify(&fixture("access_revoked"))
        .unwrap()
        .user_id
        .unwrap();
    let revoked = rows(
        &target,
        &format!(
            "SELECT state FROM {} WHERE user_id = '{revoked_user}'",
            target.table("terra_users")
        ),
    )
    .await;
    assert_eq!(revoked[0][0].as_deref(), Some("access_revoked"));

    // the history keeps every step in order, even the late one
    let history = rows(&target, &format!("SELECT event_type FROM {} WHERE user_id = '{OURA}' ORDER BY version_ts_ms, log_partition, log_offset", target.table("ingest_user_events"))).await;
    let steps = |names: &[&str]| {
        names
            .iter()
            .map(|n| vec![Some(n.to_string())])
            .collect::<Vec<_>>()
    };
    assert_eq!(history, steps(&["auth", "deauth", "access_revoked"]));
    let history = rows(
        &target,
        &format!(
            "SELECT event_type, user_role FROM {} WHERE user_id = '{OLD}' ORDER BY version_ts_ms",
            target.table("ingest_user_events")
        ),
    )
    .await;
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[1],
        vec![Some("user_reauth".to_owned()), Some("old_user".to_owned())]
    );
    db.drop_now().await;
}

/// The lifecycle is written set-wise per batch: many steps of the same users in one batch
/// (late ones, re-deliveries, steps without a state, the user-less history) must leave the
/// same rows as each step in its own batch.
async fn a_batch_of_lifecycle_steps_ends_as_one_step_at_a_time(dialect: Dialect) {
    const USERS: [&str; 3] = ["lc-user-a", "lc-user-b", "lc-user-c"];
    let kinds = [
        "auth",
        "deauth",
        "permission_change",
        "user_reauth",
        "access_revoked",
        "auth_cancelled",
        "auth",
    ];
    let mut records = Vec::new();
    for i in 0..60usize {
        let mut body: serde_json::Value =
            serde_json::from_slice(&fixture(kinds[i % kinds.len()])).unwrap();
        // every step its own details, so which step's details win shows
        for (role, n) in [("user", i), ("old_user", i), ("new_user", i + 1)] {
            if let Some(user) = body.get_mut(role).and_then(|u| u.as_object_mut()) {
                user.insert("user_id".into(), USERS[(n * 7 / 3) % USERS.len()].into());
                user.insert("reference_id".into(), format!("ref-{i}-{role}").into());
                user.insert("scopes".into(), format!("scope-{i}").into());
                let created = format!("2026-09-{:02}T10:11:12.000000+00:00", 1 + i % 28);
                user.insert("created_at".into(), created.into());
            }
        }
        // a re-delivery now and then: the same body again, later in the log
        let copies = if i % 11 == 5 { 2 } else { 1 };
        // ordering times out of log order: some steps arrive after newer ones
        let ordering = T0 * 1000 + ((i * 37) % 41) as i64 * 10;
        for _ in 0..copies {
            records.push(record(
                body.to_string().as_bytes(),
                Some(ordering),
                T0,
                None,
            ));
        }
    }
    let log = TestLog::new();
    log.append(records).await;
    let (one, many) = (TestDb::new(dialect).await, TestDb::new(dialect).await);
    let (one_target, many_target) = (one.target().await, many.target().await);
    project(&log.log, &one_target, "sql", 1).await;
    project(&log.log, &many_target, "sql", 1_000).await;
    let history = |target: SqlTarget| async move {
        rows(
            &target,
            &format!(
                "SELECT event_id, user_id, user_role, status, state, provider, reference_id, \
                 scopes, payload_id, envelope_id, version_ts_ms, received_at_ms FROM {} \
                 ORDER BY event_id",
                target.table("ingest_user_events")
            ),
        )
        .await
    };
    let one_snapshot = snapshot(&one_target).await;
    assert_eq!(one_snapshot, snapshot(&many_target).await);
    assert_eq!(
        history(one_target.clone()).await,
        history(many_target.clone()).await
    );
    // the steps did move the users, and a late step was kept out of the state
    let users = rows(
        &one_target,
        &format!(
            "SELECT user_id, state FROM {} WHERE user_id LIKE 'lc-%' ORDER BY user_id",
            one_target.table("terra_users")
        ),
    )
    .await;
    assert_eq!(users.len(), USERS.len(), "{users:?}");
    let late = rows(
        &one_target,
        &format!(
            "SELECT COUNT(*) FROM {} e JOIN {} u ON u.user_id = e.user_id \
             WHERE e.user_id LIKE 'lc-%' AND e.version_ts_ms < u.state_version_ts_ms \
             AND e.log_offset > u.state_offset",
            one_target.table("ingest_user_events"),
            one_target.table("ingest_users")
        ),
    )
    .await;
    assert_ne!(late[0][0].as_deref(), Some("0"), "no step arrived late");
    one.drop_now().await;
    many.drop_now().await;
}
