//! The shared live tail through real clients: fifty watchers on one poller (the database's
//! query rate measured), a watcher that falls behind the broadcast catching up with no gap
//! and no duplicate, live tails ending at shutdown.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::*;
use terra_query::QueryServerConfig;
use terra_query::proto::WatchPayloadsRequest;
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_schema::Dialect;
use tonic::transport::Channel;

/// The sleep fixture for another user: each call gives payloads no other call gives.
fn sleep_of_new_user() -> Vec<u8> {
    let all = fixtures();
    let body = String::from_utf8(fixture_named(&all, "sleep")).unwrap();
    body.replace(USER, &uuid::Uuid::new_v4().to_string())
        .into_bytes()
}

/// Transactions committed in the test's Postgres database so far (every query of the
/// service's reader is one).
async fn commits(admin: &sqlx::PgPool, db: &str) -> i64 {
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(db)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Queries per second over `window`: as the database counts them (transactions committed),
/// and as the service counts its live-tail queries.
async fn rate(e: &Env, admin: &sqlx::PgPool, db: &str, window: Duration) -> (f64, f64) {
    let tail = |e: &Env| {
        let stats = e.query.tail_stats();
        stats.poll_queries + stats.catch_up_queries
    };
    let (before, tail_before) = (commits(admin, db).await, tail(e));
    tokio::time::sleep(window).await;
    let tail_after = tail(e);
    // Postgres publishes a backend's counts at most once a second
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = commits(admin, db).await;
    let secs = window.as_secs_f64();
    (
        (after - before) as f64 / (secs + 1.1),
        (tail_after - tail_before) as f64 / secs,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fifty_watchers_share_one_poller_and_the_database_load_stays_flat() {
    let e = env(Dialect::Postgres, QueryServerConfig::default()).await;
    e.feed(vec![record(&sleep_of_new_user(), T0 * 1000)]).await;
    let (admin, name) = e.db.clone().unwrap();
    let admin = sqlx::PgPool::connect(&admin).await.unwrap();
    let window = Duration::from_secs(3);
    let idle = rate(&e, &admin, &name, window).await;

    let watch = || {
        let mut client = e.client.clone();
        async move {
            client
                .watch_payloads(WatchPayloadsRequest::default())
                .await
                .unwrap()
                .into_inner()
        }
    };
    // each watcher catches up once when it starts; what counts is the steady rate after
    let settle = Duration::from_millis(2500);
    let mut watchers = vec![watch().await];
    tokio::time::sleep(settle).await;
    let one = rate(&e, &admin, &name, window).await;
    for _ in 1..50 {
        watchers.push(watch().await);
    }
    tokio::time::sleep(settle).await;
    let fifty = rate(&e, &admin, &name, window).await;
    eprintln!(
        "queries per second (database / live tail): no watcher {:.1} / {:.1}, 1 watcher {:.1} / {:.1}, 50 watchers {:.1} / {:.1}",
        idle.0, idle.1, one.0, one.1, fifty.0, fifty.1
    );
    let stats = e.query.tail_stats();
    assert_eq!(stats.pollers_started, 1, "{stats:?}");
    assert!(stats.polling && stats.watchers == 50, "{stats:?}");
    // one poller: a query of the positions every 200 ms, whatever the number of watchers
    assert!(
        fifty.1 <= 6.0 && fifty.1 <= one.1 + 1.0,
        "50 watchers must not cost 50 pollers: {one:?}/s with one, {fifty:?}/s with fifty"
    );
    // as the database sees it (its counts lag, so the bound is loose; 50 pollers were ~1000/s)
    assert!(
        fifty.0 < one.0 * 3.0 + 10.0,
        "50 watchers must not cost 50 pollers: {one:?}/s with one, {fifty:?}/s with fifty"
    );

    // and every watcher sees each new payload once
    let body = sleep_of_new_user();
    let expected = payload_count(&body);
    e.feed(vec![record(&body, T0 * 1000)]).await;
    for watcher in &mut watchers {
        let mut seen = BTreeSet::new();
        while seen.len() < expected {
            let event = tokio::time::timeout(Duration::from_secs(10), watcher.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(
                seen.insert(event.payload.unwrap().payload_id),
                "no duplicate"
            );
        }
    }
    drop(watchers);
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.query.tail_stats().polling {
        assert!(
            Instant::now() < deadline,
            "the poller stops with the last watcher"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = rate(&e, &admin, &name, window).await;
    eprintln!("queries per second after every watcher left: {gone:?}");
    assert_eq!(gone.1, 0.0);
    admin.close().await;
    e.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_a_watcher_that_falls_behind_catches_up_without_gap_or_duplicate() {
    let e = env_with(Dialect::Sqlite, QueryServerConfig::default(), |q| {
        q.with_tail_buffer(4)
    })
    .await;
    // a client with a tiny HTTP/2 window, which reads nothing for a while
    let slow_channel = Channel::from_shared(format!("http://{}", e.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024 * 64))
        .connect()
        .await
        .unwrap();
    let mut slow = QueryServiceClient::new(slow_channel)
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut fast = e
        .client
        .clone()
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rounds: Vec<Vec<Vec<u8>>> = (0..4)
        .map(|_| (0..40).map(|_| sleep_of_new_user()).collect())
        .collect();
    let expected: usize = rounds.iter().flatten().map(|b| payload_count(b)).sum();
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < expected {
            let event = tokio::time::timeout(Duration::from_secs(10), fast.next())
                .await
                .expect("the fast watcher gets everything")
                .unwrap()
                .unwrap();
            seen.push(event.payload.unwrap().payload_id);
        }
        seen
    });
    for (round, bodies) in rounds.iter().enumerate() {
        e.feed(
            bodies
                .iter()
                .map(|b| record(b, T0 * 1000 + round as i64))
                .collect(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < expected {
        let event = tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .expect("the slow watcher gets everything")
            .unwrap()
            .unwrap();
        seen.push(event.payload.unwrap().payload_id);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(700), slow.next())
            .await
            .is_err(),
        "nothing more"
    );
    let unique: BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicate");
    let fast_seen = fast_reader.await.unwrap();
    assert_eq!(fast_seen.len(), expected, "the fast watcher too");
    let fast_unique: BTreeSet<_> = fast_seen.iter().collect();
    assert_eq!(
        unique, fast_unique,
        "both saw the same payloads, none missing"
    );
    let stats = e.query.tail_stats();
    assert!(stats.lagged >= 1, "the slow watcher fell behind: {stats:?}");
    assert_eq!(stats.pollers_started, 1, "{stats:?}");
    e.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_live_tails_end_at_shutdown() {
    let e = env(Dialect::Sqlite, QueryServerConfig::default()).await;
    let mut watch = e
        .client
        .clone()
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    e.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the live tail ends at shutdown");
    assert!(ended.as_ref().is_none_or(|r| r.is_err()), "{ended:?}");
    e.done().await;
}
