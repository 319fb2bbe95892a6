//! Issue 14 against the real databases: payload ids unique per identity with Terra's key
//! for the common case (the suffix rule), events without a user (lab reports de-duplicated on
//! their `event_id`, `auth_cancelled` in the user-less history), Terra's NOT NULL columns,
//! and the upgrade of tables an earlier release made, rows and all.

#[macro_use]
mod support;

use support::*;
use terra_core::keys;
use terra_eventlog::Record;
use terra_schema::{SqlConfig, SqlTarget, Variant};
use terra_testkit::envelope;

const T0: i64 = 1_780_000_000;
const U: &str = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";

on_every_dialect!(
    records_sharing_a_start_keep_their_own_payload_ids,
    events_without_a_user_are_kept_outside_terras_tables,
);

fn ids(rows: Vec<Vec<Option<String>>>) -> Vec<String> {
    rows.into_iter().map(|r| r[0].clone().unwrap()).collect()
}

fn activity(summary_id: &str, name: &str) -> Vec<u8> {
    format!(r#"{{"type": "activity", "user": {{"user_id": "{U}", "provider": "GARMIN"}}, "data": [{{"metadata": {{"summary_id": "{summary_id}", "name": "{name}", "start_time": "2026-10-04T07:15:00.000000+02:00"}}}}], "version": "2022-03-16"}}"#).into_bytes()
}

async fn records_sharing_a_start_keep_their_own_payload_ids(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let base = format!("2022-03-16/activity/{U}-2026-10-04T05:15:00Z");
    // two activities that start in the same second, in two deliveries, then a newer copy of
    // the second
    log.append(vec![
        record(&activity("a-1", "first"), Some(T0 * 1000), T0, Some("t1")),
        record(
            &activity("a-2", "second"),
            Some(T0 * 1000 + 5),
            T0,
            Some("t2"),
        ),
    ])
    .await;
    project(&log.log, &target, "sql", 1).await;
    // two planned workouts on one date, in one body
    let planned = format!(
        r#"{{"type": "planned_workout", "user": {{"user_id": "{U}"}}, "data": [{{"planned_workout_id": "p-1", "planned_date": "2026-07-03"}}, {{"planned_workout_id": "p-2", "planned_date": "2026-07-03"}}], "version": "2022-03-16"}}"#
    );
    // two authentication events of the user in the same second
    let auth = |msg: &str| {
        format!(
            r#"{{"type": "auth", "status": "success", "message": "{msg}", "user": {{"user_id": "{U}", "provider": "GARMIN"}}}}"#
        )
    };
    log.append(vec![
        record(planned.as_bytes(), Some(T0 * 1000), T0, Some("t3")),
        record(auth("one").as_bytes(), Some(T0 * 1000 + 1), T0, Some("t4")),
        record(auth("two").as_bytes(), Some(T0 * 1000 + 2), T0, Some("t5")),
        record(
            &activity("a-2", "second, edited"),
            Some(T0 * 1000 + 9),
            T0,
            Some("t6"),
        ),
    ])
    .await;
    project(&log.log, &target, "sql", 100).await;

    let sql = |table: &str, t: &str| {
        format!(
            "SELECT payload_id FROM {} WHERE {t} ORDER BY payload_id",
            target.table(table)
        )
    };
    let activities = ids(rows(
        &target,
        &sql("terra_data_payloads", "data_type = 'activity'"),
    )
    .await);
    let index = |key: &str| {
        format!(
            "SELECT payload_id FROM {} WHERE natural_key = '{key}'",
            target.table("ingest_payloads")
        )
    };
    let a1 = ids(rows(&target, &index("a-1")).await);
    let a2 = ids(rows(&target, &index("a-2")).await);
    assert_eq!(
        a1,
        std::slice::from_ref(&base),
        "the first keeps Terra's key"
    );
    assert_eq!(a2.len(), 1);
    assert!(a2[0].starts_with(&format!("{base}~")), "{a2:?}");
    assert_eq!(a2[0].len(), base.len() + keys::SUFFIX_LEN);
    let mut expected = vec![base.clone(), a2[0].clone()];
    expected.sort();
    assert_eq!(
        activities, expected,
        "two rows; the re-delivery kept its id"
    );

    let planned = ids(rows(
        &target,
        &sql("terra_data_payloads", "data_type = 'planned_workout'"),
    )
    .await);
    assert_eq!(planned.len(), 2, "{planned:?}");
    assert!(planned.contains(&format!("2022-03-16/planned_workout/{U}-2026-07-03")));

    let auths = ids(rows(
        &target,
        &sql("terra_misc_payloads", "payload_type = 'auth'"),
    )
    .await);
    let auth_base = keys::event_payload_id(None, "auth", Some(U), T0 * 1000);
    assert_eq!(auths.len(), 2, "{auths:?}");
    assert_eq!(auths[0], auth_base, "to the second, with Z");
    assert!(auths[1].starts_with(&format!("{auth_base}~")));
    // the history points at each event's own payload
    let history = ids(rows(
        &target,
        &format!(
            "SELECT payload_id FROM {} WHERE event_type = 'auth' ORDER BY payload_id",
            target.table("ingest_user_events")
        ),
    )
    .await);
    assert_eq!(history, auths);
    db.drop_now().await;
}

fn with_reference(body: &[u8], received: i64, trace: &str, reference: &str) -> Record {
    let mut envelope = envelope(body, None, received, Some(trace));
    envelope.terra_reference = Some(reference.to_owned());
    Record::of_envelope(&envelope, [])
}

async fn events_without_a_user_are_kept_outside_terras_tables(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let lab = fixture("lab_report_completed");
    log.append(vec![
        // a re-delivery is a new delivery: new trace id, the same event id
        with_reference(&lab, T0, "trace-a", "297405620317847552"),
        with_reference(&lab, T0 + 60, "trace-b", "297405620317847552"),
        record(&fixture("lab_report_failed"), None, T0, Some("trace-c")),
        record(&fixture("auth_cancelled"), None, T0, Some("trace-d")),
        record(&fixture("s3_upload"), None, T0, Some("trace-e")),
    ])
    .await;
    let stats = project(&log.log, &target, "sql", 100).await;
    assert_eq!(stats.dead, 0, "never poison");
    assert_eq!(
        count(&target, "terra_misc_payloads").await,
        0,
        "Terra's user_id is NOT NULL"
    );
    let lab_rows = rows(&target, &format!("SELECT payload_id, terra_reference, terra_trace_id FROM {} WHERE event_type = 'lab_report.completed'", target.table("ingest_payloads"))).await;
    assert_eq!(lab_rows.len(), 1, "de-duplicated on the body's event_id");
    assert_eq!(lab_rows[0][1].as_deref(), Some("297405620317847552"));
    assert_eq!(lab_rows[0][2].as_deref(), Some("trace-b"), "the newer copy");
    assert!(
        lab_rows[0][0]
            .as_deref()
            .unwrap()
            .starts_with("2022-03-16/lab_report.completed/")
    );
    let types = ids(rows(
        &target,
        &format!(
            "SELECT event_type FROM {} WHERE user_id IS NULL ORDER BY event_type",
            target.table("ingest_payloads")
        ),
    )
    .await);
    assert_eq!(
        types,
        [
            "auth_cancelled",
            "lab_report.completed",
            "lab_report.failed",
            "s3_upload"
        ]
    );
    // auth_cancelled in the user-less history, with its reference
    let history = rows(&target, &format!("SELECT user_id, user_role, reference_id, status FROM {} WHERE event_type = 'auth_cancelled'", target.table("ingest_user_events"))).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0][0].as_deref(), Some(""));
    assert_eq!(history[0][1].as_deref(), Some(terra_core::NO_USER_ROLE));
    assert_eq!(history[0][2].as_deref(), Some("acct-2210"));
    assert_eq!(history[0][3].as_deref(), Some("error"));
    assert_eq!(count(&target, "terra_users").await, 0, "no user is made up");
    db.drop_now().await;
}

/// Terra's NOT NULL columns hold on Postgres and MySQL, and tables an earlier release made
/// (with rows Terra's columns cannot hold) upgrade by migration without losing a row.
async fn upgrade_from_the_previous_schema(dialect: Dialect, variant: Variant) {
    let db = TestDb::new(dialect).await;
    let mut config: SqlConfig = db.config();
    config.variant = variant;
    let target = SqlTarget::connect(&config).unwrap();
    // the previous release's schema, with what it wrote: a healthcheck without a user, a
    // user, a data row and a misc row
    terra_schema::migrate_up_to(&target, 20261125000100)
        .await
        .unwrap();
    let log = TestLog::new();
    log.append(vec![
        record(&fixture("healthcheck"), None, T0, Some("h")),
        record(&fixture("auth"), None, T0, Some("a")),
        record(&fixture("sleep"), None, T0, Some("s")),
    ])
    .await;
    // the previous release wrote the user-less row into Terra's table: as it left it
    let ts = match variant {
        Variant::Supabase => "CAST('2026-10-04T09:00:00Z' AS TIMESTAMPTZ)",
        Variant::Terra => "'2026-10-04T09:00:00.000Z'",
    };
    sqlx::query(&format!("INSERT INTO {} (user_id, data_type, payload_type, created_at, payload_id) VALUES (NULL, NULL, 'healthcheck', {ts}, '2022-03-16/healthcheck/2026-10-04T09:00:00.000Z')", target.table("terra_misc_payloads")))
        .execute(target.pool())
        .await
        .unwrap();
    project(&log.log, &target, "sql", 100).await;
    let before_users = count(&target, "terra_users").await;
    let before_data = count(&target, "terra_data_payloads").await;
    let before_misc = count(&target, "terra_misc_payloads").await;
    assert_eq!(before_misc, 2, "the auth row and the old healthcheck row");

    let report = terra_schema::migrate(&target).await.unwrap();
    // this one, and the later ones (the redundant index dropped, 20261204000100)
    assert!(
        report
            .applied
            .first()
            .is_some_and(|m| m.starts_with("20261203000100_")),
        "{report:?}"
    );
    assert_eq!(count(&target, "terra_users").await, before_users);
    assert_eq!(count(&target, "terra_data_payloads").await, before_data);
    assert_eq!(count(&target, "terra_misc_payloads").await, before_misc - 1);
    let moved = rows(
        &target,
        &format!(
            "SELECT payload_type, payload_id FROM {}",
            target.table("ingest_misc_without_user")
        ),
    )
    .await;
    assert_eq!(moved.len(), 1, "moved, not dropped");
    assert_eq!(
        moved[0][1].as_deref(),
        Some("2022-03-16/healthcheck/2026-10-04T09:00:00.000Z")
    );

    // Terra's NOT NULL now holds
    let null_user = sqlx::query(&format!("INSERT INTO {} (user_id, data_type, payload_type, created_at, payload_id) VALUES (NULL, NULL, 'x', {ts}, 'p')", target.table("terra_misc_payloads")))
        .execute(target.pool())
        .await;
    assert!(null_user.is_err(), "user_id NOT NULL");
    if variant == Variant::Terra {
        for column in ["data_type", "created_at", "payload_id", "user_id"] {
            let values: Vec<&str> = ["user_id", "data_type", "created_at", "payload_id"]
                .iter()
                .map(|c| if *c == column { "NULL" } else { "'x'" })
                .collect();
            let insert = sqlx::query(&format!(
                "INSERT INTO {} (user_id, data_type, created_at, payload_id) VALUES ({})",
                target.table("terra_data_payloads"),
                values.join(", ")
            ))
            .execute(target.pool())
            .await;
            assert!(insert.is_err(), "terra_data_payloads.{column} NOT NULL");
        }
    } else {
        // Supabase: TEXT ids and the cascade on update
        sqlx::query(&format!(
            "UPDATE {} SET user_id = 'renamed' WHERE user_id = '{U}'",
            target.table("terra_users")
        ))
        .execute(target.pool())
        .await
        .unwrap();
        let moved = rows(
            &target,
            &format!(
                "SELECT COUNT(*) FROM {} WHERE user_id = 'renamed'",
                target.table("terra_data_payloads")
            ),
        )
        .await;
        assert_eq!(moved[0][0].as_deref(), Some("1"), "ON UPDATE CASCADE");
    }
    // and the projector goes on writing
    log.append(vec![record(&fixture("daily"), None, T0, Some("d"))])
        .await;
    assert_eq!(project(&log.log, &target, "sql", 100).await.dead, 0);
    db.drop_now().await;
}

#[tokio::test]
async fn postgres_tables_upgrade_to_terras_not_null() {
    upgrade_from_the_previous_schema(Dialect::Postgres, Variant::Terra).await;
}

#[tokio::test]
async fn mysql_tables_upgrade_to_terras_not_null() {
    upgrade_from_the_previous_schema(Dialect::MySql, Variant::Terra).await;
}

#[tokio::test]
async fn supabase_tables_upgrade_to_terras_supabase_definition() {
    upgrade_from_the_previous_schema(Dialect::Postgres, Variant::Supabase).await;
}
