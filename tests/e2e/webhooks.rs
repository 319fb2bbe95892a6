//! The webhook destination as an operator runs it (`terra-ingest project webhooks`), killed
//! with SIGKILL at random points while it delivers: afterwards every (event, endpoint) pair
//! is delivered (the receiver verified each with Terra's rules), none lost, none left pending,
//! as in a clean run of the same log.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Row;

use super::{BIN, distinct_activity, fixtures_dir, post_signed, start};

const SECRET: &str = "whsec_e2e_webhooks";

/// A receiver on loopback: verifies `terra-signature` with terra-core's verifier and records
/// the `seq` of every verified body; answers after `delay`; the first attempt of every fifth
/// event gets a 500.
#[derive(Clone, Default)]
struct Received {
    verified: Arc<Mutex<Vec<String>>>,
    unsigned: Arc<Mutex<usize>>,
}

async fn receiver(delay: Duration) -> (String, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = received.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let verifier = terra_core::signature::Verifier::new(
                    vec![terra_core::SigningSecret::new(SECRET).unwrap()],
                    300,
                );
                let header = headers.get("terra-signature").and_then(|v| v.to_str().ok());
                let now = terra_core::keys::now_ms() / 1000;
                if verifier.verify(header, &body, now).is_err() {
                    *state.unsigned.lock().unwrap() += 1;
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let seq = json["seq"].as_str().unwrap().to_owned();
                let first = {
                    let mut verified = state.verified.lock().unwrap();
                    let first = !verified.contains(&seq);
                    verified.push(seq.clone());
                    first
                };
                tokio::time::sleep(delay).await;
                let n: u64 = seq.parse().unwrap();
                if first && n.is_multiple_of(5) {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

/// `n` distinct signed activity webhooks through `terra-ingest ingress` into `d/log`.
async fn fill_log(cwd: &Path, n: usize) {
    let server = start(
        cwd,
        &["ingress", "--signing-secret", SECRET, "--data-dir", "d"],
    );
    let url = format!("http://{}/webhook", server.addr);
    let template = std::fs::read(format!("{}/webhooks/activity.json", fixtures_dir())).unwrap();
    let signer = terra_core::SigningSecret::new(SECRET).unwrap();
    let client = reqwest::Client::new();
    for seq in 0..n {
        let body = distinct_activity(&template, &seq.to_string());
        let response = post_signed(&client, &url, &signer, body).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    drop(server);
}

fn project(cwd: &Path, db: &str, url: &str) -> Child {
    std::fs::write(cwd.join("secret"), SECRET).unwrap();
    Command::new(BIN)
        .args([
            "project",
            "webhooks",
            "--log",
            "embedded:d/log",
            "--sql",
            &format!("sqlite://{}", cwd.join(db).display()),
            "--webhook-url",
            url,
            "--webhook-secret-file",
            "secret",
            "--webhook-allow-cidr",
            "127.0.0.0/8",
            "--webhook-retry-schedule",
            "0s,100ms,200ms,300ms,400ms,500ms,1s,1s",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Every delivery's state, by the body's envelope id.
async fn states(cwd: &Path, db: &str) -> BTreeMap<String, String> {
    let url = format!("sqlite://{}?mode=ro", cwd.join(db).display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return BTreeMap::new();
    };
    let rows = sqlx::query("SELECT envelope_id, state FROM webhook_deliveries")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect()
}

async fn run_until_done(cwd: &Path, db: &str, url: &str, n: usize) -> BTreeMap<String, String> {
    let mut child = project(cwd, db, url);
    let started = Instant::now();
    let done = loop {
        let states = states(cwd, db).await;
        if states.len() == n && states.values().all(|s| s != "pending") {
            break Ok(states);
        }
        if started.elapsed() > Duration::from_secs(120) {
            break Err(format!(
                "not done in 120 s: {} deliveries, {} pending",
                states.len(),
                states.values().filter(|s| *s == "pending").count()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    done.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_delivery() {
    let cwd = tempfile::tempdir().unwrap();
    let n = 300;
    fill_log(cwd.path(), n).await;
    // a slow receiver (100 ms an answer), so the kills land while deliveries are in flight
    let (url, received) = receiver(Duration::from_millis(100)).await;
    // killed at random moments (from the clock's nanoseconds) while it fans out and delivers
    for round in 0..5 {
        let mut child = project(cwd.path(), "killed.db", &url);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let wait = 150 + u64::from(nanos % 700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let states = states(cwd.path(), "killed.db").await;
        eprintln!(
            "round {round}: killed after {wait} ms: {} deliveries, {} ended, {} requests so far",
            states.len(),
            states.values().filter(|s| *s != "pending").count(),
            received.verified.lock().unwrap().len()
        );
    }
    let killed = run_until_done(cwd.path(), "killed.db", &url, n).await;
    assert!(killed.values().all(|s| s == "delivered"), "{killed:?}");
    let verified: HashSet<String> = received.verified.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        verified.len(),
        n,
        "every event reached the receiver, signed"
    );
    assert_eq!(*received.unsigned.lock().unwrap(), 0);
    let requests = received.verified.lock().unwrap().len();
    eprintln!(
        "{requests} requests for {n} events ({} retries of every fifth, the rest sent again after a kill)",
        n / 5
    );

    // the same log, never killed: the same pairs end the same way
    let (clean_url, _clean) = receiver(Duration::ZERO).await;
    let clean = run_until_done(cwd.path(), "clean.db", &clean_url, n).await;
    assert_eq!(
        killed.keys().collect::<Vec<_>>(),
        clean.keys().collect::<Vec<_>>()
    );
    assert_eq!(killed, clean);
}
