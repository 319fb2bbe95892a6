//! A store outage pauses the object projector and skips nothing: a private server on its own
//! port (moto, its binary from tests/run-all.sh, `TERRA_TEST_MOTO_SERVER`; Azurite,
//! `TERRA_TEST_AZURITE_BIN`) is killed while records keep arriving, then started again.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStore;
use prometheus_client::registry::Registry;
use terra_eventlog::{EventLog, Record};
use terra_projector::CancellationToken;
use terra_projector::{Backoff, ProjectorConfig, ProjectorMetrics};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};
use terra_testkit::azurite::{self, PrivateAzurite};

struct Moto(Child);

impl Moto {
    fn start(port: u16) -> Self {
        let exe = std::env::var("TERRA_TEST_MOTO_SERVER")
            .expect("TERRA_TEST_MOTO_SERVER (tests/run-all.sh sets it; tests that need it have `moto` in their names)");
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn record(body: &[u8], ordering_ms: i64) -> Record {
    terra_testkit::record(body, Some(ordering_ms), terra_testkit::T0, None)
}

fn daily_for(user: usize) -> Vec<u8> {
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/webhooks/daily.json"),
    )
    .unwrap();
    String::from_utf8(body)
        .unwrap()
        .replace(
            "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3",
            &format!("{user:08x}-77f1-4b8e-9f0a-2b6c41e5d7a3"),
        )
        .into_bytes()
}

fn metric(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn keys(store: &Store) -> Result<BTreeSet<String>, object_store::Error> {
    store
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        // the suffix rule's claim markers are not payloads
        .try_filter(|k| std::future::ready(!k.starts_with("_claims/")))
        .try_collect()
        .await
}

/// A store server the test can stop and start on one port.
#[derive(Clone, Copy)]
enum Server {
    Moto,
    Azurite,
}

impl Server {
    /// Starts it (empty: neither keeps anything across restarts) and makes the bucket.
    async fn start(self, port: u16) -> Box<dyn std::any::Any> {
        let endpoint = format!("http://127.0.0.1:{port}");
        match self {
            Server::Moto => {
                let moto = Moto::start(port);
                let r = reqwest::Client::new()
                    .put(format!("{endpoint}/outage-bucket"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                Box::new(moto)
            }
            Server::Azurite => {
                let azurite = tokio::task::spawn_blocking(move || {
                    let azurite = PrivateAzurite::start(port);
                    azurite::create_container(&endpoint, "outage-bucket");
                    azurite
                })
                .await
                .unwrap();
                Box::new(azurite)
            }
        }
    }

    fn store(self, port: u16) -> Store {
        let endpoint = format!("http://127.0.0.1:{port}");
        let config = match self {
            Server::Moto => StoreConfig {
                url: "s3://outage-bucket".into(),
                s3_endpoint: Some(endpoint),
                s3_region: Some("us-east-1".into()),
                s3_path_style: true,
                allow_http: true,
                ..StoreConfig::default()
            },
            Server::Azurite => StoreConfig {
                url: "az://outage-bucket".into(),
                allow_http: true,
                options: azurite::store_options(&endpoint),
                ..StoreConfig::default()
            },
        };
        Store::open(&config).unwrap()
    }
}

#[tokio::test]
#[ignore = "needs moto's server binary: run tests/run-all.sh"]
async fn a_store_outage_on_moto_pauses_the_projector_and_skips_nothing() {
    an_outage_pauses_the_projector_and_skips_nothing(Server::Moto).await;
}

#[tokio::test]
#[ignore = "needs Azurite: run tests/run-all.sh"]
async fn a_store_outage_on_azurite_pauses_the_projector_and_skips_nothing() {
    an_outage_pauses_the_projector_and_skips_nothing(Server::Azurite).await;
}

async fn an_outage_pauses_the_projector_and_skips_nothing(server: Server) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = server.start(port).await;
    let store = server.store(port);
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::Embedded(
        terra_eventlog::embedded::EmbeddedLog::open(&dir.path().join("log"), 2).unwrap(),
    );
    log.append((0..5).map(|u| record(&daily_for(u), 1_000)).collect())
        .await
        .unwrap();

    let mut registry = Registry::default();
    let metrics = ProjectorMetrics::register(&mut registry);
    let mut config = ProjectorConfig::new("objects");
    config.batch_size = 3;
    config.batch_wait = Duration::from_millis(20);
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
    };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let projector = {
        let (log, store, metrics) = (log.clone(), store.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut sink = ObjectSink::new(store, ObjectSinkConfig::default(), None);
            terra_projector::run(&config, &log, &mut sink, &metrics, stopped, |_| {}).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while keys(&store).await.map(|k| k.len()).unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "first objects not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // the store goes away while deliveries keep arriving
    drop(running);
    log.append((5..15).map(|u| record(&daily_for(u), 2_000)).collect())
        .await
        .unwrap();
    while metric(&registry, "projector_sink_errors") < 2.0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "no sink errors during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !projector.is_finished(),
        "an outage must not stop the projector"
    );

    // back (empty: the bucket is made again)
    let _running = server.start(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = keys(&store).await.unwrap_or_default();
        let expected: usize = 10;
        if listed.len() >= expected {
            for u in 5..15 {
                let user = format!("{u:08x}-77f1");
                assert!(
                    listed.iter().any(|k| k.contains(&user)),
                    "user {u}'s object is missing: {listed:?}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "objects written during the outage never arrived: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let totals = tokio::time::timeout(Duration::from_secs(10), projector)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(totals.records, 15, "every record projected, none skipped");
    assert_eq!(totals.dead, 0);
    assert_eq!(
        metric(&registry, "projector_sink_refused"),
        0.0,
        "an outage is not a refusal"
    );
}
