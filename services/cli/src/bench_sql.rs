//! `terra-ingest bench sql`: a benchmark, not a test (it prints numbers, asserts nothing).
//!
//! 1. Fills a fresh embedded log with realistic mixed events: data webhooks of several
//!    records each (activity, sleep, daily, body, nutrition, shaped like Terra's), spread over
//!    many users, with re-deliveries and authentication and other events mixed in.
//! 2. Per database (Postgres, MySQL/MariaDB; each in a fresh database): projects the whole
//!    log with the SQL projector, then bulk-loads the same rows with plain multi-row INSERTs
//!    and no projector logic, and prints both rates and their ratio.
//! 3. Runs `standalone --sql <postgres>` and sends signed webhooks at a fixed rate, measuring
//!    the time from each 2xx to its rows being visible (the projector's positions, written in
//!    the same transaction as the rows, reaching the record).

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use prost::Message;
use serde_json::{Value, json};
use sqlx::Executor;
use terra_core::envelope::Envelope;
use terra_eventlog::{EventLog, Record};
use terra_projector::sql::{SqlConfig, SqlTarget};
use terra_projector::{ProjectorConfig, ProjectorMetrics, SqlSink};
use tokio::sync::watch;

use crate::bench::{ChildGuard, free_addr, signed_requests, wait_until_up};
use crate::fixtures;

#[derive(Debug, clap::Args)]
pub struct BenchSqlArgs {
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
}

const DATA_TYPES: [&str; 5] = ["activity", "sleep", "daily", "body", "nutrition"];

pub(crate) async fn run(args: BenchSqlArgs) -> anyhow::Result<ExitCode> {
    if args.records == 0 || args.per_webhook == 0 || args.users == 0 || args.batch_size == 0 {
        bail!("--records, --per-webhook, --users and --batch-size must be at least 1");
    }
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
    let started = Instant::now();
    let log = EventLog::Embedded(terra_eventlog::embedded::EmbeddedLog::open(
        &dir.path().join("log"),
        4,
    )?);
    let filled = fill(&log, &args).await?;
    println!(
        "terra-ingest bench sql: log of {} records ({} webhooks carrying {} data records, {} other events, {} re-deliveries), {} users, {:.0} MB, filled in {:.1} s",
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
        let result = measure(&log, &url, &args, filled.data_records).await;
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
    if args.rate > 0 && !args.postgres.is_empty() {
        latency(&args).await?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) struct Filled {
    pub(crate) log_records: usize,
    pub(crate) data_webhooks: usize,
    pub(crate) data_records: usize,
    pub(crate) other_events: usize,
    pub(crate) redeliveries: usize,
    pub(crate) bytes: usize,
}

/// One record of each data type, from the fixtures, as templates.
fn templates() -> BTreeMap<&'static str, Value> {
    DATA_TYPES
        .iter()
        .map(|t| {
            let body: Value =
                serde_json::from_slice(fixtures::get(t).expect("fixture")).expect("fixture JSON");
            (*t, body["data"][0].clone())
        })
        .collect()
}

fn user_object(user: usize) -> Value {
    let provider = ["GARMIN", "FITBIT", "OURA", "WHOOP"][user % 4];
    json!({
        "user_id": format!("{user:08x}-5e1f-4c2a-9b7d-6a3e2f1c0b9d"),
        "provider": provider,
        "reference_id": format!("acct-{user}"),
        "scopes": "activity:read,sleep:read,daily:read",
        "last_webhook_update": "2026-10-04T09:00:12.118000+00:00",
        "created_at": "2026-09-01T10:11:12.000000+00:00",
        "active": true
    })
}

fn envelope_record(body: Vec<u8>, ordering_ms: i64) -> Record {
    let c = terra_core::classify(&body).ok();
    let user_id = c.as_ref().and_then(|c| c.user_id.clone());
    let envelope = Envelope {
        envelope_id: uuid::Uuid::now_v7().to_string(),
        received_at: Some(prost_types::Timestamp {
            seconds: ordering_ms / 1000,
            nanos: 0,
        }),
        source: "default".into(),
        event_type: c.as_ref().map(|c| c.event_type.clone()).unwrap_or_default(),
        user_id: user_id.clone(),
        ordering_timestamp_ms: Some(ordering_ms),
        body_is_json: c.is_some(),
        body: body.into(),
        ..Default::default()
    };
    Record {
        key: user_id.map(|u| Bytes::from(u.into_bytes())),
        headers: vec![],
        value: envelope.encode_to_vec().into(),
    }
}

pub(crate) async fn fill(log: &EventLog, args: &BenchSqlArgs) -> anyhow::Result<Filled> {
    let templates = templates();
    let webhooks = args.records.div_ceil(args.per_webhook);
    let mut filled = Filled {
        log_records: 0,
        data_webhooks: 0,
        data_records: 0,
        other_events: 0,
        redeliveries: 0,
        bytes: 0,
    };
    let base_ms: i64 = 1_780_000_000_000;
    let day0 = 20_000; // days since 1970: 2024-10-04
    let mut pending = Vec::with_capacity(2_000);
    let mut per_user_type: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for w in 0..webhooks {
        let user = w % args.users;
        let kind = (w / args.users) % DATA_TYPES.len();
        let data_type = DATA_TYPES[kind];
        let n = args.per_webhook.min(args.records - filled.data_records);
        let seq = per_user_type.entry((user, kind)).or_insert(0);
        let mut data = Vec::with_capacity(n);
        for _ in 0..n {
            let mut record = templates[data_type].clone();
            let day = day0 + *seq as i64;
            let date = civil(day);
            let meta = &mut record["metadata"];
            meta["start_time"] = json!(format!("{date}T07:15:00.000000+02:00"));
            meta["end_time"] = json!(format!("{date}T08:05:00.000000+02:00"));
            if meta.get("summary_id").is_some() {
                meta["summary_id"] = json!(format!("{data_type}-{user}-{seq}"));
            }
            *seq += 1;
            data.push(record);
        }
        let body = serde_json::to_vec(&json!({
            "type": data_type, "user": user_object(user), "data": data, "version": "2022-03-16"
        }))?;
        let ts = base_ms + w as i64;
        filled.bytes += body.len();
        filled.data_records += n;
        filled.data_webhooks += 1;
        if w % 20 == 0 {
            // Terra re-sends a newer copy of the same records
            pending.push(envelope_record(body.clone(), ts + 1));
            filled.redeliveries += 1;
        }
        pending.push(envelope_record(body, ts));
        if w % 50 == 0 {
            let name = [
                "auth",
                "deauth",
                "permission_change",
                "connection_error",
                "large_request_sending",
            ][(w / 50) % 5];
            let mut event: Value = serde_json::from_slice(fixtures::get(name).expect("fixture"))?;
            event["user"] = user_object(user);
            pending.push(envelope_record(serde_json::to_vec(&event)?, ts));
            filled.other_events += 1;
        }
        if pending.len() >= 2_000 {
            filled.log_records += pending.len();
            log.append(std::mem::take(&mut pending)).await?;
        }
    }
    filled.log_records += pending.len();
    log.append(pending).await?;
    Ok(filled)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn civil(days: i64) -> String {
    terra_core::keys::unix_ms_to_utc_seconds(days * 86_400_000)[..10].to_owned()
}

struct Measured {
    rows: usize,
    projector_s: f64,
    raw_s: f64,
}

async fn measure(
    log: &EventLog,
    url: &str,
    args: &BenchSqlArgs,
    _data_records: usize,
) -> anyhow::Result<Measured> {
    let target = SqlTarget::connect(&SqlConfig::new(url))?;
    terra_projector::sql::migrate(&target).await?;
    let mut config = ProjectorConfig::new(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    config.batch_size = args.batch_size;
    config.stop_at_end = true;
    config.batch_wait = Duration::from_millis(10);
    let mut sink = SqlSink::new(target.clone());
    let (_stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let stats = terra_projector::run(
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
    terra_projector::sql::migrate(&raw).await?;
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
    let rows =
        terra_projector::sql::raw_load(&raw, &planned, args.batch_size * args.per_webhook).await?;
    let raw_s = started.elapsed().as_secs_f64();
    target.close().await;
    if rows
        != stats
            .payloads
            .saturating_sub(stats.superseded.min(stats.payloads))
        && rows > stats.payloads
    {
        eprintln!(
            "note: raw load wrote {rows} rows, the projector {}",
            stats.payloads
        );
    }
    Ok(Measured {
        rows,
        projector_s,
        raw_s,
    })
}

async fn fresh_database(server: &str) -> anyhow::Result<(String, String)> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::AnyPool::connect(server).await.with_context(|| {
        format!(
            "failed to connect to {}",
            terra_projector::sql::redact(server)
        )
    })?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    admin.close().await;
    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_database(server: &str, name: &str) {
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
async fn latency(args: &BenchSqlArgs) -> anyhow::Result<()> {
    let (url, db) = fresh_database(&args.postgres).await?;
    let result = latency_on(&url, args).await;
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

async fn latency_on(url: &str, args: &BenchSqlArgs) -> anyhow::Result<LatencyResult> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr()?;
    let secret = "whsec_bench_latency";
    let exe = std::env::current_exe()?;
    let _server = ChildGuard(
        Command::new(exe)
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
    let requests = Arc::new(signed_requests(secret));
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
                let positions = terra_projector::sql::stored_positions(&target)
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
            Arc::clone(&requests),
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
                let (body, signature) = &requests[i % requests.len()];
                let request = Request::post("/webhook")
                    .header("host", "bench")
                    .header("content-type", "application/json")
                    .header("terra-signature", signature.as_str())
                    .body(Full::new(body.clone()))?;
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
