//! `terra-bench ingress`: a load generator. It starts the `terra-ingest` binary as a child
//! process (`ingress` on a fresh embedded log or on Kafka), sends correctly signed fixture
//! bodies over keep-alive HTTP/1.1 connections at a fixed concurrency, and reports acked
//! webhooks/s, latency percentiles and the server's peak RSS. In the same run it measures a
//! bare server (`terra-bench bare-server`: reads the body, answers 200) and prints the ratio.
//! It asserts nothing.

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::deliveries::Deliveries;
use crate::process::{ChildGuard, TerraIngestArg, free_addr, peak_rss_kb, wait_until_up};

#[derive(Debug, clap::Args)]
pub struct IngressArgs {
    /// Log of the server under test: `embedded` (fresh folder), `kafka-mock` (in-process mock
    /// cluster) or any --log URL.
    #[arg(long, default_value = "embedded")]
    pub log: String,
    /// Concurrent keep-alive connections. Each waits for its append to be durable (about a
    /// millisecond here), so too few leave the server idle between syncs: 128 keeps two cores
    /// busy, and the bare server is at its peak there too.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Measured seconds per server (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Server log level while measured (RUST_LOG of the child).
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    #[command(flatten)]
    pub terra_ingest: TerraIngestArg,
}

struct Measured {
    acked: u64,
    failed: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

pub(crate) async fn run(args: IngressArgs) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 || args.seconds == 0 {
        bail!("--concurrency and --seconds must be at least 1");
    }
    let terra_ingest = args.terra_ingest.binary()?;
    let own = std::env::current_exe().context("failed to find terra-bench's own path")?;
    let secret = "whsec_bench_0123456789";
    let requests = Deliveries::new(secret);

    let bare_addr = free_addr()?;
    let bare = ChildGuard(
        Command::new(&own)
            .args(["bare-server", "--http-addr", &bare_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_until_up(bare_addr, "/").await?;
    let bare_result = load(bare_addr, "/", &requests, args.concurrency, args.seconds).await?;
    let bare_rss = peak_rss_kb(bare.0.id());
    drop(bare);

    let data_dir = tempfile::tempdir().context("failed to create a temporary data dir")?;
    let log = match args.log.as_str() {
        "embedded" => format!("embedded:{}", data_dir.path().join("log").display()),
        "kafka-mock" => "kafka-mock://terra-bench?partitions=4".to_owned(),
        other => other.to_owned(),
    };
    let addr = free_addr()?;
    let server = ChildGuard(
        Command::new(&terra_ingest)
            .args([
                "ingress",
                "--http-addr",
                &addr.to_string(),
                "--log",
                &log,
                "--signing-secret",
                secret,
            ])
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("RUST_LOG", &args.server_log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    wait_until_up(addr, "/readyz").await?;
    let result = load(addr, "/webhook", &requests, args.concurrency, args.seconds).await?;
    let rss = peak_rss_kb(server.0.id());
    drop(server);

    println!(
        "terra-bench ingress: log={} concurrency={} seconds={} fixtures={} (distinct deliveries, each signed when sent)",
        args.log,
        args.concurrency,
        args.seconds,
        requests.len()
    );
    println!(
        "{:<10} {:>12} {:>8} {:>9} {:>9} {:>9} {:>12}",
        "server", "acked/s", "failed", "p50 ms", "p99 ms", "max ms", "peak RSS MB"
    );
    for (name, m, rss) in [("bare", &bare_result, bare_rss), ("ingress", &result, rss)] {
        println!(
            "{:<10} {:>12.0} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>12}",
            name,
            m.rate(),
            m.failed,
            m.percentile_ms(0.50),
            m.percentile_ms(0.99),
            m.percentile_ms(1.0),
            rss.map_or("?".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0))
        );
    }
    println!(
        "ratio ingress/bare: {:.2}",
        result.rate() / bare_result.rate().max(1.0)
    );
    Ok(ExitCode::SUCCESS)
}

async fn load(
    addr: SocketAddr,
    path: &str,
    requests: &Deliveries,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Measured> {
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let requests = requests.clone();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            connection(addr, path, requests, worker, warmup_end, end).await
        }));
    }
    let mut total = Measured {
        acked: 0,
        failed: 0,
        seconds: seconds as f64,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let m = task.await.context("load task panicked")??;
        total.acked += m.acked;
        total.failed += m.failed;
        total.latencies_us.extend(m.latencies_us);
    }
    total.latencies_us.sort_unstable();
    Ok(total)
}

async fn connection(
    addr: SocketAddr,
    path: String,
    requests: Deliveries,
    worker: usize,
    warmup_end: Instant,
    end: Instant,
) -> anyhow::Result<Measured> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut m = Measured {
        acked: 0,
        failed: 0,
        seconds: 0.0,
        latencies_us: Vec::with_capacity(1 << 14),
    };
    // distinct across connections: the worker in the high bits
    let mut seq = (worker as u64) << 40;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let request = requests.request(&path, seq)?;
        seq += 1;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        if now >= warmup_end {
            m.latencies_us
                .push(now.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            if ok { m.acked += 1 } else { m.failed += 1 }
        }
    }
    Ok(m)
}

/// The comparison server: same stack (tokio, hyper via axum), reads the body, answers 200.
pub(crate) async fn bare_server(addr: &str) -> anyhow::Result<ExitCode> {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async { "ok" })
                .post(|body: Bytes| async move { format!("{{\"len\": {}}}", body.len()) }),
        )
        .route(
            "/webhook",
            post(|body: Bytes| async move { format!("{{\"len\": {}}}", body.len()) }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}
