//! Outage versus poison against a real Postgres server that the test stops and restarts: a
//! private cluster (initdb + pg_ctl from the machine's PostgreSQL install) on a free port, so
//! stopping it disturbs no other test.

mod support;

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use support::*;
use terra_projector::CancellationToken;
use terra_projector::{Backoff, ProjectorConfig, ProjectorMetrics};
use terra_schema::{SqlConfig, SqlTarget};
use terra_sink_sql::SqlSink;
use terra_testkit::PrivatePostgres;

fn metric(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_database_outage_pauses_the_projector_and_skips_nothing_while_poison_is_dead_lettered() {
    let pg = PrivatePostgres::start();
    let target = SqlTarget::connect(&SqlConfig::new(pg.url())).unwrap();
    terra_schema::migrate(&target).await.unwrap();
    let log = TestLog::new();
    let fixtures = all_fixtures();
    let first: Vec<_> = fixtures
        .iter()
        .map(|(_, b)| record(b, Some(1_000), 1, None))
        .collect();
    let first_len = first.len();
    log.append(first).await;

    let mut registry = Registry::default();
    let metrics = ProjectorMetrics::register(&mut registry);
    let mut config = ProjectorConfig::new("sql");
    config.batch_size = 5;
    config.batch_wait = Duration::from_millis(20);
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let projector = {
        let log = log.log.clone();
        let target = target.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut sink = SqlSink::new(target);
            terra_projector::run(&config, &log, &mut sink, &metrics, stopped, |_| {}).await
        })
    };
    let projected = |target: SqlTarget| async move {
        terra_schema::positions::stored(&target)
            .await
            .map(|p| p.values().sum::<u64>())
            .unwrap_or(0)
    };
    wait_for("the first records", Duration::from_secs(20), async || {
        projected(target.clone()).await == first_len as u64
    })
    .await;

    // the database goes away; deliveries keep arriving, one of them poison
    pg.down();
    let mut during: Vec<_> = fixtures
        .iter()
        .map(|(_, b)| record(b, Some(2_000), 2, None))
        .collect();
    during.insert(3, record(b"\x00 not json at all", None, 2, None));
    let during_len = during.len();
    log.append(during).await;
    wait_for(
        "sink errors while the database is down",
        Duration::from_secs(20),
        async || metric(&registry, "projector_sink_errors") >= 2.0,
    )
    .await;
    assert!(
        !projector.is_finished(),
        "an outage must not stop the projector"
    );

    pg.up();
    let total = (first_len + during_len) as u64;
    wait_for(
        "the projector to catch up after the outage",
        Duration::from_secs(60),
        async || projected(target.clone()).await == total,
    )
    .await;
    assert_eq!(
        count(&target, "ingest_dead_letters").await,
        1,
        "only the poison record is dead-lettered"
    );
    let data_records: usize = fixtures
        .iter()
        .map(|(_, b)| terra_core::classify(b).unwrap().records.len())
        .sum();
    assert_eq!(
        count(&target, "ingest_payloads").await as usize,
        data_records
            + fixtures
                .iter()
                .filter(|(_, b)| {
                    let c = terra_core::classify(b).unwrap();
                    // one payload per event, lab reports too (report-scoped)
                    c.group != terra_core::EventGroup::Data
                        || terra_core::is_report_scoped(&c.event_type)
                })
                .count(),
        "each event once: the second copies repeat the same bytes (the same events)"
    );
    assert!(metric(&registry, "projector_dead_lettered") >= 1.0);

    stop.cancel();
    let totals = tokio::time::timeout(Duration::from_secs(10), projector)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        totals.records as u64, total,
        "every record was projected exactly once"
    );
}
