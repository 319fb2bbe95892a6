//! Operating the SQL projection, against real Postgres, MariaDB and SQLite: a rebuild into
//! fresh tables swapped in, Terra's Supabase variant, projecting from a Kafka log (mock
//! cluster, and a real broker when one is running), and settings errors.

#[macro_use]
mod support;

use std::collections::BTreeMap;

use sqlx::Executor;
use support::*;
use terra_projector::ProjectorMetrics;
use terra_projector::RebuildOptions;
use terra_schema::{Dialect, Variant};
use terra_sink_sql::SqlSink;

const T0: i64 = 1_780_000_000;

on_every_dialect!(rebuild_equals_the_live_tables);

async fn rebuild_equals_the_live_tables(dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let log = TestLog::new();
    let mut records: Vec<_> = all_fixtures()
        .iter()
        .enumerate()
        .map(|(i, (_, body))| record(body, Some((T0 + i as i64) * 1000), T0, None))
        .collect();
    records.push(record(b"not json", None, T0, None));
    records.push(record(&fixture("sleep"), Some(T0 * 1000 - 1), T0, None));
    log.append(records).await;
    project(&log.log, &target, "sql", 4).await;
    let live = snapshot(&target).await;
    let rx = terra_projector::CancellationToken::new();
    let options = RebuildOptions {
        batch_size: 3,
        keep_old: true,
        show_progress: false,
    };
    let report = terra_projector::rebuild(
        &SqlSink::new(target.clone()),
        &log.log,
        &options,
        &ProjectorMetrics::unregistered(),
        rx,
    )
    .await
    .unwrap();
    assert_eq!(report.records, all_fixtures().len() + 2);
    assert_eq!(
        snapshot(&target).await,
        live,
        "the rebuilt tables equal the live ones"
    );
    let old = target
        .with_prefix(report.kept_old_prefix.as_deref().unwrap())
        .unwrap();
    assert_eq!(
        snapshot(&old).await,
        live,
        "the replaced tables were kept as asked"
    );
    // the view follows the swap
    assert_eq!(
        count(&target, "terra_other_payloads").await,
        count(&target, "terra_misc_payloads").await
    );
    // and the projector goes on writing into the swapped-in tables
    log.append(vec![record(
        &fixture("body"),
        Some(T0 * 1000 + 99_000),
        T0,
        None,
    )])
    .await;
    let stats = project(&log.log, &target, "sql", 4).await;
    assert_eq!(stats.records, 1);
    // a second rebuild drops what it replaces
    let rx = terra_projector::CancellationToken::new();
    let options = RebuildOptions {
        batch_size: 100,
        keep_old: false,
        show_progress: false,
    };
    let again = terra_projector::rebuild(
        &SqlSink::new(target.clone()),
        &log.log,
        &options,
        &ProjectorMetrics::unregistered(),
        rx,
    )
    .await
    .unwrap();
    assert!(again.kept_old_prefix.is_none());
    let positions: BTreeMap<u32, u64> = terra_schema::positions::stored(&target).await.unwrap();
    assert_eq!(
        positions.values().sum::<u64>() as usize,
        all_fixtures().len() + 3
    );
    db.drop_now().await;
}

#[tokio::test]
async fn supabase_tables_are_typed_with_cascading_foreign_keys() {
    let db = TestDb::new(Dialect::Postgres).await;
    let target = db.target_with(Variant::Supabase).await;
    let log = TestLog::new();
    let records = all_fixtures()
        .iter()
        .map(|(_, body)| record(body, Some(T0 * 1000), T0, None))
        .collect();
    log.append(records).await;
    let stats = project(&log.log, &target, "sql", 6).await;
    assert_eq!(stats.dead, 0);
    let types = rows(&target, "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns WHERE table_schema = 'terra' AND table_name = 'terra_data_payloads' ORDER BY column_name").await;
    assert!(
        types.contains(&vec![
            Some("start_time".into()),
            Some("timestamp with time zone".into())
        ]),
        "{types:?}"
    );
    assert!(count(&target, "terra_data_payloads").await > 0);
    // deleting a user cascades to their payloads
    let user = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
    target
        .pool()
        .execute(
            format!(
                "DELETE FROM {} WHERE user_id = '{user}'",
                target.table("terra_users")
            )
            .as_str(),
        )
        .await
        .unwrap();
    let left = rows(
        &target,
        &format!(
            "SELECT COUNT(*) FROM {} WHERE user_id = '{user}'",
            target.table("terra_data_payloads")
        ),
    )
    .await;
    assert_eq!(left[0][0].as_deref(), Some("0"));
    // the plain tables refuse to be migrated as Supabase ones, and the reverse
    let mut config = db.config();
    config.variant = Variant::Terra;
    let other = terra_schema::SqlTarget::connect(&config).unwrap();
    let refused = terra_schema::migrate(&other).await.unwrap_err().to_string();
    assert!(refused.contains("supabase"), "{refused}");
    db.drop_now().await;
}

/// The same projection from a Kafka-protocol log (librdkafka's in-process mock cluster): the
/// projector seeks the consumer group to the database's positions there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_from_a_kafka_log_and_resumes_from_the_database_positions() {
    projects_from_kafka(
        "kafka-mock://terra-events?partitions=3".to_owned(),
        Dialect::Sqlite,
    )
    .await;
}

/// The same on a real Kafka-protocol broker (tansu, started by tests/run-all.sh), into Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
async fn kafka_broker_projects_and_resumes_from_the_database_positions() {
    let bootstrap = std::env::var("TERRA_TEST_KAFKA_BOOTSTRAP")
        .expect("TERRA_TEST_KAFKA_BOOTSTRAP (tests/run-all.sh starts tansu)");
    let topic = format!("sql-{}", uuid::Uuid::new_v4().simple());
    projects_from_kafka(
        format!("kafka://{bootstrap}/{topic}?partitions=3"),
        Dialect::Postgres,
    )
    .await;
}

async fn projects_from_kafka(log_url: String, dialect: Dialect) {
    let db = TestDb::new(dialect).await;
    let target = db.target().await;
    let url = terra_eventlog::LogUrl::parse(&log_url, std::path::Path::new(".")).unwrap();
    let log = terra_eventlog::EventLog::open(&url, &[]).await.unwrap();
    let fixtures = all_fixtures();
    let half = fixtures.len() / 2;
    let records: Vec<_> = fixtures
        .iter()
        .map(|(_, b)| record(b, Some(T0 * 1000), T0, None))
        .collect();
    log.append(records[..half].to_vec()).await.unwrap();
    let ends = log.end_offsets().await.unwrap();
    let stats = project(&log, &target, "sql", 4).await;
    assert_eq!(
        stats.records, half,
        "first half: {stats:?}, log ends {ends:?}"
    );
    let before = snapshot(&target).await;
    log.append(records[half..].to_vec()).await.unwrap();
    // a group with no commits at all still starts where the database ends
    let stored = terra_schema::positions::stored(&target).await.unwrap();
    let ends = log.end_offsets().await.unwrap();
    let stats = project(&log, &target, "sql-other", 4).await;
    let context = format!("second half: {stats:?}, stored {stored:?}, log ends {ends:?}");
    assert_eq!(stats.records, fixtures.len() - half, "{context}");
    assert_eq!(stats.replayed, 0, "{context}");
    let after = snapshot(&target).await;
    assert!(after[1].len() >= before[1].len(), "{context}");
    let positions = terra_schema::positions::stored(&target).await.unwrap();
    assert_eq!(
        positions.values().sum::<u64>() as usize,
        fixtures.len(),
        "{context}, stored after {positions:?}"
    );
    db.drop_now().await;
}

#[tokio::test]
async fn bad_settings_are_named() {
    let err = terra_schema::SqlTarget::connect(&terra_schema::SqlConfig::new(
        "oracle://scott:tiger@h/db",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("oracle") && !err.contains("tiger"), "{err}");
    let mut config = terra_schema::SqlConfig::new("mysql://root@127.0.0.1/x");
    config.variant = Variant::Supabase;
    let err = terra_schema::SqlTarget::connect(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Postgres"), "{err}");
    let mut config = terra_schema::SqlConfig::new("postgres://h/db");
    config.schema = "bad;name".into();
    let err = terra_schema::SqlTarget::connect(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("schema"), "{err}");
}
