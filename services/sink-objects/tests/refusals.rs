//! Store answers that will not pass by themselves (`terra_sink_objects`' `errors`): a
//! missing bucket or container, a wrong key, pause the projector without skipping anything
//! and are shown (`projector_sink_refused`, the cause for readiness) until a write
//! succeeds; an object the store refuses for its own size is dead-lettered alone. Real
//! servers: Azurite, moto, and nginx in front of moto with a body limit (as a proxy or
//! Supabase Storage's file size limit answers 413).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use terra_eventlog::EventLog;
use terra_projector::{CancellationToken, ProjectorConfig, ProjectorMetrics, WriteStats};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};
use terra_testkit::{T0, azurite, fixture};

mod common;
use common::{get, keys, log, metric, record, s3_endpoint};

/// The projector over `log` into `store` in the background, with its metrics.
struct Running {
    metrics: ProjectorMetrics,
    registry: Registry,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<WriteStats>,
}

fn spawn(log: &EventLog, store: &Store) -> Running {
    let mut registry = Registry::default();
    let metrics = ProjectorMetrics::register(&mut registry);
    let mut config = ProjectorConfig::new("objects");
    config.batch_size = 4;
    config.batch_wait = Duration::from_millis(20);
    config.backoff =
        terra_projector::Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    let stop = CancellationToken::new();
    let task = {
        let (log, store, metrics, stop) =
            (log.clone(), store.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sink = ObjectSink::new(store, ObjectSinkConfig::default(), None);
            terra_projector::run(&config, &log, &mut sink, &metrics, stop, |_| {})
                .await
                .unwrap()
        })
    };
    Running {
        metrics,
        registry,
        stop,
        task,
    }
}

impl Running {
    /// Waits for the first refusal and returns its cause.
    async fn refusal(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(cause) = self.metrics.refusal("objects") {
                return cause;
            }
            assert!(
                !self.task.is_finished(),
                "the projector stopped on a refusal"
            );
            assert!(Instant::now() < deadline, "no refusal reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> WriteStats {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

async fn wait_for_keys(store: &Store, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = keys_or_none(store).await;
        if listed >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{listed} of {count} objects written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn keys_or_none(store: &Store) -> usize {
    use futures::TryStreamExt;
    store
        .object_store()
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .map(|l| l.len())
        .unwrap_or(0)
}

/// Three deliveries of three users (three objects).
async fn three_records() -> (EventLog, tempfile::TempDir) {
    let (log, dir) = log();
    let records = ["a", "b", "c"]
        .iter()
        .map(|u| {
            let body = String::from_utf8(fixture("sleep"))
                .unwrap()
                .replace(terra_testkit::FIXTURE_USER, u);
            record(body.as_bytes(), Some(T0 * 1000))
        })
        .collect();
    log.append(records).await.unwrap();
    (log, dir)
}

/// Runs the projector into a bucket that does not exist yet: a refusal naming 404 and the
/// likely cause, shown by the gauge, until `create` makes the bucket; then everything is
/// written and the refusal is gone.
async fn a_missing_bucket_is_a_refusal_until_it_exists(
    store: Store,
    create: impl std::future::Future<Output = ()>,
    code: &str,
) {
    let (log, _dir) = three_records().await;
    let running = spawn(&log, &store);
    let cause = running.refusal().await;
    assert!(cause.contains("404"), "{cause}");
    assert!(cause.contains(code), "{cause}");
    assert!(
        cause.contains("does the bucket or container exist"),
        "{cause}"
    );
    assert_eq!(metric(&running.registry, "projector_sink_refused"), 1.0);
    assert!(metric(&running.registry, "projector_sink_errors") >= 1.0);

    create.await;
    wait_for_keys(&store, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.metrics.refusal("objects").is_some() {
        assert!(Instant::now() < deadline, "the refusal outlived the fix");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&running.registry, "projector_sink_refused"), 0.0);
    let totals = running.stop().await;
    assert_eq!((totals.records, totals.payloads, totals.dead), (3, 3, 0));
}

#[tokio::test]
#[ignore = "needs Azurite: run tests/run-all.sh"]
async fn a_missing_container_on_azurite_is_a_refusal_until_it_is_created() {
    let url = azurite::url();
    let container = azurite::fresh_container();
    let store = Store::open(&StoreConfig {
        url: format!("az://{container}"),
        allow_http: true,
        options: azurite::store_options(&url),
        ..StoreConfig::default()
    })
    .unwrap();
    let create = async move {
        tokio::task::spawn_blocking(move || azurite::create_container(&url, &container))
            .await
            .unwrap();
    };
    a_missing_bucket_is_a_refusal_until_it_exists(store, create, "ContainerNotFound").await;
}

#[tokio::test]
#[ignore = "needs an S3-compatible server: run tests/run-all.sh"]
async fn a_missing_bucket_on_moto_is_a_refusal_until_it_is_created() {
    let endpoint = s3_endpoint();
    let bucket = format!("terra-{}", uuid::Uuid::new_v4().simple());
    let store = Store::open(&StoreConfig {
        url: format!("s3://{bucket}"),
        s3_endpoint: Some(endpoint.clone()),
        s3_region: Some("us-east-1".into()),
        s3_path_style: true,
        allow_http: true,
        ..StoreConfig::default()
    })
    .unwrap();
    let create = async move { common::create_bucket(&endpoint, &bucket).await };
    a_missing_bucket_is_a_refusal_until_it_exists(store, create, "NoSuchBucket").await;
}

#[tokio::test]
#[ignore = "needs Azurite: run tests/run-all.sh"]
async fn a_wrong_key_on_azurite_is_a_refusal_naming_403_and_not_the_key() {
    let url = azurite::url();
    let container = azurite::fresh_container();
    azurite::create_container(&url, &container);
    // a well-formed key that is not the account's
    let wrong = "c2VjcmV0LWtleS10aGF0LWlzLW5vdC10aGUtYWNjb3VudHMtc2VjcmV0LWtleS0xMjM0NQ==";
    let mut options = azurite::store_options(&url);
    for (key, value) in &mut options {
        if key == "azure_storage_account_key" {
            *value = wrong.into();
        }
    }
    let store = Store::open(&StoreConfig {
        url: format!("az://{container}"),
        allow_http: true,
        options,
        ..StoreConfig::default()
    })
    .unwrap();
    let (log, _dir) = three_records().await;
    let running = spawn(&log, &store);
    let cause = running.refusal().await;
    // the first request is the GET of the key's claim or the HEAD of the object; the
    // cause names the status whether or not the answer carried an Azure error code
    assert!(
        (cause.contains("HEAD") || cause.contains("GET")) && cause.contains("answered 403"),
        "{cause}"
    );
    assert!(cause.contains("credentials"), "{cause}");
    assert!(
        !cause.contains(wrong) && !cause.contains("c2VjcmV0"),
        "{cause}"
    );
    assert!(!cause.contains("is_nap"), "no body in the cause: {cause}");
    assert_eq!(metric(&running.registry, "projector_sink_refused"), 1.0);
    let totals = running.stop().await;
    assert_eq!(totals.records, 0, "nothing skipped, nothing dead-lettered");
}

/// nginx as a reverse proxy in front of moto, refusing request bodies over `limit` with 413
/// (`client_max_body_size`), killed on drop (its folder with it).
struct Nginx(Child, #[allow(dead_code)] tempfile::TempDir);

impl Nginx {
    fn start(upstream: &str, limit: &str) -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size {limit};
    location / {{ proxy_pass {upstream}; proxy_set_header Host $http_host; }}
  }}
}}
"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian nginx-light; tests/run-all.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        (Self(child, dir), format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "needs an S3-compatible server: run tests/run-all.sh"]
async fn an_object_over_a_proxy_body_limit_on_moto_is_dead_lettered_alone() {
    let upstream = s3_endpoint();
    let bucket = format!("terra-{}", uuid::Uuid::new_v4().simple());
    common::create_bucket(&upstream, &bucket).await;
    let (_nginx, endpoint) = Nginx::start(&upstream, "4k");
    let store = Store::open(&StoreConfig {
        url: format!("s3://{bucket}"),
        s3_endpoint: Some(endpoint),
        s3_region: Some("us-east-1".into()),
        s3_path_style: true,
        allow_http: true,
        ..StoreConfig::default()
    })
    .unwrap();
    let (log, _dir) = log();
    let sleep = String::from_utf8(fixture("sleep")).unwrap();
    // the same delivery with a 6 KiB field: over the proxy's limit, object and body alike
    let large = sleep.replace(
        "\"is_nap\": false",
        &format!("\"is_nap\": false, \"pad\": \"{}\"", "x".repeat(6 * 1024)),
    );
    let large = large.replace(terra_testkit::FIXTURE_USER, "large-user");
    let positions = log
        .append(vec![
            record(fixture("daily").as_slice(), Some(T0 * 1000)),
            record(large.as_bytes(), Some(T0 * 1000)),
            record(sleep.as_bytes(), Some(T0 * 1000)),
        ])
        .await
        .unwrap();
    let running = spawn(&log, &store);
    wait_for_keys(&store, 3).await;
    assert_eq!(
        metric(&running.registry, "projector_sink_refused"),
        0.0,
        "one record's rejection is not a refusal of the store"
    );
    let totals = running.stop().await;
    assert_eq!((totals.records, totals.payloads, totals.dead), (3, 2, 1));

    let listed = keys(&store).await;
    let stem = format!(
        "_dead-letters/{}-{}",
        positions[1].partition, positions[1].offset
    );
    let letter_key = store.key(&stem);
    assert!(listed.contains(&letter_key), "{listed:?}");
    assert!(
        !listed.iter().any(|k| k.ends_with(".body")),
        "the body is over the limit too: {listed:?}"
    );
    assert!(
        !listed.iter().any(|k| k.contains("large-user")),
        "{listed:?}"
    );
    let letter: serde_json::Value =
        serde_json::from_slice(&get(&store, &letter_key).await).unwrap();
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("413"), "{letter}");
    assert!(
        letter["body_not_stored"].as_str().unwrap().contains("413"),
        "{letter}"
    );
    assert!(
        !letter.to_string().contains("xxxx"),
        "no body in the letter"
    );
}
