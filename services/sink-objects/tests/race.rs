//! Two writers, one key (issue 11 §4): two object sinks (two projector processes, a rebuild
//! beside the live one) write an older and a newer copy of the same object at the same
//! moment. Whatever the interleaving, the newer copy is the one left, with its version,
//! on a local folder, on S3 (moto) and on Azure (Azurite): the write is conditional on what
//! was read, not checked and then put.

use std::sync::Arc;

use terra_eventlog::Position;
use terra_projector::Sink;
use terra_projector::plan::{Planned, plan_envelope};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig};
use terra_testkit::{FIXTURE_USER, T0, fixture};
use tokio::sync::Barrier;

mod common;
use common::{Backend, azure, get, local, s3};

macro_rules! on_every_store {
    ($($name:ident: $rounds:expr),* $(,)?) => {
        mod local { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(super::local().await, $rounds).await } )* }
        // `moto` in the name: tests/run-all.sh skips these without moto
        mod s3_on_moto { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] #[ignore = "needs an S3-compatible server: run tests/run-all.sh"] async fn $name() { super::$name(super::s3().await, $rounds).await } )* }
        // `azurite` in the name: tests/run-all.sh skips these without Azurite
        mod azure_on_azurite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] #[ignore = "needs Azurite: run tests/run-all.sh"] async fn $name() { super::$name(super::azure().await, $rounds).await } )* }
    };
}

on_every_store!(
    the_newer_copy_always_wins_a_race_with_an_older_writer: 300,
);

/// The sleep fixture for `user`, told apart by `is_nap` (`null` oldest, `false`, `true`
/// newest), planned at `ordering_ms` and `offset`.
fn copy(user: &str, is_nap: &str, ordering_ms: i64, offset: u64) -> (Planned, Vec<u8>) {
    let body = String::from_utf8(fixture("sleep"))
        .unwrap()
        .replace(FIXTURE_USER, user)
        .replace("\"is_nap\": false", &format!("\"is_nap\": {is_nap}"))
        .into_bytes();
    let envelope = terra_testkit::envelope(&body, Some(ordering_ms), T0, None);
    let position = Position {
        partition: 0,
        offset,
    };
    (plan_envelope(position, &envelope), body)
}

fn key_of(backend: &Backend, user: &str) -> String {
    let c = terra_core::classify(&fixture("sleep")).unwrap();
    backend.store.key(&terra_core::keys::data_payload_id(
        c.version.as_deref(),
        "sleep",
        user,
        &c.records[0],
    ))
}

/// A fresh sink (no cache: what is stored decides) writing `planned` once `start` opens.
fn writer(
    backend: &Backend,
    planned: Planned,
    start: Arc<Barrier>,
) -> tokio::task::JoinHandle<terra_projector::WriteStats> {
    let mut sink = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
    tokio::spawn(async move {
        start.wait().await;
        sink.write(&[planned]).await.unwrap()
    })
}

async fn the_newer_copy_always_wins_a_race_with_an_older_writer(backend: Backend, rounds: u32) {
    let ms = T0 * 1000;
    for round in 0..rounds {
        // a fresh key each round; every other round an old copy is there first, so the
        // replacement (If-Match, the version file's lock) races as well as the first write
        let user = format!("race-{round}");
        let key = key_of(&backend, &user);
        if round % 2 == 1 {
            let (oldest, _) = copy(&user, "null", ms - 1000, 0);
            let mut sink =
                ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
            assert_eq!(sink.write(&[oldest]).await.unwrap().payloads, 1);
        }
        let (older, _) = copy(&user, "false", ms, 1);
        let (newer, newer_body) = copy(&user, "true", ms + 1, 2);
        let start = Arc::new(Barrier::new(2));
        // which one is spawned first alternates too
        let (older, newer) = if round % 4 < 2 {
            let older = writer(&backend, older, start.clone());
            (older, writer(&backend, newer, start))
        } else {
            let newer = writer(&backend, newer, start.clone());
            (writer(&backend, older, start), newer)
        };
        let (older, newer) = (older.await.unwrap(), newer.await.unwrap());
        assert_eq!(
            newer.payloads, 1,
            "round {round}: the newer copy is always written"
        );
        assert_eq!(older.payloads + older.superseded, 1, "round {round}");
        assert_eq!(
            get(&backend.store, &key).await,
            newer_body,
            "round {round}: the newer copy is the one stored (older written: {})",
            older.payloads
        );
        // and its version went with it: a copy between the two is refused
        let (between, _) = copy(&user, "false", ms, 3);
        let mut sink = ObjectSink::new(backend.store.clone(), ObjectSinkConfig::default(), None);
        let stats = sink.write(&[between]).await.unwrap();
        assert_eq!(
            stats.superseded, 1,
            "round {round}: the stored version is the newer copy's"
        );
    }
}
