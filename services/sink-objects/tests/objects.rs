//! The object projection over a local folder and over a real S3-compatible server (moto's,
//! started by tests/run-all.sh; `TERRA_TEST_S3_ENDPOINT`), fed through a real embedded log.
//! SQS pings go to moto's SQS on the same port and are read back with the AWS SDK.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use terra_core::keys;
use terra_eventlog::{EventLog, Record};
use terra_projector::CancellationToken;
use terra_projector::{ProjectorConfig, ProjectorMetrics, WriteStats};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Pinger, SqsConfig, Store, StoreConfig};

use terra_testkit::{T0, all_fixtures, fixture};

fn record(body: &[u8], ordering_ms: Option<i64>) -> Record {
    terra_testkit::record(body, ordering_ms, T0, None)
}

struct Backend {
    store: Store,
    _dir: tempfile::TempDir,
    bucket: Option<String>,
}

fn s3_endpoint() -> String {
    std::env::var("TERRA_TEST_S3_ENDPOINT").expect("TERRA_TEST_S3_ENDPOINT must name an S3-compatible server (tests/run-all.sh starts moto and sets it)")
}

async fn create_bucket(endpoint: &str, bucket: &str) {
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

async fn local() -> Backend {
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
async fn s3() -> Backend {
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
    })
    .unwrap();
    Backend {
        store,
        _dir: tempfile::tempdir().unwrap(),
        bucket: Some(bucket),
    }
}

fn log() -> (EventLog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        EventLog::Embedded(
            terra_eventlog::embedded::EmbeddedLog::open(&dir.path().join("log"), 3).unwrap(),
        ),
        dir,
    )
}

async fn project(log: &EventLog, sink: &mut ObjectSink, group: &str) -> WriteStats {
    let mut config = ProjectorConfig::new(group);
    config.batch_size = 5;
    config.batch_wait = Duration::from_millis(20);
    config.stop_at_end = true;
    let rx = CancellationToken::new();
    terra_projector::run(
        &config,
        log,
        sink,
        &ProjectorMetrics::unregistered(),
        rx,
        |_| {},
    )
    .await
    .unwrap()
}

async fn keys(store: &Store) -> BTreeSet<String> {
    store
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

async fn get(store: &Store, key: &str) -> Vec<u8> {
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

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod local { $( #[tokio::test] async fn $name() { super::$name(super::local().await).await } )* }
        mod s3 { $( #[tokio::test] #[ignore = "needs an S3-compatible server: run tests/run-all.sh"] async fn $name() { super::$name(super::s3().await).await } )* }
    };
}

on_every_store!(
    every_fixture_lands_at_terras_key,
    older_copies_never_replace_newer_objects,
    poison_goes_to_the_dead_letter_path,
    hostile_user_ids_stay_inside_the_prefix,
);

async fn every_fixture_lands_at_terras_key(backend: Backend) {
    let (log, _dir) = log();
    let fixtures = all_fixtures();
    log.append(
        fixtures
            .iter()
            .map(|(_, b)| record(b, Some(T0 * 1000)))
            .collect(),
    )
    .await
    .unwrap();
    let mut sink = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
    let stats = project(&log, &mut sink, "objects").await;
    assert_eq!(stats.records, fixtures.len());
    assert_eq!(stats.dead, 0);

    let mut expected = BTreeSet::new();
    let prefix = backend.store.key("x").trim_end_matches("x.json").to_owned();
    for (name, body) in &fixtures {
        let c = terra_core::classify(body).unwrap();
        if c.group == terra_core::EventGroup::Data {
            let records: Vec<serde_json::Value> = if c.event_type == "athlete" {
                vec![]
            } else {
                serde_json::from_slice::<serde_json::Value>(body).unwrap()["data"]
                    .as_array()
                    .unwrap()
                    .clone()
            };
            for r in &c.records {
                let key = backend.store.key(&keys::data_payload_id(
                    c.version.as_deref(),
                    &c.event_type,
                    c.user_id.as_deref().unwrap(),
                    r,
                ));
                assert!(key.starts_with(&prefix));
                let stored = get(&backend.store, &key).await;
                if c.event_type == "athlete" || c.records.len() == 1 {
                    assert_eq!(
                        stored, *body,
                        "{name}: a single record is stored as received"
                    );
                } else {
                    let doc: serde_json::Value = serde_json::from_slice(&stored).unwrap();
                    assert_eq!(
                        doc["data"].as_array().unwrap(),
                        &vec![records[r.index].clone()],
                        "{name}"
                    );
                    assert_eq!(
                        doc["user"],
                        serde_json::from_slice::<serde_json::Value>(body).unwrap()["user"]
                    );
                    assert_eq!(doc["type"], c.event_type.as_str());
                }
                expected.insert(key);
            }
        } else {
            let key = backend.store.key(&keys::event_payload_id(
                c.version.as_deref(),
                &c.event_type,
                c.user_id.as_deref(),
                T0 * 1000,
            ));
            assert_eq!(
                get(&backend.store, &key).await,
                *body,
                "{name}: stored as received"
            );
            expected.insert(key);
        }
    }
    assert_eq!(
        keys(&backend.store).await,
        expected,
        "exactly Terra's layout, nothing else"
    );
    // a second pass over the same log (a crash before the commit) writes the same state
    let again = project(&log, &mut sink, "objects-replay").await;
    assert_eq!(again.superseded, 0);
    assert_eq!(keys(&backend.store).await, expected);
}

async fn older_copies_never_replace_newer_objects(backend: Backend) {
    let (log, _dir) = log();
    let sleep = String::from_utf8(fixture("sleep")).unwrap();
    let newer = sleep.replace("\"is_nap\": false", "\"is_nap\": true");
    log.append(vec![record(newer.as_bytes(), Some(T0 * 1000 + 500))])
        .await
        .unwrap();
    let mut sink = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
    project(&log, &mut sink, "objects").await;
    let c = terra_core::classify(sleep.as_bytes()).unwrap();
    let key = backend.store.key(&keys::data_payload_id(
        c.version.as_deref(),
        "sleep",
        c.user_id.as_deref().unwrap(),
        &c.records[0],
    ));
    assert_eq!(get(&backend.store, &key).await, newer.as_bytes());

    // an older copy arriving later, seen by a fresh process (no cache: the stored version decides)
    log.append(vec![record(sleep.as_bytes(), Some(T0 * 1000 - 500))])
        .await
        .unwrap();
    let mut fresh = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
    let stats = project(&log, &mut fresh, "objects").await;
    assert_eq!(stats.superseded, 1);
    assert_eq!(
        get(&backend.store, &key).await,
        newer.as_bytes(),
        "the newer object stays"
    );

    // a newer re-delivery overwrites the same key
    let newest = sleep.replace("\"is_nap\": false", "\"is_nap\": null");
    log.append(vec![record(newest.as_bytes(), Some(T0 * 1000 + 900))])
        .await
        .unwrap();
    let stats = project(&log, &mut fresh, "objects").await;
    assert_eq!(stats.payloads, 1);
    assert_eq!(get(&backend.store, &key).await, newest.as_bytes());
    assert_eq!(keys(&backend.store).await.len(), 1, "one object per record");
}

async fn poison_goes_to_the_dead_letter_path(backend: Backend) {
    let (log, _dir) = log();
    let positions = log
        .append(vec![
            record(b"\xff not json", None),
            record(&fixture("daily"), Some(T0 * 1000)),
        ])
        .await
        .unwrap();
    let mut sink = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
    let stats = project(&log, &mut sink, "objects").await;
    assert_eq!(stats.dead, 1);
    let stem = format!(
        "_dead-letters/{}-{}",
        positions[0].partition, positions[0].offset
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&get(&backend.store, &backend.store.key(&stem)).await).unwrap();
    assert!(
        meta["reason"].as_str().unwrap().contains("not JSON"),
        "{meta}"
    );
    let body_key = backend.store.key(&stem).replace(".json", ".body");
    assert_eq!(get(&backend.store, &body_key).await, b"\xff not json");
    assert_eq!(
        keys(&backend.store).await.len(),
        3,
        "the dead letter and the daily object"
    );
}

async fn hostile_user_ids_stay_inside_the_prefix(backend: Backend) {
    let (log, _dir) = log();
    let body = br#"{"type": "sleep", "version": "2022-03-16", "user": {"user_id": "../../../etc/passwd", "provider": "X"}, "data": [{"metadata": {"summary_id": "s", "start_time": "2026-10-01T01:00:00.000000+00:00"}}]}"#;
    log.append(vec![record(body, Some(T0 * 1000))])
        .await
        .unwrap();
    let mut sink = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
    project(&log, &mut sink, "objects").await;
    let listed = keys(&backend.store).await;
    let key = backend
        .store
        .key("2022-03-16/sleep/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd-2026-10-01T01:00:00Z");
    assert_eq!(listed, BTreeSet::from([key]));
    if backend.bucket.is_none() {
        // nothing was written outside the folder
        let parent = backend._dir.path();
        let entries: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            entries
                .iter()
                .all(|n| n == "objects" || n == ".objects-versions"),
            "{entries:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs an S3/SQS-compatible server: run tests/run-all.sh"]
async fn sqs_pings_carry_presigned_urls_to_the_exact_bytes() {
    let backend = s3().await;
    let endpoint = s3_endpoint();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&shared);
    let queue = sqs
        .create_queue()
        .queue_name(format!("terra-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .unwrap();
    let queue_url = queue.queue_url().unwrap().to_owned();
    let pinger = Pinger::connect(&SqsConfig {
        queue_url: queue_url.clone(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
    })
    .await;
    let (log, _dir) = log();
    log.append(vec![
        record(&fixture("activity"), Some(T0 * 1000)),
        record(&fixture("healthcheck"), Some(T0 * 1000)),
    ])
    .await
    .unwrap();
    let mut sink = ObjectSink::new(
        backend.store.clone(),
        ObjectSinkConfig {
            expires_in: Duration::from_secs(120),
        },
        Some(pinger),
    );
    let stats = project(&log, &mut sink, "objects").await;
    let records = terra_core::classify(&fixture("activity"))
        .unwrap()
        .records
        .len();
    assert_eq!(stats.payloads, records + 1);

    let mut messages = Vec::new();
    for _ in 0..10 {
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        messages.extend(
            got.messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_owned)),
        );
        if messages.len() > records {
            break;
        }
    }
    assert_eq!(messages.len(), records + 1, "{messages:?}");
    let mut downloaded = 0;
    for body in &messages {
        let ping: serde_json::Value = serde_json::from_str(body).unwrap();
        if ping["type"] == "healthcheck" {
            assert_eq!(
                body.as_bytes(),
                fixture("healthcheck").as_slice(),
                "the healthcheck goes as received"
            );
            continue;
        }
        assert_eq!(ping["status"], "success");
        assert_eq!(ping["type"], "s3_payload");
        assert_eq!(ping["expires_in"], 120);
        let reference = ping["payload_reference"].as_str().unwrap();
        // the URL is all the receiver needs: no credentials
        let url = ping["url"].as_str().unwrap();
        let fetched = reqwest::get(url).await.unwrap();
        assert!(fetched.status().is_success(), "{url}: {}", fetched.status());
        let bytes = fetched.bytes().await.unwrap();
        assert_eq!(
            bytes.as_ref(),
            get(&backend.store, &backend.store.key(reference))
                .await
                .as_slice(),
            "exact bytes"
        );
        downloaded += 1;
    }
    assert_eq!(downloaded, records);
}

/// Every file under `dir` (mode), every folder (mode), recursively.
fn modes_under(dir: &Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((
            path.clone(),
            meta.is_dir(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            out.extend(modes_under(&path));
        }
    }
    out
}

#[tokio::test]
async fn local_folder_objects_dead_letters_and_versions_are_private_under_umask_022() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let dir = tempfile::tempdir().unwrap();
    // the folder and its parent do not exist yet: the store makes them
    let root = dir.path().join("data/objects");
    let store = Store::open(&StoreConfig {
        url: format!("file://{}", root.display()),
        ..StoreConfig::default()
    })
    .unwrap();
    let (log, _log_dir) = log();
    let mut records: Vec<Record> = all_fixtures()
        .iter()
        .map(|(_, b)| record(b, Some(T0 * 1000)))
        .collect();
    records.push(record(b"\xff not json", None));
    // a newer copy rewrites an object and its version file
    records.push(record(&fixture("sleep"), Some(T0 * 1000 + 1)));
    log.append(records).await.unwrap();
    let mut sink = ObjectSink::new(store.clone(), ObjectSinkConfig::default(), None);
    let stats = project(&log, &mut sink, "objects").await;
    assert_eq!(stats.dead, 1);
    let modes = modes_under(&dir.path().join("data"));
    let files = modes.iter().filter(|(_, is_dir, _)| !is_dir).count();
    assert!(
        files > 2 * all_fixtures().len(),
        "objects, versions and dead letters: {files}"
    );
    for (path, is_dir, mode) in &modes {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
        assert!(
            !path.to_string_lossy().contains('#'),
            "staged file left: {}",
            path.display()
        );
    }
    assert!(
        modes
            .iter()
            .any(|(p, _, _)| p.ends_with(".objects-versions"))
    );
    assert!(
        modes
            .iter()
            .any(|(p, _, _)| p.to_string_lossy().contains("_dead-letters"))
    );
}

#[test]
fn an_objects_folder_left_readable_by_an_earlier_version_is_tightened_on_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let versions = dir.path().join(".objects-versions");
    for folder in [&root, &versions] {
        std::fs::create_dir(folder).unwrap();
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Store::open(&StoreConfig {
        url: root.display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    for folder in [&root, &versions] {
        let mode = std::fs::metadata(folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", folder.display());
    }
}
