//! Text is kept exactly (issue 11 §4): on MySQL/MariaDB terra-ingest's tables are utf8mb4 with
//! a binary NO PAD collation whatever the database's default (here `latin1`, as old servers
//! have it), so user ids that differ only in case or trailing spaces are different users and
//! 4-byte characters are stored; tables an earlier version made are converted by a
//! migration; and a value a column cannot take (MySQL errors 1366, 1265) is dead-lettered,
//! not retried for ever as if the database were down.

#[macro_use]
mod support;

use std::time::Duration;

use sqlx::Executor;
use support::*;
use terra_schema::SqlTarget;

const T0: i64 = 1_780_000_000;
/// A user id of 4-byte characters only a utf8mb4 column holds.
const EMOJI_USER: &str = "\u{1F600}-user-\u{1F9EA}";
/// Collations that compare utf8mb4 byte for byte, trailing spaces included (MariaDB, MySQL 8).
const NOPAD_BINARY: [&str; 2] = ["utf8mb4_nopad_bin", "utf8mb4_0900_bin"];

/// A fresh database; on MySQL one whose default character set is `latin1`.
async fn fresh(dialect: Dialect) -> TestDb {
    match dialect {
        Dialect::MySql => TestDb::mysql_with("CHARACTER SET latin1").await,
        _ => TestDb::new(dialect).await,
    }
}

/// A sleep webhook of `user_id` with one record.
fn sleep_of(user_id: &str, provider: &str, reference_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "sleep",
        "version": "2022-03-16",
        "user": {"user_id": user_id, "provider": provider, "reference_id": reference_id},
        "data": [{"metadata": {"summary_id": "s-1", "start_time": "2026-10-03T23:12:00.000000+02:00", "end_time": "2026-10-04T07:02:00.000000+02:00"}}],
    }))
    .unwrap()
}

/// A deauth webhook of `user_id`.
fn deauth_of(user_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "deauth",
        "status": "success",
        "version": "2022-03-16",
        "user": {"user_id": user_id, "provider": "OURA", "reference_id": user_id},
    }))
    .unwrap()
}

/// Projects to the end of the log, failing (instead of waiting for ever) when the projector
/// takes a refusal for an outage and retries it.
async fn project_within(
    log: &TestLog,
    target: &SqlTarget,
    secs: u64,
) -> terra_projector::WriteStats {
    tokio::time::timeout(
        Duration::from_secs(secs),
        project(&log.log, target, "sql", 10),
    )
    .await
    .expect("the projector reached the end of the log: a refused record was retried as an outage")
}

/// `(table, collation)` of every base table, and `(table.column, charset, collation)` of
/// every text column, in the current database.
async fn mysql_collations(
    target: &SqlTarget,
) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let tables = rows(
        target,
        "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
    )
    .await;
    let columns = rows(
        target,
        "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME), CHARACTER_SET_NAME, COLLATION_NAME \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND CHARACTER_SET_NAME IS NOT NULL ORDER BY TABLE_NAME, COLUMN_NAME",
    )
    .await;
    (tables, columns)
}

fn assert_all_utf8mb4_nopad_binary(
    tables: &[Vec<Option<String>>],
    columns: &[Vec<Option<String>>],
) {
    assert_eq!(
        tables.len(),
        terra_schema::tables::TABLES.len(),
        "{tables:?}"
    );
    for table in tables {
        let collation = table[1].as_deref().unwrap_or_default();
        assert!(NOPAD_BINARY.contains(&collation), "{table:?}");
    }
    assert!(columns.len() > 20, "{columns:?}");
    for column in columns {
        assert_eq!(column[1].as_deref(), Some("utf8mb4"), "{column:?}");
        let collation = column[2].as_deref().unwrap_or_default();
        assert!(NOPAD_BINARY.contains(&collation), "{column:?}");
    }
}

#[tokio::test]
async fn mysql_tables_are_utf8mb4_nopad_binary_on_a_latin1_database() {
    let db = fresh(Dialect::MySql).await;
    let target = db.target().await;
    let default = rows(
        &target,
        "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()",
    )
    .await;
    assert_eq!(default, vec![vec![Some("latin1".to_owned())]]);
    let (tables, columns) = mysql_collations(&target).await;
    assert_all_utf8mb4_nopad_binary(&tables, &columns);
    target.close().await;
    db.drop_now().await;
}

/// Tables an earlier version made in the database's character set: `project sql` sees the
/// migration pending (and refuses to start without `--migrate`), and the migration converts
/// them, rows included.
#[tokio::test]
async fn mysql_tables_of_an_earlier_version_in_latin1_are_converted_by_the_migration() {
    let db = fresh(Dialect::MySql).await;
    let target = db.target().await;
    let log = TestLog::new();
    log.append(vec![record(
        &sleep_of("caf\u{e9}-user", "OURA", "r\u{e9}f"),
        Some(T0 * 1000),
        T0,
        None,
    )])
    .await;
    project_within(&log, &target, 30).await;
    // as the tables were before the conversion existed (the table of a later migration
    // did not exist then)
    for base in terra_schema::tables::TABLES
        .iter()
        .filter(|b| **b != terra_schema::tables::INGEST_MISC_WITHOUT_USER)
    {
        target
            .pool()
            .execute(
                format!(
                    "ALTER TABLE {} CONVERT TO CHARACTER SET latin1 COLLATE latin1_swedish_ci",
                    target.table(base)
                )
                .as_str(),
            )
            .await
            .unwrap();
    }
    target
        .pool()
        .execute(
            format!(
                "DELETE FROM {} WHERE name = 'utf8mb4_binary'",
                target.table("ingest_migrations")
            )
            .as_str(),
        )
        .await
        .unwrap();
    assert_eq!(
        terra_schema::pending(&target).await.unwrap(),
        vec!["20261125000100_utf8mb4_binary".to_owned()]
    );
    let report = terra_schema::migrate(&target).await.unwrap();
    assert_eq!(
        report.applied,
        vec!["20261125000100_utf8mb4_binary".to_owned()]
    );
    let (tables, columns) = mysql_collations(&target).await;
    assert_all_utf8mb4_nopad_binary(&tables, &columns);
    assert_eq!(
        rows(
            &target,
            &format!(
                "SELECT user_id, reference_id FROM {}",
                target.table("terra_users")
            )
        )
        .await,
        vec![vec![
            Some("caf\u{e9}-user".to_owned()),
            Some("r\u{e9}f".to_owned())
        ]]
    );
    target.close().await;
    db.drop_now().await;
}

/// "abc", "ABC" and "abc " are three users (a case-insensitive or PAD SPACE collation would
/// merge them, and the deauth of one would move another's state), and a user id of 4-byte
/// characters is stored and read back as it came.
async fn user_ids_differing_in_case_or_trailing_spaces_are_different_users_and_emoji_round_trip(
    dialect: Dialect,
) {
    let db = fresh(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let users = ["abc", "ABC", "abc ", EMOJI_USER];
    let mut records: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            record(
                &sleep_of(user, "OURA", user),
                Some((T0 + i as i64) * 1000),
                T0,
                None,
            )
        })
        .collect();
    records.push(record(&deauth_of("abc "), Some((T0 + 10) * 1000), T0, None));
    log.append(records).await;
    let stats = project_within(&log, &target, 30).await;
    assert_eq!((stats.records, stats.dead), (5, 0));

    let mut stored = rows(
        &target,
        &format!(
            "SELECT user_id, reference_id, state FROM {}",
            target.table("terra_users")
        ),
    )
    .await;
    stored.sort();
    let mut expected: Vec<Vec<Option<String>>> = users
        .iter()
        .map(|user| {
            let state = if *user == "abc " { "deauth" } else { "active" };
            vec![
                Some((*user).to_owned()),
                Some((*user).to_owned()),
                Some(state.to_owned()),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    for table in ["ingest_users", "terra_data_payloads"] {
        assert_eq!(count(&target, table).await, 4, "{table}");
    }
    // looked up by its exact bytes, the emoji user is one row
    let mut lookup = target.statement(format!(
        "SELECT user_id FROM {} WHERE user_id = ",
        target.table("terra_users")
    ));
    lookup.bind(EMOJI_USER);
    let found = terra_schema::read::fetch(&target, &lookup).await.unwrap();
    assert_eq!(found.len(), 1);
    target.close().await;
    db.drop_now().await;
}

on_every_dialect!(
    user_ids_differing_in_case_or_trailing_spaces_are_different_users_and_emoji_round_trip
);

/// Alters one column of `terra_users` and projects a record it refuses beside one it takes:
/// the refused one is dead-lettered with the MySQL error number in its reason, the other
/// written, and the projector reaches the end of the log.
async fn refused_by_an_altered_column_is_dead_lettered(alter: &str, refused: Vec<u8>, error: &str) {
    let db = fresh(Dialect::MySql).await;
    let target = db.target().await;
    target
        .pool()
        .execute(format!("ALTER TABLE {} {alter}", target.table("terra_users")).as_str())
        .await
        .unwrap();
    let log = TestLog::new();
    log.append(vec![
        record(&refused, Some(T0 * 1000), T0, None),
        record(&sleep_of("taken", "OURA", "ref"), Some(T0 * 1000), T0, None),
    ])
    .await;
    let stats = project_within(&log, &target, 30).await;
    assert_eq!((stats.records, stats.dead), (2, 1));
    let dead = rows(
        &target,
        &format!("SELECT reason FROM {}", target.table("ingest_dead_letters")),
    )
    .await;
    let reason = dead[0][0].as_deref().unwrap();
    assert!(reason.starts_with("rejected by the sink"), "{reason}");
    assert!(reason.contains(error), "{reason}");
    assert_eq!(
        rows(
            &target,
            &format!("SELECT user_id FROM {}", target.table("terra_users"))
        )
        .await,
        vec![vec![Some("taken".to_owned())]]
    );
    target.close().await;
    db.drop_now().await;
}

/// MySQL 1265 `Data truncated` (SQLSTATE 01000): here a provider an ENUM column a DBA
/// narrowed does not list.
#[tokio::test]
async fn mysql_data_truncated_1265_is_dead_lettered_not_retried() {
    refused_by_an_altered_column_is_dead_lettered(
        "MODIFY provider ENUM('OURA', 'FITBIT') NOT NULL",
        sleep_of("refused", "GARMIN", "ref"),
        "mysql error 1265",
    )
    .await;
}

/// MySQL 1366 `Incorrect string value` (SQLSTATE HY000 on MySQL, 22007 on MariaDB): a 4-byte
/// character for a column left in latin1.
#[tokio::test]
async fn mysql_incorrect_string_value_1366_is_dead_lettered_not_retried() {
    refused_by_an_altered_column_is_dead_lettered(
        "MODIFY reference_id TEXT CHARACTER SET latin1 NULL",
        sleep_of("refused", "OURA", EMOJI_USER),
        "mysql error 1366",
    )
    .await;
}
