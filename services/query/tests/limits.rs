//! The query service's limits through real clients: the server's deadline and the caps on
//! calls, live tails and streams per connection; dead connections reaped by HTTP/2 and TCP
//! keepalive, old ones told to go away; `GetPayload` bodies streamed from the store. The
//! shared live tail is in `tail.rs`.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::Executor;
use support::*;
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_query::proto::{
    GetPayloadRequest, GetUserRequest, ListPayloadsRequest, WatchPayloadsRequest, get_payload_chunk,
};
use terra_query::{Limits, QueryServerConfig};
use terra_schema::Dialect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

fn with_limits(limits: Limits) -> QueryServerConfig {
    QueryServerConfig {
        limits,
        ..QueryServerConfig::default()
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Holds an ACCESS EXCLUSIVE lock on `table` (Postgres) until dropped: every query of it
/// waits, as behind a long migration or a stuck transaction.
struct TableLock(sqlx::PgConnection);

impl TableLock {
    async fn take(url: &str, table: &str) -> Self {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        conn.execute("BEGIN").await.unwrap();
        conn.execute(format!("LOCK TABLE terra.{table} IN ACCESS EXCLUSIVE MODE").as_str())
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        self.0.execute("ROLLBACK").await.unwrap();
    }
}

fn get_user() -> GetUserRequest {
    GetUserRequest {
        user_id: USER.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_a_call_is_cut_at_the_server_timeout_or_the_clients_shorter_one() {
    let e = env(
        Dialect::Postgres,
        with_limits(Limits {
            timeout: Duration::from_millis(600),
            ..Limits::default()
        }),
    )
    .await;
    let lock = TableLock::take(&e.url, "terra_users").await;
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        e.client.clone().get_user(get_user()),
    )
    .await
    .expect("the server ends a call that outlives its timeout")
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("--grpc-timeout-secs"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // a client's shorter deadline wins
    let mut request = tonic::Request::new(get_user());
    request.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let err = e.client.clone().get_user(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(550), "{err:?}");
    // what does not touch the locked table is served meanwhile
    let err = e
        .client
        .clone()
        .get_payload(GetPayloadRequest {
            payload_id: "x.json".into(),
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    lock.release().await;
    assert_eq!(
        e.client
            .clone()
            .get_user(get_user())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "served again once the lock is gone"
    );
    e.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_calls_beyond_the_in_flight_cap_fail_fast_with_resource_exhausted() {
    let e = env(
        Dialect::Postgres,
        with_limits(Limits {
            max_in_flight: 2,
            ..Limits::default()
        }),
    )
    .await;
    let lock = TableLock::take(&e.url, "terra_users").await;
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let mut client = e.client.clone();
            tokio::spawn(async move { client.get_user(get_user()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(2),
        e.client.clone().get_user(get_user()),
    )
    .await
    .expect("a call beyond the cap is answered at once, not queued")
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--grpc-max-in-flight"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // live tails have their own cap: one still starts
    let watch = e
        .client
        .clone()
        .watch_payloads(WatchPayloadsRequest::default())
        .await;
    assert!(watch.is_ok(), "{:?}", watch.err());
    lock.release().await;
    for call in stuck {
        assert_eq!(call.await.unwrap().unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(
        e.client
            .clone()
            .get_user(get_user())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "places are given back"
    );
    e.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_watchers_beyond_the_cap_are_resource_exhausted() {
    let e = env(
        Dialect::Sqlite,
        with_limits(Limits {
            max_watchers: 2,
            ..Limits::default()
        }),
    )
    .await;
    let watch = || {
        let mut client = e.client.clone();
        async move {
            client
                .watch_payloads(WatchPayloadsRequest::default())
                .await
                .map(|r| r.into_inner())
        }
    };
    let first = watch().await.unwrap();
    let _second = watch().await.unwrap();
    let err = watch().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--grpc-max-watchers"), "{err:?}");
    // other calls are not counted against live tails
    assert_eq!(
        e.client
            .clone()
            .get_user(get_user())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match watch().await {
            Ok(_) => break,
            Err(err) if err.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(err) => panic!("a place is free once a watcher left: {err:?}"),
        }
    }
    e.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_a_connection_opens_at_most_max_concurrent_streams() {
    let e = env(
        Dialect::Sqlite,
        with_limits(Limits {
            max_concurrent_streams: 2,
            ..Limits::default()
        }),
    )
    .await;
    let mut client = QueryServiceClient::new(channel(e.addr).await);
    // one call first, so the client knows the server's settings
    let _ = client.get_user(get_user()).await;
    let first = client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let _second = client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut third = client.clone();
    let waiting = tokio::spawn(async move { third.get_user(get_user()).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "a third stream on the connection waits"
    );
    // another connection is not affected
    assert_eq!(
        QueryServiceClient::new(channel(e.addr).await)
            .get_user(get_user())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting stream opens once one ended")
        .unwrap();
    assert_eq!(answered.unwrap_err().code(), Code::NotFound);
    e.done().await;
}

/// Opens a raw TCP connection and speaks just enough HTTP/2 (the preface and empty SETTINGS)
/// to be a client, then never answers anything: a peer that went away.
async fn dead_peer(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    conn
}

/// Reads HTTP/2 frames until the server closes the connection or sends GOAWAY (`Some(true)`
/// for GOAWAY, `Some(false)` for a close), or `None` if neither happens within `wait`.
async fn closed_or_goaway(conn: &mut tokio::net::TcpStream, wait: Duration) -> Option<bool> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // frames: 3 bytes length, 1 type, 1 flags, 4 stream id, payload
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf[3] == 0x7 {
                return Some(true);
            }
            if buf.len() < 9 + len {
                break;
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(false),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_a_dead_connection_is_closed_by_http2_keepalive() {
    let reaping = env(
        Dialect::Sqlite,
        with_limits(Limits {
            keepalive_interval: Duration::from_millis(300),
            keepalive_timeout: Duration::from_millis(300),
            ..Limits::default()
        }),
    )
    .await;
    let mut conn = dead_peer(reaping.addr).await;
    assert!(
        closed_or_goaway(&mut conn, Duration::from_secs(5))
            .await
            .is_some(),
        "a peer that answers no ping is disconnected"
    );
    // the control: with the default 30 s interval the same peer is still connected
    let default = env(Dialect::Sqlite, QueryServerConfig::default()).await;
    let mut conn = dead_peer(default.addr).await;
    assert_eq!(
        closed_or_goaway(&mut conn, Duration::from_millis(1500)).await,
        None
    );
    reaping.done().await;
    default.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_connections_are_told_to_go_away_at_max_connection_age() {
    let e = env(
        Dialect::Sqlite,
        with_limits(Limits {
            max_connection_age: Some(Duration::from_millis(400)),
            ..Limits::default()
        }),
    )
    .await;
    let mut conn = dead_peer(e.addr).await;
    assert_eq!(
        closed_or_goaway(&mut conn, Duration::from_secs(5)).await,
        Some(true),
        "GOAWAY once the connection is older than max_connection_age"
    );
    // a tonic client reconnects (a call racing the GOAWAY may fail: clients retry those)
    let mut client = QueryServiceClient::new(channel(e.addr).await);
    for _ in 0..4 {
        let mut failures = Vec::new();
        loop {
            match client.get_user(get_user()).await {
                Err(err) if err.code() == Code::NotFound => break,
                other => failures.push(format!("{other:?}")),
            }
            assert!(failures.len() < 20, "{failures:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    e.done().await;
}

/// Linux shows the keepalive timer of a socket in `/proc/net/tcp` ("02" in `tr`).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_accepted_connections_have_tcp_keepalive() {
    let e = env(Dialect::Sqlite, QueryServerConfig::default()).await;
    let _ = e.client.clone().get_user(get_user()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{:04X}", e.addr.port());
    let timers: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[1] == local && f[3] == "01")
        .map(|f| f[5].split(':').next().unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| if t == "02" { "keepalive" } else { "none" })
        .collect();
    assert!(!timers.is_empty(), "the server side of the connection");
    assert!(timers.iter().all(|t| *t == "keepalive"), "{timers:?}");
    e.done().await;
}

/// Reads a whole `GetPayload` answer: the sizes of its data messages and the body.
async fn read_body(
    stream: &mut tonic::Streaming<terra_query::proto::GetPayloadChunk>,
) -> (Vec<usize>, Vec<u8>) {
    let mut sizes = Vec::new();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Some(get_payload_chunk::Chunk::Data(data)) = chunk.unwrap().chunk else {
            panic!("data after the metadata")
        };
        sizes.push(data.len());
        body.extend_from_slice(&data);
    }
    (sizes, body)
}

fn noise(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_get_payload_streams_the_object_without_holding_it_whole() {
    let e = env(Dialect::Sqlite, QueryServerConfig::default()).await;
    let all = fixtures();
    e.feed(vec![record(&fixture_named(&all, "sleep"), T0 * 1000)])
        .await;
    let payload_id = e
        .client
        .clone()
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads[0]
        .payload_id
        .clone();
    let key = e.store.key(&payload_id);
    let path = e._dir.path().join("objects").join(&key);
    let get = || {
        let mut client = e.client.clone();
        let payload_id = payload_id.clone();
        async move {
            let mut stream = client
                .get_payload(GetPayloadRequest { payload_id })
                .await
                .unwrap()
                .into_inner();
            let first = stream.next().await.unwrap().unwrap();
            assert!(matches!(
                first.chunk,
                Some(get_payload_chunk::Chunk::Metadata(_))
            ));
            stream
        }
    };

    // a body of many chunks, byte for byte, in messages of at most 64 KiB
    let big = noise(5 * 1024 * 1024 + 123, 1);
    std::fs::write(&path, &big).unwrap();
    let (sizes, body) = read_body(&mut get().await).await;
    assert_eq!(body.len(), big.len());
    assert!(body == big, "every byte as stored");
    assert!(
        sizes.len() > 1
            && sizes
                .iter()
                .all(|s| *s <= terra_query::service::CHUNK && *s > 0)
    );

    // the body is read from the store as the client takes it: bytes changed in place after
    // the first message (16 MiB further on) are the bytes the client gets
    let len = 16 * 1024 * 1024;
    let old = noise(len, 2);
    std::fs::write(&path, &old).unwrap();
    let mut stream = get().await;
    let Some(get_payload_chunk::Chunk::Data(first)) = stream.next().await.unwrap().unwrap().chunk
    else {
        panic!("data")
    };
    let new_tail = noise(1024 * 1024, 3);
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(std::io::SeekFrom::Start((len - new_tail.len()) as u64))
            .unwrap();
        file.write_all(&new_tail).unwrap();
    }
    let (_, rest) = read_body(&mut stream).await;
    let mut body = first.to_vec();
    body.extend_from_slice(&rest);
    assert_eq!(body.len(), len);
    assert!(
        body[len - new_tail.len()..] == new_tail[..],
        "the end of the object was read after the first message was sent"
    );
    assert!(body[..len - new_tail.len()] == old[..len - new_tail.len()]);
    e.done().await;
}
