//! The query API through a real tonic client against the service on port 0, over the SQL
//! projection on the machine's Postgres and MariaDB (a fresh database per test) and SQLite,
//! with bodies from a local object store, all fed through a real embedded log.

#[path = "../../projector/tests/support/private_postgres.rs"]
mod private_postgres;

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use sqlx::Executor;
use terra_core::envelope::Envelope;
use terra_eventlog::{EventLog, Record};
use terra_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};
use terra_projector::sql::{Dialect, SqlConfig, SqlTarget};
use terra_projector::{ProjectorConfig, ProjectorMetrics, SqlSink};
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_query::proto::{
    GetPayloadRequest, GetUserRequest, ListPayloadsRequest, ListUserEventsRequest,
    ListUsersRequest, Order, WatchPayloadsRequest, get_payload_chunk,
};
use terra_query::{Query, QueryServerConfig, TokenKey};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

const USER: &str = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
const T0: i64 = 1_780_000_000;

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/webhooks");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn record(body: &[u8], ordering_ms: i64) -> Record {
    let c = terra_core::classify(body).ok();
    let user_id = c.as_ref().and_then(|c| c.user_id.clone());
    let envelope = Envelope {
        envelope_id: uuid::Uuid::now_v7().to_string(),
        received_at: Some(prost_types::Timestamp {
            seconds: T0,
            nanos: 0,
        }),
        event_type: c.as_ref().map(|c| c.event_type.clone()).unwrap_or_default(),
        user_id: user_id.clone(),
        ordering_timestamp_ms: Some(ordering_ms),
        body_is_json: c.is_some(),
        body: body.to_vec().into(),
        ..Default::default()
    };
    Record {
        key: user_id.map(|u| u.into_bytes().into()),
        headers: vec![],
        value: envelope.encode_to_vec().into(),
    }
}

struct Env {
    log: EventLog,
    sql: SqlTarget,
    store: Store,
    client: QueryServiceClient<Channel>,
    channel: Channel,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
    db: Option<(String, String)>,
}

async fn database(dialect: Dialect, dir: &std::path::Path) -> (String, Option<(String, String)>) {
    sqlx::any::install_default_drivers();
    let name = format!("q_{}", uuid::Uuid::new_v4().simple());
    let admin = match dialect {
        Dialect::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
        Dialect::MySql => "mysql://root@127.0.0.1:3306/test",
        Dialect::Sqlite => return (format!("sqlite://{}", dir.join("t.db").display()), None),
    };
    let pool = sqlx::AnyPool::connect(admin).await.unwrap();
    pool.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    pool.close().await;
    let base = admin.rsplit_once('/').unwrap().0;
    (format!("{base}/{name}"), Some((admin.to_owned(), name)))
}

async fn env(dialect: Dialect, config: QueryServerConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = database(dialect, dir.path()).await;
    env_on(url, db, dir, config).await
}

/// The service over the database at `url` (dropped at the end when `db` names it).
async fn env_on(
    url: String,
    db: Option<(String, String)>,
    dir: tempfile::TempDir,
    config: QueryServerConfig,
) -> Env {
    let sql = SqlTarget::connect(&SqlConfig::new(url)).unwrap();
    terra_projector::sql::migrate(&sql).await.unwrap();
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
    let (stop, mut stopped) = watch::channel(false);
    let query = Query::new(sql.clone(), store.clone(), TokenKey::new("test-key"));
    tokio::spawn(async move {
        terra_query::run(query, config, listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
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
        sql,
        store,
        client: QueryServiceClient::new(channel.clone()),
        channel,
        _stop: stop,
        _dir: dir,
        db,
    }
}

impl Env {
    async fn feed(&self, records: Vec<Record>) {
        self.log.append(records).await.unwrap();
        let (_tx, rx) = watch::channel(false);
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

    async fn done(self) {
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

macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

on_every_dialect!(
    users_and_their_lifecycle,
    payload_history_pages_and_bodies,
    bad_arguments_are_invalid_argument,
    the_live_tail_resumes_without_gap_or_duplicate
);

async fn users_and_their_lifecycle(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .enumerate()
            .map(|(i, (_, b))| record(b, (T0 + i as i64) * 1000))
            .collect(),
    )
    .await;
    let user = e
        .client
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.provider, "GARMIN");
    assert_eq!(user.state, "active");
    assert_eq!(user.reference_id.as_deref(), Some("acct-1007"));
    assert!(user.first_seen.is_some() && user.updated_at.is_some());
    let missing = e
        .client
        .get_user(GetUserRequest {
            user_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // pages of one, following the tokens, give every user once, in order
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = e
            .client
            .list_users(ListUsersRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.iter().map(|u| u.user_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert!(seen.len() >= 4, "{seen:?}");
    let left = e
        .client
        .list_users(ListUsersRequest {
            state: Some("user_reauth".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        left.users
            .iter()
            .map(|u| u.user_id.as_str())
            .collect::<Vec<_>>(),
        ["e4d3c2b1-a098-4765-8321-0fedcba98765"]
    );

    let events = e
        .client
        .list_user_events(ListUserEventsRequest {
            user_id: USER.into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 2);
    let rest = e
        .client
        .list_user_events(ListUserEventsRequest {
            user_id: USER.into(),
            page_size: 100,
            page_token: events.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let all: Vec<_> = events
        .events
        .iter()
        .chain(&rest.events)
        .map(|ev| ev.event_type.clone())
        .collect();
    assert!(
        all.contains(&"auth".to_owned())
            && all.contains(&"permission_change".to_owned())
            && all.contains(&"user_reauth".to_owned()),
        "{all:?}"
    );
    let times: Vec<_> = events
        .events
        .iter()
        .chain(&rest.events)
        .map(|ev| ev.generated_at.unwrap().seconds)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );
    e.done().await;
}

async fn payload_history_pages_and_bodies(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    let all = fixtures();
    e.feed(all.iter().map(|(_, b)| record(b, T0 * 1000)).collect())
        .await;
    let list = |order: Order, size: u32, token: String| ListPayloadsRequest {
        user_id: USER.into(),
        order: order as i32,
        page_size: size,
        page_token: token,
        ..Default::default()
    };
    let everything = e
        .client
        .list_payloads(list(Order::NewestFirst, 1000, String::new()))
        .await
        .unwrap()
        .into_inner()
        .payloads;
    assert!(everything.len() >= 8, "{}", everything.len());
    let starts: Vec<_> = everything
        .iter()
        .map(|p| p.start_utc.clone().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {starts:?}"
    );
    // pages of 3 oldest first cover the same set
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = e
            .client
            .list_payloads(list(Order::OldestFirst, 3, token.clone()))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.payloads);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut a: Vec<_> = everything.iter().map(|p| p.payload_id.clone()).collect();
    let mut b: Vec<_> = paged.iter().map(|p| p.payload_id.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // types and a time range
    let sleep = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            types: vec!["sleep".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads;
    assert!(!sleep.is_empty() && sleep.iter().all(|p| p.event_type == "sleep"));
    let ranged = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            start_time_from: Some("2026-10-04T00:00:00Z".into()),
            start_time_to: Some("2026-10-05T00:00:00+00:00".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads;
    assert!(ranged.iter().all(
        |p| p.start_utc.as_deref().unwrap() >= "2026-10-04T00:00:00Z"
            && p.start_utc.as_deref().unwrap() < "2026-10-05T00:00:00Z"
    ));
    assert!(ranged.len() < everything.len());

    // every body, byte for byte as stored
    for p in &everything {
        let mut stream = e
            .client
            .get_payload(GetPayloadRequest {
                payload_id: p.payload_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let Some(get_payload_chunk::Chunk::Metadata(meta)) = first.chunk else {
            panic!("metadata first")
        };
        assert_eq!(meta.payload_id, p.payload_id);
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Some(get_payload_chunk::Chunk::Data(data)) = chunk.unwrap().chunk else {
                panic!("data chunks")
            };
            body.extend_from_slice(&data);
        }
        let key = object_store::path::Path::parse(e.store.key(&p.payload_id)).unwrap();
        let stored = object_store::ObjectStore::get(e.store.object_store().as_ref(), &key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body, stored.as_ref(), "{}", p.payload_id);
        if p.kind == "misc" {
            let source = all
                .iter()
                .find(|(_, b)| terra_core::classify(b).unwrap().event_type == p.event_type)
                .unwrap();
            assert_eq!(
                body, source.1,
                "a misc payload is the webhook body as received"
            );
        }
    }
    let missing = e
        .client
        .get_payload(GetPayloadRequest {
            payload_id: "2022-03-16/sleep/nobody-x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    e.done().await;
}

async fn bad_arguments_are_invalid_argument(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .map(|(_, b)| record(b, T0 * 1000))
            .collect(),
    )
    .await;
    let page = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut tampered = page.next_page_token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let cases = [
        ListPayloadsRequest {
            user_id: USER.into(),
            page_token: tampered,
            page_size: 1,
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: USER.into(),
            page_size: 1001,
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: USER.into(),
            start_time_from: Some("2026-10-05T00:00:00Z".into()),
            start_time_to: Some("2026-10-04T00:00:00Z".into()),
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: USER.into(),
            start_time_from: Some("yesterday".into()),
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: String::new(),
            ..Default::default()
        },
        // a token for other filters
        ListPayloadsRequest {
            user_id: USER.into(),
            types: vec!["sleep".into()],
            page_token: page.next_page_token.clone(),
            ..Default::default()
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let err = e.client.list_payloads(case).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {i}: {err:?}");
        assert!(!err.message().is_empty());
    }
    let err = e
        .client
        .list_users(ListUsersRequest {
            page_token: "x.y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = e
        .client
        .watch_payloads(WatchPayloadsRequest {
            resume_from: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    e.done().await;
}

async fn the_live_tail_resumes_without_gap_or_duplicate(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    let all = fixtures();
    e.feed(vec![record(&all[0].1, T0 * 1000)]).await;
    // from now on: what is already there is not replayed
    let mut stream = e
        .client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let half = all.len() / 2;
    e.feed(
        all[1..half]
            .iter()
            .map(|(_, b)| record(b, T0 * 1000 + 5))
            .collect(),
    )
    .await;
    let expected_first: usize = all[1..half].iter().map(|(_, b)| payload_count(b)).sum();
    let mut got = Vec::new();
    let mut position = String::new();
    while got.len() < expected_first {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        position = event.position.clone();
        got.push(event.payload.unwrap().payload_id);
    }
    drop(stream);
    // more arrives while nobody watches; a resumed watch gets exactly that
    e.feed(
        all[half..]
            .iter()
            .map(|(_, b)| record(b, T0 * 1000 + 9))
            .collect(),
    )
    .await;
    let expected_rest: usize = all[half..].iter().map(|(_, b)| payload_count(b)).sum();
    let mut resumed = e
        .client
        .watch_payloads(WatchPayloadsRequest {
            resume_from: position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    while rest.len() < expected_rest {
        let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        rest.push(event.payload.unwrap().payload_id);
    }
    // and nothing more
    assert!(
        tokio::time::timeout(Duration::from_millis(700), resumed.next())
            .await
            .is_err(),
        "no duplicate after the last new payload"
    );
    let mut both = got.clone();
    both.extend(rest.clone());
    let unique: std::collections::BTreeSet<_> = both.iter().collect();
    assert_eq!(unique.len(), both.len(), "each payload once");

    // one user and some types
    let mut only = e
        .client
        .watch_payloads(WatchPayloadsRequest {
            user_id: Some(USER.into()),
            types: vec!["sleep".into()],
            resume_from: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    e.feed(vec![
        record(&fixture_named(&all, "sleep"), T0 * 1000 + 99),
        record(&fixture_named(&all, "daily"), T0 * 1000 + 99),
    ])
    .await;
    let event = tokio::time::timeout(Duration::from_secs(10), only.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.payload.unwrap().event_type, "sleep");
    assert!(
        tokio::time::timeout(Duration::from_millis(700), only.next())
            .await
            .is_err()
    );
    e.done().await;
}

fn payload_count(body: &[u8]) -> usize {
    let c = terra_core::classify(body).unwrap();
    if c.group == terra_core::EventGroup::Data {
        c.records.len()
    } else {
        1
    }
}

fn fixture_named(all: &[(String, Vec<u8>)], name: &str) -> Vec<u8> {
    all.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_when_configured_and_health_answers() {
    let config = QueryServerConfig {
        tokens: vec!["a-long-enough-token-1".into()],
        ..QueryServerConfig::default()
    };
    let mut e = env(Dialect::Sqlite, config).await;
    let err = e
        .client
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(GetUserRequest {
        user_id: USER.into(),
    });
    request.metadata_mut().insert(
        "authorization",
        "Bearer a-long-enough-token-1".parse().unwrap(),
    );
    assert_eq!(
        e.client.get_user(request).await.unwrap_err().code(),
        Code::NotFound,
        "authenticated; no such user yet"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(e.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "terra.ingest.v1.QueryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    e.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_then_healthy_again() {
    let mut e = env(Dialect::Sqlite, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .map(|(_, b)| record(b, T0 * 1000))
            .collect(),
    )
    .await;
    // the SQLite file's tables go away (as a database that is down or being restored)
    e.sql
        .pool()
        .execute(format!("ALTER TABLE {} RENAME TO away", e.sql.table("terra_users")).as_str())
        .await
        .unwrap();
    let err = e
        .client
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    e.sql
        .pool()
        .execute(format!("ALTER TABLE away RENAME TO {}", e.sql.table("terra_users")).as_str())
        .await
        .unwrap();
    assert_eq!(
        e.client
            .get_user(GetUserRequest {
                user_id: USER.into()
            })
            .await
            .unwrap()
            .into_inner()
            .user_id,
        USER
    );
    e.done().await;
}

/// A real database server stopped under the service (a private Postgres cluster, so no other
/// test is disturbed): calls answer UNAVAILABLE and health turns NOT_SERVING; once the server
/// is back, the same service (no restart) answers and reports SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_server_is_unavailable_then_served_again_without_restart() {
    let pg = private_postgres::PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let e = env_on(pg.url(), None, dir, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .map(|(_, b)| record(b, T0 * 1000))
            .collect(),
    )
    .await;
    let mut client = e.client.clone();
    let get_user = || {
        let mut client = e.client.clone();
        async move {
            client
                .get_user(GetUserRequest {
                    user_id: USER.into(),
                })
                .await
        }
    };
    let list = || {
        let mut client = e.client.clone();
        async move {
            client
                .list_payloads(ListPayloadsRequest {
                    user_id: USER.into(),
                    ..Default::default()
                })
                .await
        }
    };
    let served = list().await.unwrap().into_inner().payloads.len();
    assert!(served > 0);
    let health = tonic_health::pb::health_client::HealthClient::new(e.channel.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    const SERVICE: &str = "terra.ingest.v1.QueryService";
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(status(SERVICE).await, ServingStatus::Serving as i32);

    pg.down();
    for call in [get_user().await.map(|_| ()), list().await.map(|_| ())] {
        let err = call.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(!err.message().contains("127.0.0.1"), "{err:?}");
    }
    let err = client
        .get_payload(GetPayloadRequest {
            payload_id: "x.json".into(),
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_until("health NOT_SERVING", || async {
        status(SERVICE).await == ServingStatus::NotServing as i32
    })
    .await;
    // the process itself stays alive (a liveness probe must not restart it for an outage)
    assert_eq!(status("").await, ServingStatus::Serving as i32);

    pg.up();
    wait_until("calls served again", || async { get_user().await.is_ok() }).await;
    assert_eq!(list().await.unwrap().into_inner().payloads.len(), served);
    wait_until("health SERVING", || async {
        status(SERVICE).await == ServingStatus::Serving as i32
    })
    .await;
    drop(pg);
}

async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PEM files for a CA, a server certificate for 127.0.0.1 and a client certificate, made with
/// the openssl command (Debian's).
fn certificates(dir: &std::path::Path) -> [Vec<u8>; 5] {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // any extension makes an X.509 v3 certificate (rustls refuses v1)
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=terra-test-ca",
    ]);
    for name in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    [
        read("ca.pem"),
        read("server.pem"),
        read("server.key"),
        read("client.pem"),
        read("client.key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let certs_dir = tempfile::tempdir().unwrap();
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(certs_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let sql = SqlTarget::connect(&SqlConfig::new(format!(
        "sqlite://{}",
        dir.path().join("t.db").display()
    )))
    .unwrap();
    terra_projector::sql::migrate(&sql).await.unwrap();
    let store = Store::open(&StoreConfig {
        url: dir.path().join("objects").display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    let config = QueryServerConfig {
        tls: Some(terra_query::TlsFiles {
            cert: server_cert,
            key: server_key,
            client_ca: Some(ca.clone()),
        }),
        ..QueryServerConfig::default()
    };
    // mutual TLS counts as authentication: any address may be bound
    assert!(config.check_bind("0.0.0.0:1".parse().unwrap()).is_ok());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, mut stopped) = watch::channel(false);
    tokio::spawn(terra_query::run(
        Query::new(sql, store, TokenKey::new("k")),
        config,
        listener,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let endpoint = |tls: ClientTlsConfig| {
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let with_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(&client_cert, &client_key));
    let channel = endpoint(with_cert).connect().await.unwrap();
    let err = QueryServiceClient::new(channel)
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "through mutual TLS: {err:?}");
    // without a client certificate the handshake (or the first call) fails
    let without = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    let refused = match endpoint(without).connect().await {
        Err(_) => true,
        Ok(channel) => QueryServiceClient::new(channel)
            .get_user(GetUserRequest {
                user_id: USER.into(),
            })
            .await
            .is_err_and(|e| e.code() != Code::NotFound),
    };
    assert!(refused, "a client without a certificate is refused");
}
