//! Database error texts never carry row values into logs or dead-letter reasons: real
//! errors from the machine's Postgres and MariaDB (whose messages quote the value) go
//! through `describe_error`, which keeps the wording, the codes and the names, and a record
//! the database refuses is dead-lettered with a reason that names no value.

#[macro_use]
mod support;

use sqlx::Executor;
use support::*;
use terra_schema::{Dialect, SqlTarget, Variant, describe_error};

const T0: i64 = 1_780_000_000;
/// In every value a statement sends, so a leak is found whatever part of it leaked.
const MARK: &str = "S3CR3T";

/// Runs `sql` (expected to fail) and returns the raw error text and the described one.
async fn refusal(target: &SqlTarget, sql: &str) -> (String, String) {
    let err = target
        .pool()
        .execute(sql)
        .await
        .expect_err("the database refuses it");
    let raw = match &err {
        sqlx::Error::Database(db) => format!("{} {:?}", db.message(), db),
        other => other.to_string(),
    };
    (raw, describe_error(&err))
}

fn check(raw: &str, described: &str, code: &str, names: &[&str], raw_quotes_value: bool) {
    assert!(!described.contains(MARK), "a value leaked: {described}");
    assert!(
        !described.contains("\\x"),
        "value bytes leaked: {described}"
    );
    assert!(described.contains(&format!("code {code}")), "{described}");
    for name in names {
        assert!(described.contains(name), "{name} missing: {described}");
    }
    if raw_quotes_value {
        // the driver's own text quotes the value: this is what redaction is for
        assert!(
            raw.contains(MARK) || raw.contains("\\x") || raw.contains("0xf0"),
            "{raw}"
        );
    }
}

#[tokio::test]
async fn postgres_error_texts_keep_the_code_and_drop_the_value() {
    let db = TestDb::new(Dialect::Postgres).await;
    let target = db.target().await;
    target
        .pool()
        .execute("CREATE TABLE t (id VARCHAR(36) PRIMARY KEY, short VARCHAR(4), at TIMESTAMPTZ)")
        .await
        .unwrap();
    target
        .pool()
        .execute(format!("INSERT INTO t (id) VALUES ('{MARK}-1')").as_str())
        .await
        .unwrap();
    // duplicate key: the value is in the DETAIL (Key (id)=(S3CR3T-1) already exists)
    let (raw, described) =
        refusal(&target, &format!("INSERT INTO t (id) VALUES ('{MARK}-1')")).await;
    check(
        &raw,
        &described,
        "23505",
        &["constraint t_pkey", "table t"],
        true,
    );
    assert!(described.starts_with("duplicate key value violates unique constraint"));
    // a type mismatch: the column's name (double-quoted by Postgres) is kept, the value not
    let (raw, described) = refusal(
        &target,
        &format!("INSERT INTO t (id, at) SELECT 'w', '{MARK}-text'::text"),
    )
    .await;
    check(
        &raw,
        &described,
        "42804",
        &["column at is of type timestamp with time zone but expression is of type text"],
        false,
    );
    // a bad timestamp: the message quotes it
    let (raw, described) = refusal(
        &target,
        &format!("INSERT INTO t (id, at) VALUES ('x', '{MARK}-not-a-time')"),
    )
    .await;
    check(
        &raw,
        &described,
        "22007",
        &["invalid input syntax for type timestamp"],
        true,
    );
    // invalid UTF-8: the message quotes the bytes
    let (raw, described) =
        refusal(&target, "SELECT convert_from('\\xf028a1'::bytea, 'UTF8')").await;
    check(&raw, &described, "22021", &["invalid byte sequence"], true);
    assert!(!described.contains("0xf0"), "{described}");
    // too long: the message names the type, not the value
    let (raw, described) = refusal(
        &target,
        &format!("INSERT INTO t (id, short) VALUES ('y', '{MARK}-long')"),
    )
    .await;
    check(
        &raw,
        &described,
        "22001",
        &["value too long for type character varying(4)"],
        false,
    );
    target.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn mariadb_error_texts_keep_the_code_and_drop_the_value() {
    let db = TestDb::new(Dialect::MySql).await;
    let target = db.target().await;
    target
        .pool()
        .execute(
            "CREATE TABLE t (id VARCHAR(36) PRIMARY KEY, short VARCHAR(4), at DATETIME, \
             narrow VARCHAR(20) CHARACTER SET utf8mb3) DEFAULT CHARSET = utf8mb4",
        )
        .await
        .unwrap();
    target
        .pool()
        .execute(format!("INSERT INTO t (id) VALUES ('{MARK}-1')").as_str())
        .await
        .unwrap();
    // Duplicate entry 'S3CR3T-1' for key 'PRIMARY'
    let (raw, described) =
        refusal(&target, &format!("INSERT INTO t (id) VALUES ('{MARK}-1')")).await;
    check(
        &raw,
        &described,
        "23000",
        &["mysql error 1062", "constraint PRIMARY"],
        true,
    );
    assert!(described.starts_with("Duplicate entry"), "{described}");
    // Incorrect string value: '\xF0\x9F\x98\x80...' for column `db`.`t`.`narrow` at row 1
    let (raw, described) = refusal(
        &target,
        &format!("INSERT INTO t (id, narrow) VALUES ('z', '\u{1F600}{MARK}')"),
    )
    .await;
    check(
        &raw,
        &described,
        "22007",
        &[
            "Incorrect string value",
            "mysql error 1366",
            "column narrow",
        ],
        true,
    );
    // Incorrect datetime value: 'S3CR3T-not-a-time' for column `db`.`t`.`at` at row 1
    let (raw, described) = refusal(
        &target,
        &format!("INSERT INTO t (id, at) VALUES ('w', '{MARK}-not-a-time')"),
    )
    .await;
    check(
        &raw,
        &described,
        "22007",
        &["mysql error 1292", "column at"],
        true,
    );
    // Data too long for column 'short' at row 1 (no value in it; the column is kept)
    let (raw, described) = refusal(
        &target,
        &format!("INSERT INTO t (id, short) VALUES ('v', '{MARK}-long')"),
    )
    .await;
    check(
        &raw,
        &described,
        "22001",
        &[
            "Data too long for column",
            "mysql error 1406",
            "column short",
        ],
        false,
    );
    target.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_record_the_database_refuses_is_dead_lettered_without_its_values() {
    // Terra's Supabase tables type start_time as TIMESTAMPTZ: a start time that is no time
    // passes planning and is refused by Postgres, whose message quotes it
    let db = TestDb::new(Dialect::Postgres).await;
    let target = db.target_with(Variant::Supabase).await;
    let log = TestLog::new();
    let refused = format!(
        r#"{{"type": "sleep", "version": "2022-03-16", "user": {{"user_id": "u-1", "provider": "OURA"}}, "data": [{{"metadata": {{"summary_id": "s", "start_time": "{MARK}-not-a-time", "end_time": "{MARK}-end"}}}}]}}"#
    );
    log.append(vec![
        record(refused.as_bytes(), Some(T0 * 1000), T0, None),
        record(&fixture("daily"), Some(T0 * 1000), T0, None),
    ])
    .await;
    let stats = project(&log.log, &target, "sql", 10).await;
    assert_eq!(stats.dead, 1);
    let dead = rows(
        &target,
        &format!("SELECT reason FROM {}", target.table("ingest_dead_letters")),
    )
    .await;
    let reason = dead[0][0].as_deref().unwrap();
    assert!(reason.starts_with("rejected by the sink"), "{reason}");
    assert!(reason.contains("code 22007"), "{reason}");
    assert!(
        !reason.contains(MARK),
        "a value leaked into the reason: {reason}"
    );
    target.close().await;
    db.drop_now().await;
}
