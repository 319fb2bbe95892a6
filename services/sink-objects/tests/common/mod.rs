//! What the object sink's test binaries share: the stores (a local folder, a fresh bucket
//! on moto's S3, `TERRA_TEST_S3_ENDPOINT`, a fresh container on Azurite,
//! `TERRA_TEST_AZURITE_URL`), an embedded log, the projector run to the end, and reads of
//! what was stored.

// each test binary uses its own part of this
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use terra_eventlog::{EventLog, Record};
use terra_projector::CancellationToken;
use terra_projector::{ProjectorConfig, ProjectorMetrics, WriteStats};
use terra_sink_objects::{ObjectSink, Store, StoreConfig};
use terra_testkit::T0;

pub(crate) fn record(body: &[u8], ordering_ms: Option<i64>) -> Record {
    terra_testkit::record(body, ordering_ms, T0, None)
}

pub(crate) struct Backend {
    pub(crate) store: Store,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) bucket: Option<String>,
}

pub(crate) fn s3_endpoint() -> String {
    std::env::var("TERRA_TEST_S3_ENDPOINT").expect(
        "TERRA_TEST_S3_ENDPOINT must name an S3-compatible server (tests/run-all.sh starts moto and sets it; tests that need it have `moto` in their names)",
    )
}

pub(crate) async fn create_bucket(endpoint: &str, bucket: &str) {
    // moto creates a bucket on an unsigned PUT
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "create bucket: {}",
        response.status()
    );
}

pub(crate) async fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig {
        url: format!("file://{}", dir.path().join("objects").display()),
        ..StoreConfig::default()
    })
    .unwrap();
    Backend {
        store,
        _dir: dir,
        bucket: None,
    }
}

/// Credentials come from the environment, as in production; tests/moto.sh exports test ones
/// (moto accepts any).
pub(crate) async fn s3() -> Backend {
    let endpoint = s3_endpoint();
    let bucket = format!("terra-{}", uuid::Uuid::new_v4().simple());
    create_bucket(&endpoint, &bucket).await;
    let store = Store::open(&StoreConfig {
        url: format!("s3://{bucket}"),
        prefix: "terra".into(),
        s3_endpoint: Some(endpoint),
        s3_region: Some("us-east-1".into()),
        s3_path_style: true,
        allow_http: true,
        ..StoreConfig::default()
    })
    .unwrap();
    Backend {
        store,
        _dir: tempfile::tempdir().unwrap(),
        bucket: Some(bucket),
    }
}

/// A fresh container on the shared Azurite, reached with the emulator's account and key
/// (object_store's Azure client, as in production; the endpoint is passed as a setting
/// because a test cannot change its process's environment).
pub(crate) async fn azure() -> Backend {
    use terra_testkit::azurite;
    let url = azurite::url();
    let container = azurite::fresh_container();
    let created = {
        let (url, container) = (url.clone(), container.clone());
        tokio::task::spawn_blocking(move || azurite::create_container(&url, &container))
            .await
            .unwrap()
    };
    assert_eq!(created, 201);
    let store = Store::open(&StoreConfig {
        url: format!("az://{container}"),
        prefix: "terra".into(),
        allow_http: true,
        options: azurite::store_options(&url),
        ..StoreConfig::default()
    })
    .unwrap();
    assert_eq!(store.kind(), "azure");
    Backend {
        store,
        _dir: tempfile::tempdir().unwrap(),
        bucket: Some(container),
    }
}

pub(crate) fn log() -> (EventLog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        EventLog::Embedded(
            terra_eventlog::embedded::EmbeddedLog::open(&dir.path().join("log"), 3).unwrap(),
        ),
        dir,
    )
}

pub(crate) async fn project(log: &EventLog, sink: &mut ObjectSink, group: &str) -> WriteStats {
    let mut config = ProjectorConfig::new(group);
    config.batch_size = 5;
    config.batch_wait = Duration::from_millis(20);
    config.stop_at_end = true;
    let rx = CancellationToken::new();
    let metrics = ProjectorMetrics::unregistered();
    let run = terra_projector::run(&config, log, sink, &metrics, rx, |_| {});
    // an outage or a refusal is retried for ever: a guard against a hang, not a time limit
    // on the work (which takes a second or two)
    match tokio::time::timeout(Duration::from_secs(120), run).await {
        Ok(totals) => totals.unwrap(),
        Err(_) => panic!(
            "the projector did not reach the end of the log; the store refuses writes: {:?}",
            metrics.refusal("objects")
        ),
    }
}

pub(crate) async fn keys(store: &Store) -> BTreeSet<String> {
    store
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect::<BTreeSet<String>>()
        .await
        .unwrap()
        .into_iter()
        // the suffix rule's claim markers are not payloads
        .filter(|k| !k.split('/').any(|segment| segment == "_claims"))
        .collect()
}

pub(crate) async fn get(store: &Store, key: &str) -> Vec<u8> {
    store
        .object_store()
        .get(&ObjectPath::parse(key).unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// The sum of every sample of metric `name` in `registry`.
pub(crate) fn metric(registry: &prometheus_client::registry::Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
