//! What the SQL projection holds, against the machine's real Postgres and MariaDB (a fresh
//! database per test) and SQLite, fed through a real embedded log: every fixture, newer and
//! older copies, the user lifecycle, poison, replays. Every test runs on every dialect.

#[macro_use]
mod support;

use sqlx::Executor;
use support::*;
use terra_core::keys;
use terra_schema::{Dialect, SqlTarget};

const T0: i64 = 1_780_000_000;

on_every_dialect!(
    every_fixture_lands_in_terras_tables,
    redeliveries_and_older_copies_never_overwrite_newer_ones,
    the_user_lifecycle_follows_authentication_events,
    a_batch_of_lifecycle_steps_ends_as_one_step_at_a_time,
    poison_is_dead_lettered_and_the_projector_moves_on,
    replays_after_a_crash_change_nothing,
);

async fn every_fixture_lands_in_terras_tables(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let fixtures = all_fixtures();
    let records = fixtures
        .iter()
        .enumerate()
        .map(|(i, (_, body))| record(body, Some((T0 + i as i64) * 1000), T0, None))
        .collect();
    log.append(records).await;
    let stats = project(&log.log, &target, "sql", 7).await;
    assert_eq!(stats.records, fixtures.len());
    assert_eq!(stats.dead, 0);

    // one data row per record, with the payload id the object store will use
    let mut expected_data = Vec::new();
    let mut misc = 0;
    for (_, body) in &fixtures {
        let c = terra_core::classify(body).unwrap();
        if c.group == terra_core::EventGroup::Data {
            for r in &c.records {
                expected_data.push(keys::data_payload_id(
                    c.version.as_deref(),
                    &c.event_type,
                    c.user_id.as_deref().unwrap(),
                    r,
                ));
            }
        } else if c.user_id.is_some() {
            // events without a user have no Terra row (its user_id is NOT NULL)
            misc += 1;
        }
    }
    expected_data.sort();
    let data_ids: Vec<String> = rows(
        &target,
        &format!(
            "SELECT payload_id FROM {} ORDER BY payload_id",
            target.table("terra_data_payloads")
        ),
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    assert_eq!(data_ids, expected_data);
    assert!(!expected_data.is_empty());
    assert_eq!(count(&target, "terra_misc_payloads").await, misc);
    assert_eq!(
        count(&target, "terra_other_payloads").await,
        misc,
        "the view shows the misc table"
    );

    // misc rows carry the event type; unknown types would too
    let types: Vec<String> = rows(
        &target,
        &format!(
            "SELECT payload_type FROM {} ORDER BY payload_type",
            target.table("terra_misc_payloads")
        ),
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    for t in ["auth", "deauth", "user_reauth", "large_request_sending"] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    // events without a user have no Terra row (fidelity.rs: where they are)
    for t in [
        "auth_cancelled",
        "healthcheck",
        "lab_report.completed",
        "s3_upload",
    ] {
        assert!(!types.iter().any(|x| x == t), "{t} has no Terra row");
    }
    // an athlete payload and an empty data array
    let athlete = rows(
        &target,
        &format!(
            "SELECT COUNT(*) FROM {} WHERE data_type = 'athlete'",
            target.table("terra_data_payloads")
        ),
    )
    .await;
    assert_eq!(athlete[0][0].as_deref(), Some("1"));

    // the user object's fields, from the newest authentication event of that user
    let user = rows(&target, &format!("SELECT provider, reference_id, granted_scopes FROM {} WHERE user_id = '0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3'", target.table("terra_users"))).await;
    assert_eq!(user[0][0].as_deref(), Some("GARMIN"));
    assert_eq!(user[0][1].as_deref(), Some("acct-1007"));

    // an unknown type is a misc row, never an error
    let unknown = br#"{"type": "sleep_score_v9", "user": {"user_id": "u-unknown", "provider": "OURA"}, "version": "2022-03-16"}"#;
    log.append(vec![record(unknown, Some(T0 * 1000), T0, None)])
        .await;
    project(&log.log, &target, "sql", 7).await;
    let row = rows(
        &target,
        &format!(
            "SELECT payload_type, payload_id FROM {} WHERE user_id = 'u-unknown'",
            target.table("terra_misc_payloads")
        ),
    )
    .await;
    assert_eq!(row[0][0].as_deref(), Some("sleep_score_v9"));
    assert!(
        row[0][1]
            .as_deref()
            .unwrap()
            .starts_with("2022-03-16/sleep_score_v9/u-unknown-")
    );
    db.drop_now().await;
}

async fn redeliveries_and_older_copies_never_overwrite_newer_ones(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let sleep = fixture("sleep");
    let records_per_body = terra_core::classify(&sleep).unwrap().records.len() as i64;
    // newest first, then an identical redelivery, then an older copy arriving late
    let newest = record(&sleep, Some(T0 * 1000 + 500), T0, Some("trace-1"));
    log.append(vec![newest.clone()]).await;
    log.append(vec![record(
        &sleep,
        Some(T0 * 1000 + 500),
        T0 + 1,
        Some("trace-1"),
    )])
    .await;
    log.append(vec![record(
        &sleep,
        Some(T0 * 1000 - 60_000),
        T0 + 2,
        Some("trace-0"),
    )])
    .await;
    let stats = project(&log.log, &target, "sql", 1).await;
    assert_eq!(stats.records, 3);
    assert_eq!(
        stats.superseded as i64, records_per_body,
        "the older copy loses"
    );
    assert_eq!(
        count(&target, "terra_data_payloads").await,
        records_per_body,
        "one row per record"
    );
    assert_eq!(count(&target, "ingest_payloads").await, records_per_body);
    let created = rows(
        &target,
        &format!(
            "SELECT DISTINCT created_at FROM {}",
            target.table("terra_data_payloads")
        ),
    )
    .await;
    assert_eq!(
        created,
        vec![vec![Some(keys::unix_ms_to_utc(T0 * 1000 + 500))]],
        "the newest copy's row stays"
    );

    // a newer copy (a superset, as Terra re-sends) replaces it
    log.append(vec![record(
        &sleep,
        Some(T0 * 1000 + 9_000),
        T0 + 3,
        Some("trace-2"),
    )])
    .await;
    project(&log.log, &target, "sql", 1).await;
    let created = rows(
        &target,
        &format!(
            "SELECT DISTINCT created_at FROM {}",
            target.table("terra_data_payloads")
        ),
    )
    .await;
    assert_eq!(
        created,
        vec![vec![Some(keys::unix_ms_to_utc(T0 * 1000 + 9_000))]]
    );
    assert_eq!(
        count(&target, "terra_data_payloads").await,
        records_per_body
    );

    // without an ordering timestamp, log order decides between equal receipt times: of two
    // copies received in the same second (newer than the rows above), in one batch, the
    // later in the log stays
    log.append(vec![
        record(&sleep, None, T0 + 50, Some("trace-earlier")),
        record(&sleep, None, T0 + 50, Some("trace-later")),
    ])
    .await;
    let stats = project(&log.log, &target, "sql", 1).await;
    assert_eq!(stats.records, 2);
    let kept = rows(
        &target,
        &format!(
            "SELECT DISTINCT terra_trace_id FROM {}",
            target.table("ingest_payloads")
        ),
    )
    .await;
    assert_eq!(kept, vec![vec![Some("trace-later".to_owned())]]);
    assert_eq!(
        count(&target, "terra_data_payloads").await,
        records_per_body
    );

    // a delivery with empty data writes no rows
    let empty = fixture("activity_empty_data");
    log.append(vec![record(&empty, None, T0, None)]).await;
    let stats = project(&log.log, &target, "sql", 1).await;
    assert_eq!(stats.payloads, 0, "empty data writes no rows");
    db.drop_now().await;
}

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

async fn poison_is_dead_lettered_and_the_projector_moves_on(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let hostile_long = format!(
        r#"{{"type": "sleep", "user": {{"user_id": "{}", "provider": "X"}}, "data": [{{"metadata": {{"summary_id": "s"}}}}]}}"#,
        "u".repeat(10_240)
    );
    let hostile_path = br#"{"type": "sleep", "version": "2022-03-16", "user": {"user_id": "../x/y", "provider": "X"}, "data": [{"metadata": {"summary_id": "s", "start_time": "2026-10-01T01:00:00.000000+00:00"}}]}"#;
    let mut not_json = record(
        b"{\"type\": \"sleep\", truncated",
        Some(T0 * 1000),
        T0,
        None,
    );
    not_json.key = None;
    log.append(vec![
        not_json,
        record(hostile_long.as_bytes(), Some(T0 * 1000), T0, None),
        record(hostile_path, Some(T0 * 1000), T0, None),
        record(&fixture("daily"), Some(T0 * 1000), T0, None),
    ])
    .await;
    let stats = project(&log.log, &target, "sql", 10).await;
    assert_eq!(stats.records, 4);
    assert_eq!(stats.dead, 2);
    let dead = rows(
        &target,
        &format!(
            "SELECT reason, envelope_id FROM {} ORDER BY reason",
            target.table("ingest_dead_letters")
        ),
    )
    .await;
    assert!(
        dead[0][0].as_deref().unwrap().contains("not JSON"),
        "{dead:?}"
    );
    assert!(
        dead[1][0]
            .as_deref()
            .unwrap()
            .contains("user_id is 10240 characters"),
        "{dead:?}"
    );
    // the body is kept byte for byte
    let body = target
        .pool()
        .fetch_one(
            format!(
                "SELECT body FROM {} WHERE reason LIKE '%not JSON%'",
                target.table("ingest_dead_letters")
            )
            .as_str(),
        )
        .await
        .unwrap();
    let body: Vec<u8> = sqlx::Row::try_get(&body, 0).unwrap();
    assert_eq!(body, b"{\"type\": \"sleep\", truncated");
    // a hostile but storable user id is stored as sent, its key encoded
    let hostile = rows(
        &target,
        &format!(
            "SELECT payload_id FROM {} WHERE user_id = '../x/y'",
            target.table("terra_data_payloads")
        ),
    )
    .await;
    assert_eq!(
        hostile[0][0].as_deref(),
        Some("2022-03-16/sleep/%2E%2E%2Fx%2Fy-2026-10-01T01:00:00Z")
    );
    // the records after the poison were projected
    assert!(count(&target, "terra_data_payloads").await > 1);
    db.drop_now().await;
}

async fn replays_after_a_crash_change_nothing(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let records = all_fixtures()
        .iter()
        .map(|(_, body)| record(body, Some(T0 * 1000), T0, None))
        .collect();
    log.append(records).await;
    project(&log.log, &target, "sql", 5).await;
    let before = snapshot(&target).await;
    // a projector that never committed to the log (as after kill -9) reads everything again
    let stats = project(&log.log, &target, "sql-fresh-group", 5).await;
    assert_eq!(
        stats.records, 0,
        "the database's positions win over the log's"
    );
    assert_eq!(snapshot(&target).await, before);
    // positions rolled back (a restore from backup): rows are re-applied idempotently
    target
        .pool()
        .execute(format!("DELETE FROM {}", target.table("ingest_positions")).as_str())
        .await
        .unwrap();
    let stats = project(&log.log, &target, "sql", 5).await;
    assert_eq!(stats.records, all_fixtures().len());
    assert_eq!(snapshot(&target).await, before, "no duplicate, same state");
    db.drop_now().await;
}
