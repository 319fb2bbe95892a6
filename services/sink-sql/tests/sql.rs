//! What the SQL projection holds, against the machine's real Postgres and MariaDB (a fresh
//! database per test) and SQLite, fed through a real embedded log: every fixture, newer and
//! older copies, poison, replays (the user lifecycle: `lifecycle.rs`). Every test runs on
//! every dialect.

#[macro_use]
mod support;

use sqlx::Executor;
use support::*;
use terra_core::keys;
use terra_schema::Dialect;

const T0: i64 = 1_780_000_000;

on_every_dialect!(
    every_fixture_lands_in_terras_tables,
    redeliveries_and_older_copies_never_overwrite_newer_ones,
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
