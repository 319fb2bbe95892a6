//! `--objects az://CONTAINER` with the real binary against Azure's emulator (Azurite,
//! started by tests/run-all.sh; `TERRA_TEST_AZURITE_URL`), configured as the README says:
//! `AZURE_STORAGE_USE_EMULATOR=true` and `AZURITE_BLOB_STORAGE_URL`. `standalone` stores
//! every fixture at Terra's key (every PUT was once answered 400: the version's metadata
//! name had dashes, which Azure refuses); `project objects` shows a container that does not
//! exist on `/readyz`, in `/metrics` and in an error line naming the cause, until it is made.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use terra_sink_objects::{Store, StoreConfig};
use terra_testkit::azurite;

use super::{BIN, start_with_env, terminate, terra_ingest, text};

/// The emulator settings a user gives (object_store reads them from the environment).
fn emulator_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_owned()),
        ("AZURITE_BLOB_STORAGE_URL", url.to_owned()),
    ]
}

/// The container as the tests read it (object_store's Azure client on its own settings).
fn reader(url: &str, container: &str) -> Store {
    Store::open(&StoreConfig {
        url: format!("az://{container}"),
        allow_http: true,
        options: azurite::store_options(url),
        ..StoreConfig::default()
    })
    .unwrap()
}

async fn listed(store: &Store) -> BTreeSet<String> {
    store
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        // the claim markers of the key suffix rule are not Terra's layout
        .try_filter(|k| std::future::ready(!k.starts_with("_claims/")))
        .try_collect()
        .await
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs Azurite: run tests/run-all.sh"]
async fn standalone_stores_every_fixture_on_azurite_with_the_emulator_settings() {
    let url = azurite::url();
    let container = azurite::fresh_container();
    azurite::create_container(&url, &container);
    let dir = tempfile::tempdir().unwrap();
    let objects = format!("az://{container}");
    let env = emulator_env(&url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = start_with_env(
        dir.path(),
        &[
            "standalone",
            "--grpc-addr",
            "127.0.0.1:0",
            "--objects",
            &objects,
            "--batch-wait-ms",
            "5",
        ],
        &env,
    );
    let webhook = format!("http://{}/webhook", server.addr);
    // key -> the bytes of the one fixture stored there (None: several fixtures share it)
    let mut expected: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut names: Vec<String> = std::fs::read_dir(format!("{}/webhooks", super::fixtures_dir()))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    for name in &names {
        let out = terra_ingest(
            dir.path(),
            &[
                "send",
                "--url",
                &webhook,
                "--fixture",
                name,
                "-H",
                "X-Terra-Ordering-Timestamp: 1780000000000",
            ],
        );
        assert!(
            text(&out.stdout).starts_with("200"),
            "{name}: {}",
            text(&out.stdout)
        );
        let body = terra_testkit::fixture(name);
        // the payload ids as the query test expects them (events without a user carry their
        // suffix); the body is stored whole when it makes one object
        let (ids, whole) = super::query::expected(&body);
        let keys: Vec<(String, bool)> = ids
            .iter()
            .map(|id| (terra_core::keys::object_key("", id), whole))
            .collect();
        for (key, whole) in keys {
            let bytes = whole.then(|| body.clone());
            expected
                .entry(key)
                .and_modify(|b| *b = None)
                .or_insert(bytes);
        }
    }
    let store = reader(&url, &container);
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    let mut got = listed(&store).await;
    while got != wanted {
        assert!(
            Instant::now() < deadline,
            "the container holds {} of {} objects: {got:?}",
            got.len(),
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = listed(&store).await;
    }
    let mut compared = 0;
    for (key, bytes) in &expected {
        let Some(bytes) = bytes else { continue };
        let path = object_store::path::Path::parse(key).unwrap();
        let stored = store
            .object_store()
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&stored[..], &bytes[..], "{key}: stored as received");
        compared += 1;
    }
    assert!(compared > 15, "{compared}");
    assert!(terminate(&mut server).success());
}

#[tokio::test]
#[ignore = "needs Azurite: run tests/run-all.sh"]
async fn project_objects_on_azurite_shows_a_missing_container_until_it_is_created() {
    let url = azurite::url();
    let container = azurite::fresh_container();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    {
        let log = terra_eventlog::EventLog::Embedded(
            terra_eventlog::embedded::EmbeddedLog::open(&log_dir, 2).unwrap(),
        );
        let records = ["sleep", "daily"]
            .iter()
            .map(|n| {
                terra_testkit::record(
                    &terra_testkit::fixture(n),
                    Some(terra_testkit::T0 * 1000),
                    terra_testkit::T0,
                    None,
                )
            })
            .collect();
        log.append(records).await.unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["project", "objects", "--http-addr", "127.0.0.1:0"])
        .arg("--log")
        .arg(format!("embedded:{}", log_dir.display()))
        .args(["--objects", &format!("az://{container}")])
        .envs(emulator_env(&url))
        .env("RUST_LOG", "warn,terra_ingest=info,terra_projector=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (stdout, lines) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap_or_default();
                if let Some(addr) = line.split("projector http listening addr=").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("projector did not start");
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            let r = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, why) = loop {
        let (status, why) = get("/readyz").await;
        if status == 503 {
            break (status, why);
        }
        assert!(Instant::now() < deadline, "never not ready: {status} {why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503);
    assert!(
        why.contains("refuses writes") && why.contains("404") && why.contains("ContainerNotFound"),
        "{why}"
    );
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("terra_ingest_projector_sink_refused{sink=\"objects\"} 1"),
        "{metrics}"
    );
    let logged = lines.lock().unwrap().clone();
    assert!(
        logged.iter().any(|l| l.contains("ERROR")
            && l.contains("the sink refuses writes")
            && l.contains("ContainerNotFound")),
        "{logged:#?}"
    );
    assert!(
        !logged.iter().any(|l| l.contains(azurite::ACCOUNT_KEY)),
        "no key in the log"
    );

    // the operator creates the container: the projector goes on by itself
    azurite::create_container(&url, &container);
    let store = reader(&url, &container);
    let deadline = Instant::now() + Duration::from_secs(60);
    while listed(&store).await.len() < 2 || get("/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not written after the container was made"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("terra_ingest_projector_sink_refused{sink=\"objects\"} 0"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
