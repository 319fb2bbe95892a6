//! Test support: real HTTP receivers on loopback that check Terra's signature, the webhook
//! destination (fan-out and dispatcher) run over a fresh database per test and an embedded
//! log, and waits on the deliveries' states.

#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

pub mod receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::{Executor, Row};
use terra_eventlog::EventLog;
use terra_projector::{CancellationToken, ProjectorConfig, ProjectorMetrics};
pub use terra_schema::Dialect;
use terra_schema::{SqlTarget, TableSet};
use terra_sink_webhooks::address::AddressPolicy;
use terra_sink_webhooks::send::Sender;
use terra_sink_webhooks::store::text;
use terra_sink_webhooks::{
    Endpoint, FanOutSink, Filter, Ordering, Schedule, Shared, SignatureMode, WebhookMetrics,
    WebhookSettings,
};
use tokio::task::JoinHandle;

pub use terra_testkit::{TestDb, TestLog, fixture, record};

/// Runs each named `async fn(Dialect)` as a test on Postgres, MySQL and SQLite.
macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

pub const SECRET: &str = "whsec-test-secret-for-endpoints";

/// An endpoint to `url` with the test secret, a millisecond schedule and no jitter.
pub fn endpoint(name: &str, url: &str) -> Endpoint {
    Endpoint {
        name: name.to_owned(),
        url: url::Url::parse(url).expect("a URL"),
        secrets: vec![SecretString::from(SECRET)],
        signature: SignatureMode::Terra,
        filter: Filter::default(),
        headers: Vec::new(),
        timeout: Duration::from_secs(2),
        schedule: Schedule::new(vec![Duration::ZERO; 3]).expect("a schedule"),
        ordering: Ordering::Unordered,
        max_in_flight: 8,
    }
}

/// An endpoint at a loopback port that was free, where nothing listens yet (start a
/// receiver there with `Receiver::start_on`), whose 50 attempts are 20 ms apart.
pub async fn closed_endpoint(name: &str) -> (Endpoint, std::net::SocketAddr) {
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let mut e = endpoint(name, &format!("http://{addr}/hook"));
    e.schedule = Schedule::new(vec![Duration::from_millis(20); 50]).expect("schedule");
    (e, addr)
}

/// Settings for tests: loopback allowed, fast polls, no jitter.
pub fn settings(endpoints: Vec<Endpoint>) -> WebhookSettings {
    WebhookSettings {
        endpoints,
        allow_cidrs: vec!["127.0.0.0/8".parse().expect("a CIDR")],
        poll_interval: Duration::from_millis(20),
        probe_interval: Duration::from_millis(300),
        unreachable_wait: Duration::from_millis(100),
        unreachable_wait_max: Duration::from_millis(400),
        jitter: 0.0,
        ..WebhookSettings::default()
    }
}

/// A fresh database with the webhook tables.
pub async fn database(dialect: Dialect) -> (TestDb, SqlTarget) {
    let db = TestDb::new(dialect).await;
    let target = SqlTarget::connect(&db.config()).expect("a SQL config");
    terra_schema::migrate_set(&target, TableSet::Webhooks)
        .await
        .expect("webhook migrations");
    (db, target)
}

/// The destination running (fan-out and dispatcher) until [`Running::stop`].
pub struct Running {
    pub shutdown: CancellationToken,
    fan_out: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
}

impl Running {
    /// Neither the fan-out nor the dispatcher has ended (an error ends them with a panic).
    pub fn is_running(&self) -> bool {
        !self.fan_out.is_finished() && !self.dispatcher.is_finished()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.fan_out.await;
        let _ = self.dispatcher.await;
    }
}

pub fn start(log: &EventLog, target: &SqlTarget, settings: WebhookSettings) -> Running {
    start_with(log, target, settings, true)
}

/// `fan_out: false` runs a dispatcher alone (a second replica).
pub fn start_with(
    log: &EventLog,
    target: &SqlTarget,
    settings: WebhookSettings,
    fan_out: bool,
) -> Running {
    start_measured(
        log,
        target,
        settings,
        fan_out,
        WebhookMetrics::unregistered(),
    )
}

/// As [`start_with`], counting into `metrics`.
pub fn start_measured(
    log: &EventLog,
    target: &SqlTarget,
    settings: WebhookSettings,
    fan_out: bool,
    metrics: WebhookMetrics,
) -> Running {
    let batch_size = terra_projector::DEFAULT_BATCH_SIZE;
    start_batched(log, target, settings, (fan_out, batch_size), metrics)
}

/// As [`start_measured`], the fan-out reading at most `batch_size` records per batch.
pub fn start_batched(
    log: &EventLog,
    target: &SqlTarget,
    settings: WebhookSettings,
    (fan_out, batch_size): (bool, usize),
    metrics: WebhookMetrics,
) -> Running {
    let shutdown = CancellationToken::new();
    let settings = Arc::new(settings);
    let shared = Shared::new(&settings);
    // the dispatcher first: the fan-out waits for it to start
    let sender = Sender::new(AddressPolicy::new(settings.allow_cidrs.clone())).expect("a sender");
    let dispatcher = tokio::spawn(terra_sink_webhooks::dispatch::run(
        target.clone(),
        settings.clone(),
        sender,
        metrics.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    let fan_out = if fan_out {
        let mut config = ProjectorConfig::new(terra_sink_webhooks::WEBHOOKS_GROUP);
        config.batch_wait = Duration::from_millis(10);
        config.batch_size = batch_size;
        let mut sink = FanOutSink::new(
            target.clone(),
            settings.clone(),
            shared.clone(),
            metrics.clone(),
        );
        let log = log.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            terra_projector::run(
                &config,
                &log,
                &mut sink,
                &ProjectorMetrics::unregistered(),
                stop,
                |_| {},
            )
            .await
            .expect("the fan-out runs");
        })
    } else {
        tokio::spawn(async {})
    };
    let dispatcher = tokio::spawn(async move {
        dispatcher
            .await
            .expect("the dispatcher task")
            .expect("the dispatcher runs");
    });
    Running {
        shutdown,
        fan_out,
        dispatcher,
    }
}

/// A delivery as stored.
#[derive(Debug, Clone)]
pub struct Row_ {
    pub id: i64,
    pub endpoint: String,
    pub envelope_id: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

pub async fn deliveries(target: &SqlTarget) -> Vec<Row_> {
    let rows = target
        .pool()
        .fetch_all(
            format!(
                "SELECT id, endpoint, envelope_id, state, attempts, last_error FROM {} ORDER BY id",
                target.table("webhook_deliveries")
            )
            .as_str(),
        )
        .await
        .expect("deliveries");
    rows.iter()
        .map(|r| Row_ {
            id: r.try_get(0).expect("id"),
            endpoint: text(r, 1).expect("endpoint").unwrap_or_default(),
            envelope_id: text(r, 2).expect("envelope_id").unwrap_or_default(),
            state: text(r, 3).expect("state").unwrap_or_default(),
            attempts: r
                .try_get::<i64, _>(4)
                .or_else(|_| r.try_get::<i32, _>(4).map(i64::from))
                .expect("attempts"),
            last_error: text(r, 5).expect("last_error"),
        })
        .collect()
}

/// (status, error_class, probe) of every attempt of a delivery, in order, as operators see
/// them (`admin::delivery`: the attempts' rows, and a first attempt kept in the delivery's).
pub async fn attempts(target: &SqlTarget, delivery_id: i64) -> Vec<(Option<i64>, String, bool)> {
    let (_, attempts) = terra_sink_webhooks::admin::delivery(target, delivery_id)
        .await
        .expect("attempts")
        .expect("the delivery");
    attempts
        .into_iter()
        .map(|a| (a.status_code, a.error_class, a.probe))
        .collect()
}

/// The endpoint's state and reason (`("", None)` until the dispatcher registered it).
pub async fn endpoint_state(target: &SqlTarget, name: &str) -> (String, Option<String>) {
    let row = target
        .pool()
        .fetch_optional(
            format!(
                "SELECT state, reason FROM {} WHERE name = '{name}'",
                target.table("webhook_endpoints")
            )
            .as_str(),
        )
        .await
        .expect("endpoint row");
    match row {
        Some(row) => (
            text(&row, 0).expect("state").unwrap_or_default(),
            text(&row, 1).expect("reason"),
        ),
        None => (String::new(), None),
    }
}

/// Waits (up to `limit`) until `done` holds for the deliveries; panics with them otherwise.
pub async fn wait_for(
    target: &SqlTarget,
    limit: Duration,
    what: &str,
    done: impl Fn(&[Row_]) -> bool,
) -> Vec<Row_> {
    let started = Instant::now();
    loop {
        let rows = deliveries(target).await;
        if done(&rows) {
            return rows;
        }
        if started.elapsed() > limit {
            panic!("{what}: not reached in {limit:?}; deliveries: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every delivery ended (delivered or dead), and there are `n` of them.
pub fn all_ended(n: usize) -> impl Fn(&[Row_]) -> bool {
    move |rows| rows.len() == n && rows.iter().all(|r| r.state != "pending")
}

/// A Terra-shaped body of `event_type` for `user` (unique per `n`), in Terra's spelling.
pub fn body(event_type: &str, user: &str, n: usize) -> Vec<u8> {
    let user_json = format!(
        "{{\"user_id\": \"{user}\", \"provider\": \"GARMIN\", \"last_webhook_update\": null, \"scopes\": null, \"reference_id\": \"ref-{n}\", \"active\": true}}"
    );
    match event_type {
        "auth" => format!(
            "{{\"type\": \"auth\", \"user\": {user_json}, \"status\": \"success\", \"reference_id\": \"ref-{n}\", \"widget_session_id\": \"w-{n}\", \"message\": \"User has successfully authenticated\", \"version\": \"2022-03-16\"}}"
        ),
        other => format!(
            "{{\"type\": \"{other}\", \"user\": {user_json}, \"data\": [{{\"metadata\": {{\"summary_id\": \"s-{n}\", \"start_time\": \"2026-03-12T10:00:00.000000+00:00\", \"end_time\": \"2026-03-12T11:00:00.000000+00:00\", \"type\": 1, \"name\": \"run {n}\"}}}}], \"version\": \"2022-03-16\"}}"
        ),
    }
    .into_bytes()
}

/// Checks per_user order for `bodies` (event `n` of user `user-{n % 3}`, each refused once
/// and then delivered) as `seen`: each user's events sent in order, each twice in a row (never
/// a later event before an earlier one was delivered).
pub fn assert_sent_in_user_order(seen: &[receiver::Seen], bodies: &[Vec<u8>]) {
    let user = |n: usize| format!("user-{}", n % 3);
    let mut by_user: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for s in seen {
        let n = bodies
            .iter()
            .position(|b| b.as_slice() == s.body.as_ref())
            .expect("a sent body");
        by_user.entry(user(n)).or_default().push(n);
    }
    assert_eq!(
        by_user.len(),
        bodies.len().min(3),
        "every user's events sent"
    );
    for (name, sequence) in by_user {
        let expected: Vec<usize> = (0..bodies.len())
            .filter(|&n| user(n) == name)
            .flat_map(|n| [n, n])
            .collect();
        assert_eq!(sequence, expected, "{name}");
    }
}

/// Appends each body as one record of the log.
pub async fn append(log: &TestLog, bodies: &[Vec<u8>]) {
    for b in bodies {
        log.append(vec![record(
            b,
            None,
            terra_core::keys::now_ms() / 1000,
            Some("trace-1"),
        )])
        .await;
    }
}

/// How long a test waits for what it expects.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Two replicas (the second without a fan-out) and attempts of 150 ms, one at a time, with
/// leases of 2 x 300 ms + 400 ms: queued leases go stale and are handed back, and (with
/// `first_from_fan_out`) the fan-out's wait ends with first attempts waiting for a permit
/// and one in flight. Every pair is sent once, counted once and recorded once.
pub async fn slow_replicas_send_each_pair_once(dialect: Dialect, first_from_fan_out: bool) {
    use receiver::{Answer, Receiver};
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver =
        Receiver::start(Arc::new(|_, _| Answer::SlowOk(Duration::from_millis(150)))).await;
    let make = || {
        let mut e = endpoint("shared", &receiver.url());
        e.max_in_flight = 1;
        e.timeout = Duration::from_millis(300);
        let mut s = settings(vec![e]);
        s.lease_margin = Duration::from_millis(400);
        s.first_from_fan_out = first_from_fan_out;
        s
    };
    let first = start(&log.log, &target, make());
    let second = start_with(&log.log, &target, make(), false);
    let bodies: Vec<_> = (0..24)
        .map(|n| body("activity", &format!("u{n}"), n))
        .collect();
    append(&log, &bodies).await;
    let rows = wait_for(&target, LIMIT, "all delivered", all_ended(24)).await;
    first.stop().await;
    second.stop().await;
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:#?}");
    assert_eq!(receiver.overlaps(), 0, "a pair was in flight twice at once");
    assert_eq!(receiver.seen().len(), 24, "each pair sent once");
    for row in &rows {
        let recorded = attempts(&target, row.id).await.len();
        assert_eq!(
            (row.attempts, recorded),
            (1, 1),
            "delivery {}: one attempt, counted once",
            row.id
        );
    }
    db.drop_now().await;
}
