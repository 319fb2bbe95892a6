//! `terra-bench sql`: a benchmark, not a test (it prints numbers, asserts nothing).
//!
//! 1. Fills a fresh embedded log with realistic mixed events: data webhooks of several
//!    records each (activity, sleep, daily, body, nutrition, shaped like Terra's), spread over
//!    many users, with re-deliveries and authentication and other events mixed in.
//! 2. Per database (Postgres, MySQL/MariaDB; each in a fresh database): projects the whole
//!    log with the SQL projector, then bulk-loads the same rows with plain multi-row INSERTs
//!    and no projector logic, and prints both rates and their ratio.
//! 3. Runs `terra-ingest standalone --sql <postgres>` and sends signed webhooks at a fixed rate, measuring
//!    the time from each 2xx to its rows being visible (the projector's positions, written in
//!    the same transaction as the rows, reaching the record).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sqlx::Executor;
use terra_eventlog::EventLog;
use terra_projector::{ProjectorConfig, ProjectorMetrics};
use terra_schema::{SqlConfig, SqlTarget};
use terra_sink_sql::SqlSink;
use tokio::sync::watch;

use crate::deliveries::Deliveries;
use crate::load::{LoadShape, database_url, fill};
use crate::process::{ChildGuard, TerraIngestArg, free_addr, wait_until_up};
use crate::raw_load::raw_load;

/// `Debug` shows the server URLs without passwords.
#[derive(clap::Args)]
pub struct SqlArgs {
    /// Postgres server to benchmark (a fresh database is created and dropped); "" skips it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres: String,
    /// MySQL / MariaDB server to benchmark; "" skips it.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/test")]
    pub mysql: String,
    /// Data records in the pre-filled log.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Data records per webhook.
    #[arg(long, default_value_t = 10)]
    pub per_webhook: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    /// Log records per projector batch.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Webhooks per second for the latency run (0 skips it).
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The binary the latency run starts (`standalone`).
    #[command(flatten)]
    pub terra_ingest: TerraIngestArg,
}

impl std::fmt::Debug for SqlArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlArgs")
            .field("postgres", &terra_schema::redact(&self.postgres))
            .field("mysql", &terra_schema::redact(&self.mysql))
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn run(args: SqlArgs) -> anyhow::Result<ExitCode> {
    if args.records == 0 || args.per_webhook == 0 || args.users == 0 || args.batch_size == 0 {
        bail!("--records, --per-webhook, --users and --batch-size must be at least 1");
    }
    // found before the long part, not after it
    let terra_ingest = match args.rate > 0 && !args.postgres.is_empty() {
        true => Some(args.terra_ingest.binary()?),
        false => None,
    };
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
    let started = Instant::now();
    let log = EventLog::Embedded(terra_eventlog::embedded::EmbeddedLog::open(
        &dir.path().join("log"),
        4,
    )?);
    let filled = fill(
        &log,
        &LoadShape {
            records: args.records,
            per_webhook: args.per_webhook,
            users: args.users,
        },
    )
    .await?;
    println!(
        "terra-bench sql: log of {} records ({} webhooks carrying {} data records, {} other events, {} re-deliveries), {} users, {:.0} MB, filled in {:.1} s",
        filled.log_records,
        filled.data_webhooks,
        filled.data_records,
        filled.other_events,
        filled.redeliveries,
        args.users,
        filled.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<10} {:>16} {:>14} {:>16} {:>12} {:>7}",
        "database", "projector rec/s", "projector s", "raw load rec/s", "raw load s", "ratio"
    );
    for (name, server) in [("postgres", &args.postgres), ("mysql", &args.mysql)] {
        if server.is_empty() {
            continue;
        }
        let (url, db) = fresh_database(server).await?;
        let result = measure(&log, &url, &args).await;
        drop_database(server, &db).await;
        let m = result.with_context(|| format!("{name} benchmark failed"))?;
        println!(
            "{:<10} {:>16.0} {:>14.1} {:>16.0} {:>12.1} {:>7.2}",
            name,
            m.rows as f64 / m.projector_s,
            m.projector_s,
            m.rows as f64 / m.raw_s,
            m.raw_s,
            m.raw_s / m.projector_s
        );
    }
    drop(log);
    if let Some(terra_ingest) = terra_ingest {
        latency(&args, &terra_ingest).await?;
    }
    Ok(ExitCode::SUCCESS)
}

struct Measured {
    rows: usize,
    projector_s: f64,
    raw_s: f64,
}

async fn measure(log: &EventLog, url: &str, args: &SqlArgs) -> anyhow::Result<Measured> {
    let target = SqlTarget::connect(&SqlConfig::new(url))?;
    terra_schema::migrate(&target).await?;
    let mut config = ProjectorConfig::new(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    config.batch_size = args.batch_size;
    config.stop_at_end = true;
    config.batch_wait = Duration::from_millis(10);
    let mut sink = SqlSink::new(target.clone());
    let stopped = terra_projector::CancellationToken::new();
    let started = Instant::now();
    terra_projector::run(
        &config,
        log,
        &mut sink,
        &ProjectorMetrics::unregistered(),
        stopped,
        |_| {},
    )
    .await?;
    let projector_s = started.elapsed().as_secs_f64();

    // the same rows, planned up front (not timed), bulk-inserted into fresh tables
    let raw = target.with_prefix("raw_")?;
    terra_schema::migrate(&raw).await?;
    let mut consumer = log.consumer(&format!("bench-raw-{}", uuid::Uuid::new_v4().simple()))?;
    let mut planned = Vec::new();
    loop {
        let batch = consumer.poll(10_000, Duration::from_millis(50)).await?;
        if batch.is_empty() {
            break;
        }
        planned.extend(batch.iter().map(terra_projector::plan::plan));
    }
    let started = Instant::now();
    let rows = raw_load(&raw, &planned, args.batch_size * args.per_webhook).await?;
    let raw_s = started.elapsed().as_secs_f64();
    target.close().await;
    Ok(Measured {
        rows,
        projector_s,
        raw_s,
    })
}

pub(crate) async fn fresh_database(server: &str) -> anyhow::Result<(String, String)> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::AnyPool::connect(server)
        .await
        .with_context(|| format!("failed to connect to {}", terra_schema::redact(server)))?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    admin.close().await;
    Ok((database_url(server, &name), name))
}

pub(crate) async fn drop_database(server: &str, name: &str) {
    if let Ok(admin) = sqlx::AnyPool::connect(server).await {
        let force = if server.starts_with("postgres") {
            " WITH (FORCE)"
        } else {
            ""
        };
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {name}{force}").as_str())
            .await;
        admin.close().await;
    }
}

/// Ingress 2xx to rows visible, in standalone mode at a fixed request rate.
async fn latency(args: &SqlArgs, terra_ingest: &Path) -> anyhow::Result<()> {
    let (url, db) = fresh_database(&args.postgres).await?;
    let result = latency_on(&url, args, terra_ingest).await;
    drop_database(&args.postgres, &db).await;
    let (mut latencies, sent, failed) = result?;
    latencies.sort_unstable_by(f64::total_cmp);
    let at = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "standalone latency, 2xx to row visible in Postgres at {} webhooks/s for {} s: {} sent, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.rate,
        args.seconds,
        sent,
        failed,
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

type LatencyResult = (Vec<f64>, usize, usize);

async fn latency_on(
    url: &str,
    args: &SqlArgs,
    terra_ingest: &Path,
) -> anyhow::Result<LatencyResult> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr()?;
    let secret = "whsec_bench_latency";
    let _server = ChildGuard(
        Command::new(terra_ingest)
            .args([
                "standalone",
                "--http-addr",
                &addr.to_string(),
                "--signing-secret",
                secret,
                "--sql",
                url,
                "--batch-wait-ms",
                "2",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    wait_until_up(addr, "/readyz").await?;
    let target = SqlTarget::connect(&SqlConfig::new(url))?;
    let requests = Deliveries::new(secret);
    // (partition, offset, time of the 2xx) of every acknowledged webhook
    let acked: Arc<Mutex<Vec<(u32, u64, Instant)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let (done_tx, done_rx) = watch::channel(false);

    // the watcher: the projector's positions (written with the rows), polled every 2 ms
    let watcher = {
        let acked = Arc::clone(&acked);
        let target = target.clone();
        let mut done_rx = done_rx.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seen: Vec<bool> = Vec::new();
            let mut next = 0usize;
            loop {
                let positions = terra_schema::positions::stored(&target)
                    .await
                    .unwrap_or_default();
                let now = Instant::now();
                let list = acked.lock().expect("poisoned").clone();
                seen.resize(list.len(), false);
                for (i, (p, o, t)) in list.iter().enumerate().skip(next) {
                    if !seen[i] && positions.get(p).is_some_and(|&n| n > *o) {
                        seen[i] = true;
                        latencies.push(now.duration_since(*t).as_secs_f64() * 1000.0);
                    }
                }
                while next < seen.len() && seen[next] {
                    next += 1;
                }
                if *done_rx.borrow() && next == seen.len() {
                    return latencies;
                }
                let _ = tokio::time::timeout(Duration::from_millis(2), done_rx.changed()).await;
            }
        })
    };

    // open loop: one request every 1/rate s, over 32 keep-alive connections
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let total = args.rate as usize * args.seconds as usize;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pace = Arc::new(tokio::sync::Mutex::new(ticker));
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (requests, acked, failed, issued, pace) = (
            requests.clone(),
            Arc::clone(&acked),
            Arc::clone(&failed),
            Arc::clone(&issued),
            Arc::clone(&pace),
        );
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            loop {
                pace.lock().await.tick().await;
                let i = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let request = requests.request("/webhook", i as u64)?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                let body = response.into_body().collect().await?.to_bytes();
                let at = Instant::now();
                let parsed: Option<Value> = serde_json::from_slice(&body).ok();
                match parsed.filter(|_| ok) {
                    Some(v) => acked.lock().expect("poisoned").push((
                        v["partition"].as_u64().unwrap_or(0) as u32,
                        v["offset"].as_u64().unwrap_or(0),
                        at,
                    )),
                    None => *failed.lock().expect("poisoned") += 1,
                }
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let _ = done_tx.send(true);
    let latencies = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .context("rows did not become visible within 60 s")??;
    target.close().await;
    let failed = *failed.lock().expect("poisoned");
    Ok((latencies, total, failed))
}
