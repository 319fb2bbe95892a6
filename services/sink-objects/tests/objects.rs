//! The object projection over a local folder, a real S3-compatible server (moto's, started
//! by tests/run-all.sh; `TERRA_TEST_S3_ENDPOINT`) and Azure's emulator (Azurite,
//! `TERRA_TEST_AZURITE_URL`), fed through a real embedded log.
//! The SQS pings are in `sqs.rs`, concurrent writers in `race.rs`.

use std::collections::BTreeSet;
use std::path::Path;

use terra_core::keys;
use terra_eventlog::Record;
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};

use terra_testkit::{T0, all_fixtures, fixture};

mod common;
use common::{Backend, azure, get, keys, local, log, project, record, s3};

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod local { $( #[tokio::test] async fn $name() { super::$name(super::local().await).await } )* }
        // `moto` in the name: tests/run-all.sh skips these without moto
        mod s3_on_moto { $( #[tokio::test] #[ignore = "needs an S3-compatible server: run tests/run-all.sh"] async fn $name() { super::$name(super::s3().await).await } )* }
        // `azurite` in the name: tests/run-all.sh skips these without Azurite
        mod azure_on_azurite { $( #[tokio::test] #[ignore = "needs Azurite: run tests/run-all.sh"] async fn $name() { super::$name(super::azure().await).await } )* }
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
        if c.group == terra_core::EventGroup::Data && !terra_core::is_report_scoped(&c.event_type) {
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
            let base = keys::event_payload_id(
                c.version.as_deref(),
                &c.event_type,
                c.user_id.as_deref(),
                T0 * 1000,
            );
            let key = if c.user_id.is_some() {
                backend.store.key(&base)
            } else {
                // without a user the id always carries its identity (keys' suffix rule)
                let planned = terra_projector::plan::plan_envelope(
                    terra_eventlog::Position {
                        partition: 0,
                        offset: 0,
                    },
                    &terra_testkit::envelope(body, Some(T0 * 1000), T0, None),
                );
                let terra_projector::plan::Plan::Event(event) = &planned.plan else {
                    panic!("{name} is poison");
                };
                let identity = &event.payloads[0].identity;
                backend.store.key(&keys::with_suffix(&base, identity))
            };
            assert_eq!(
                get(&backend.store, &key).await,
                *body,
                "{name}: stored as received"
            );
            expected.insert(key);
        }
    }
    let claims = format!("{prefix}_claims/");
    assert_eq!(
        keys(&backend.store)
            .await
            .into_iter()
            .filter(|k| !k.starts_with(&claims))
            .collect::<BTreeSet<_>>(),
        expected,
        "exactly Terra's layout, nothing else (beside the claim markers)"
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
        files > all_fixtures().len() + 2,
        "objects, dead letters and the versions index: {files}"
    );
    // the versions and claims are in the folder's index (and its WAL), private as the rest
    let index = dir.path().join("data/.objects-versions/_index.sqlite3");
    for file in [index.clone(), index.with_extension("sqlite3-wal")] {
        assert!(
            modes.iter().any(|(p, is_dir, _)| !is_dir && *p == file),
            "{} missing: {modes:?}",
            file.display()
        );
    }
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
