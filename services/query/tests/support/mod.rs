//! Test support for the query API: fixtures as log records, and an environment with the
//! service on port 0 over a fresh database (Postgres or MariaDB on the machine, or SQLite),
//! a local object store and an embedded log, with a real tonic client.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use sqlx::Executor;
use terra_eventlog::{EventLog, Record};
use terra_projector::{ProjectorConfig, ProjectorMetrics};
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_query::{Query, QueryServerConfig, TokenKey};
use terra_runtime::CancellationToken;
use terra_runtime::shutdown::DropGuard;
use terra_schema::{Dialect, SqlConfig, SqlTarget};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};
use terra_sink_sql::SqlSink;
use tonic::transport::Channel;

pub use terra_testkit::{FIXTURE_USER as USER, T0};

/// Every fixture, by name, sorted.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    terra_testkit::all_fixtures()
}

/// A record as the ingress writes it, received at [`T0`].
pub fn record(body: &[u8], ordering_ms: i64) -> Record {
    terra_testkit::record(body, Some(ordering_ms), T0, None)
}

pub struct Env {
    pub log: EventLog,
    /// The database URL the service reads.
    pub url: String,
    /// Where the service listens.
    pub addr: std::net::SocketAddr,
    /// A clone of the served service (for its tail statistics).
    pub query: Query,
    pub sql: SqlTarget,
    pub store: Store,
    pub client: QueryServiceClient<Channel>,
    pub channel: Channel,
    /// Stops the server (as SIGTERM would); dropping the environment does too.
    pub stop: CancellationToken,
    _stop_on_drop: DropGuard,
    pub _dir: tempfile::TempDir,
    pub db: Option<(String, String)>,
}

/// A fresh database (its URL, and what [`Env::done`] drops), or a SQLite file in `dir`.
pub async fn database(
    dialect: Dialect,
    dir: &std::path::Path,
) -> (String, Option<(String, String)>) {
    if dialect == Dialect::Sqlite {
        return (format!("sqlite://{}", dir.join("t.db").display()), None);
    }
    let db = terra_testkit::TestDb::new(dialect).await;
    let admin = match dialect {
        Dialect::Postgres => terra_testkit::PG_ADMIN,
        _ => terra_testkit::MYSQL_ADMIN,
    };
    (
        db.url.clone(),
        Some((admin.to_owned(), db.name().to_owned())),
    )
}

pub async fn env(dialect: Dialect, config: QueryServerConfig) -> Env {
    env_with(dialect, config, |q| q).await
}

/// [`env`] with the service changed by `customise` before it is served.
pub async fn env_with(
    dialect: Dialect,
    config: QueryServerConfig,
    customise: impl FnOnce(Query) -> Query,
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = database(dialect, dir.path()).await;
    env_on_with(url, db, dir, config, customise).await
}

/// The service over the database at `url` (dropped at the end when `db` names it).
pub async fn env_on(
    url: String,
    db: Option<(String, String)>,
    dir: tempfile::TempDir,
    config: QueryServerConfig,
) -> Env {
    env_on_with(url, db, dir, config, |q| q).await
}

pub async fn env_on_with(
    url: String,
    db: Option<(String, String)>,
    dir: tempfile::TempDir,
    config: QueryServerConfig,
    customise: impl FnOnce(Query) -> Query,
) -> Env {
    let sql = SqlTarget::connect(&SqlConfig::new(url.clone())).unwrap();
    terra_schema::migrate(&sql).await.unwrap();
    let store = Store::open(&StoreConfig {
        url: dir.path().join("objects").display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    let log = EventLog::Embedded(
        terra_eventlog::embedded::EmbeddedLog::open(&dir.path().join("log"), 3).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let query = customise(Query::new(
        sql.clone(),
        store.clone(),
        TokenKey::new("test-key"),
    ));
    let served = query.clone();
    let stopped = stop.clone();
    tokio::spawn(async move {
        terra_query::run(query, config, listener, stopped)
            .await
            .unwrap()
    });
    let channel = loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    Env {
        log,
        url,
        addr,
        query: served,
        sql,
        store,
        client: QueryServiceClient::new(channel.clone()),
        channel,
        stop: stop.clone(),
        _stop_on_drop: stop.drop_guard(),
        _dir: dir,
        db,
    }
}

impl Env {
    pub async fn feed(&self, records: Vec<Record>) {
        self.log.append(records).await.unwrap();
        let rx = CancellationToken::new();
        let mut config = ProjectorConfig::new("sql");
        config.stop_at_end = true;
        config.batch_wait = Duration::from_millis(10);
        terra_projector::run(
            &config,
            &self.log,
            &mut SqlSink::new(self.sql.clone()),
            &ProjectorMetrics::unregistered(),
            rx.clone(),
            |_| {},
        )
        .await
        .unwrap();
        let mut config = ProjectorConfig::new("objects");
        config.stop_at_end = true;
        config.batch_wait = Duration::from_millis(10);
        let mut sink = ObjectSink::new(self.store.clone(), ObjectSinkConfig::default(), None);
        terra_projector::run(
            &config,
            &self.log,
            &mut sink,
            &ProjectorMetrics::unregistered(),
            rx,
            |_| {},
        )
        .await
        .unwrap();
    }

    pub async fn done(self) {
        if let Some((admin, name)) = self.db {
            let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
            let force = if admin.starts_with("postgres") {
                " WITH (FORCE)"
            } else {
                ""
            };
            let _ = pool
                .execute(format!("DROP DATABASE IF EXISTS {name}{force}").as_str())
                .await;
        }
    }
}

pub fn payload_count(body: &[u8]) -> usize {
    let c = terra_core::classify(body).unwrap();
    if c.group == terra_core::EventGroup::Data {
        c.records.len()
    } else {
        1
    }
}

/// The payload ids the projection derives from `body` delivered with ordering timestamp
/// `ordering_ms` (the projection's key derivation, from terra-core).
pub fn payload_ids(body: &[u8], ordering_ms: i64) -> Vec<String> {
    // the plan's ids: without a collision a claimed base id is the final one, and events
    // without a user carry their suffix already (terra_core::keys, suffix rule)
    let envelope = terra_testkit::envelope(body, Some(ordering_ms), T0, None);
    let planned = terra_projector::plan::plan_envelope(
        terra_eventlog::Position {
            partition: 0,
            offset: 0,
        },
        &envelope,
    );
    match planned.plan {
        terra_projector::plan::Plan::Event(event) => {
            event.payloads.into_iter().map(|p| p.payload_id).collect()
        }
        terra_projector::plan::Plan::Dead(dead) => panic!("poison: {}", dead.reason),
    }
}

/// The users the fixtures name (the user of each delivery, and the old user a reauth
/// replaces), sorted.
pub fn fixture_users(all: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut users = std::collections::BTreeSet::new();
    for (_, body) in all {
        users.extend(terra_core::classify(body).unwrap().user_id);
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if let Some(old) = json["old_user"]["user_id"].as_str() {
            users.insert(old.to_owned());
        }
    }
    users.into_iter().collect()
}

pub fn fixture_named(all: &[(String, Vec<u8>)], name: &str) -> Vec<u8> {
    all.iter().find(|(n, _)| n == name).unwrap().1.clone()
}
