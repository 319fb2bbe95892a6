//! The SQL projector as a real process: kill -9 at random points under load against the
//! machine's Postgres, the operator commands (`migrate`, `rebuild sql`), and `standalone`
//! projecting into Postgres.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use terra_eventlog::{EventLog, Record};
use terra_schema::{SqlConfig, SqlTarget};

use super::{BIN, start, terminate, terra_ingest, text};

use terra_testkit::TestDb;

/// A fresh database on the machine's Postgres.
async fn fresh_postgres() -> TestDb {
    TestDb::new(terra_schema::Dialect::Postgres).await
}

fn fixture_bodies() -> Vec<Vec<u8>> {
    terra_testkit::all_fixtures()
        .into_iter()
        .map(|(_, body)| body)
        .collect()
}

/// A log record as the ingress writes it.
fn record(body: Vec<u8>, ordering_ms: i64) -> Record {
    terra_testkit::record(&body, Some(ordering_ms), terra_testkit::T0, None)
}

/// Realistic mixed load: every fixture for many users, re-deliveries, older copies arriving
/// late, a non-JSON body.
fn mixed_records(users: usize) -> Vec<Record> {
    const FIXTURE_USER: &str = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
    let bodies = fixture_bodies();
    let mut out = Vec::new();
    for u in 0..users {
        let user = format!("{:08x}-77f1-4b8e-9f0a-2b6c41e5d7a3", u);
        for (i, body) in bodies.iter().enumerate() {
            let body = String::from_utf8(body.clone())
                .unwrap()
                .replace(FIXTURE_USER, &user)
                .into_bytes();
            let ts = 1_780_000_000_000 + (u * 100 + i) as i64;
            out.push(record(body.clone(), ts));
            if i % 4 == 0 {
                out.push(record(body.clone(), ts + 50)); // a newer re-delivery
                out.push(record(body, ts - 50)); // an older copy arriving late
            }
        }
        if u % 10 == 0 {
            out.push(record(b"<html>not json</html>".to_vec(), 0));
        }
    }
    out
}

async fn fill_log(dir: &Path, records: Vec<Record>) -> usize {
    let log = EventLog::Embedded(terra_eventlog::embedded::EmbeddedLog::open(dir, 4).unwrap());
    let n = records.len();
    for chunk in records.chunks(500) {
        log.append(chunk.to_vec()).await.unwrap();
    }
    n
}

fn spawn_projector(log_dir: &Path, url: &str, extra: &[&str]) -> Child {
    spawn_projector_with(log_dir, url, extra, Stdio::null())
}

/// Starts a projector and waits until it serves HTTP (its signal handlers are in place).
fn spawn_projector_ready(log_dir: &Path, url: &str) -> Child {
    use std::io::{BufRead, BufReader};
    let mut child = spawn_projector_with(log_dir, url, &[], Stdio::piped());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line
                .unwrap_or_default()
                .contains("projector http listening")
            {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("projector did not start");
    child
}

fn spawn_projector_with(log_dir: &Path, url: &str, extra: &[&str], stdout: Stdio) -> Child {
    Command::new(BIN)
        .args([
            "project",
            "sql",
            "--migrate",
            "--http-addr",
            "127.0.0.1:0",
            "--batch-size",
            "40",
        ])
        .arg("--log")
        .arg(format!("embedded:{}", log_dir.display()))
        .args(["--sql", url])
        .args(extra)
        .env("RUST_LOG", "warn,terra_ingest=info")
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn projected(target: &SqlTarget) -> u64 {
    terra_schema::positions::stored(target)
        .await
        .map(|p| p.values().sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn kill_9_of_the_sql_projector_at_random_points_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let total = fill_log(&log_dir, mixed_records(80)).await as u64;
    let crash_db = fresh_postgres().await;
    let crash_url = crash_db.url.clone();
    let crash = SqlTarget::connect(&SqlConfig::new(&crash_url)).unwrap();

    // a cheap, seeded generator: the seed is printed so a failure can be replayed
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill -9 schedule seed: {seed}");
    let mut next = move |bound: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % bound
    };
    let mut kills = 0;
    let mut progress = Vec::new();
    for _ in 0..6 {
        // kill once the projector got past a random point of what is left (polled every few
        // ms, so the kill lands mid-batch or between batches), not after a fixed time: a
        // faster projector must not finish before the first kill
        let before = projected(&crash).await;
        let target = before + 1 + next(((total - before) / 2).max(1));
        let mut child = spawn_projector(&log_dir, &crash_url, &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while projected(&crash).await < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1 + next(5))).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let done = projected(&crash).await;
        progress.push(done);
        if done == total {
            break;
        }
    }
    println!("killed {kills} times; positions after each kill: {progress:?} of {total}");
    assert!(
        progress.iter().any(|&p| p > 0 && p < total),
        "at least one kill landed mid-run: {progress:?}"
    );

    // restart and let it finish
    let mut child = spawn_projector_ready(&log_dir, &crash_url);
    let deadline = Instant::now() + Duration::from_secs(120);
    while projected(&crash).await < total {
        assert!(Instant::now() < deadline, "projector did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "a SIGTERM stop exits 0");

    // a clean, uninterrupted run of the same log
    let clean_db = fresh_postgres().await;
    let clean_url = clean_db.url.clone();
    let clean = SqlTarget::connect(&SqlConfig::new(&clean_url)).unwrap();
    let mut child = spawn_projector(&log_dir, &clean_url, &[]);
    while projected(&clean).await < total {
        assert!(Instant::now() < deadline, "clean projector did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let crashed = terra_schema::snapshot(&crash).await.unwrap();
    let uninterrupted = terra_schema::snapshot(&clean).await.unwrap();
    assert!(
        uninterrupted[1].len() > 400,
        "a real load: {} data rows",
        uninterrupted[1].len()
    );
    assert_eq!(crashed.len(), uninterrupted.len());
    for (table, (a, b)) in crashed.iter().zip(&uninterrupted).enumerate() {
        assert_eq!(
            a.len(),
            b.len(),
            "table #{table}: no missing row, no duplicate"
        );
        assert_eq!(a, b, "table #{table}: same final state");
    }
    crash.close().await;
    clean.close().await;
    crash_db.drop_now().await;
    clean_db.drop_now().await;
}

#[tokio::test]
async fn migrate_project_and_rebuild_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let log_dir = cwd.join("log");
    let total = fill_log(&log_dir, mixed_records(3)).await as u64;
    let url = format!("sqlite://{}", cwd.join("t.db").display());
    let log_flag = format!("embedded:{}", log_dir.display());

    // without migrations the projector refuses to start, and says what to do
    let out = terra_ingest(
        cwd,
        &[
            "project",
            "sql",
            "--sql",
            &url,
            "--log",
            &log_flag,
            "--http-addr",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("terra-ingest migrate"),
        "{}",
        text(&out.stderr)
    );

    let out = terra_ingest(cwd, &["migrate", "--sql", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("6 migration(s) applied"),
        "{}",
        text(&out.stdout)
    );
    let out = terra_ingest(cwd, &["migrate", "--sql", &url]);
    assert!(
        text(&out.stdout).contains("0 migration(s) applied, 6 already present"),
        "{}",
        text(&out.stdout)
    );

    let target = SqlTarget::connect(&SqlConfig::new(&url)).unwrap();
    let mut child = spawn_projector(&log_dir, &url, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while projected(&target).await < total {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let live = terra_schema::snapshot(&target).await.unwrap();

    let out = terra_ingest(
        cwd,
        &[
            "rebuild",
            "sql",
            "--sql",
            &url,
            "--log",
            &log_flag,
            "--keep-old",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("rebuilt {total} log records")),
        "{stdout}"
    );
    assert!(stdout.contains("old tables are kept as old"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rebuild sql [") && stderr.contains("100.0%") && stderr.contains("ETA"),
        "progress bar: {stderr}"
    );
    assert_eq!(
        terra_schema::snapshot(&target).await.unwrap(),
        live,
        "rebuilt tables equal the live ones"
    );

    // a bad URL names the setting
    let out = terra_ingest(cwd, &["migrate", "--sql", "oracle://scott:tiger@db/x"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("setting sql") && !stderr.contains("tiger"),
        "{stderr}"
    );
}

#[tokio::test]
async fn standalone_projects_into_postgres_with_the_sql_flag() {
    let db = fresh_postgres().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        &[
            "standalone",
            "--sql",
            &url,
            "--batch-wait-ms",
            "5",
            // not the default gRPC port: the zero-config test has it, in parallel
            "--grpc-addr",
            "127.0.0.1:0",
        ],
    );
    let webhook = format!("http://{}/webhook", server.addr);
    for name in ["auth", "sleep", "activity", "deauth", "user_reauth"] {
        let out = terra_ingest(dir.path(), &["send", "--url", &webhook, "--fixture", name]);
        assert!(
            text(&out.stdout).starts_with("200"),
            "{name}: {}",
            text(&out.stdout)
        );
    }
    let target = SqlTarget::connect(&SqlConfig::new(&url)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while projected(&target).await < 5 {
        assert!(Instant::now() < deadline, "rows did not appear");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = terra_schema::rows(
        &target,
        "SELECT user_id, state FROM terra.terra_users ORDER BY user_id",
    )
    .await
    .unwrap();
    assert!(
        users.contains(&vec![
            Some("e4d3c2b1-a098-4765-8321-0fedcba98765".into()),
            Some("user_reauth".into())
        ]),
        "{users:?}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("terra_ingest_projector_records_total{sink=\"sql\"} 5"),
        "{metrics}"
    );
    assert!(terminate(&mut server).success());
    target.close().await;
    db.drop_now().await;
}
