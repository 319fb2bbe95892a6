//! `terra-bench objects`: a benchmark, not a test. Fills a fresh embedded log with the same
//! realistic mix as `terra-bench sql`, then projects it into a local folder and, when an S3
//! endpoint is given, into an S3-compatible bucket; prints objects/s, bytes/s and the peak
//! resident memory of the projection (sampled while it runs).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use terra_eventlog::EventLog;
use terra_projector::{ProjectorConfig, ProjectorMetrics};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};

use crate::load::{LoadShape, fill};
use crate::process::rss_kb;

#[derive(Debug, clap::Args)]
pub struct ObjectsArgs {
    /// Data records in the pre-filled log (folder run).
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Data records for the S3 run (S3 test servers are slow; 0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub s3_records: usize,
    /// S3-compatible endpoint (e.g. moto's http://127.0.0.1:PORT); a fresh bucket is made.
    #[arg(long, env = "TERRA_TEST_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Distinct users.
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    /// Log records per projector batch.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
}

pub(crate) async fn run(args: ObjectsArgs) -> anyhow::Result<ExitCode> {
    if args.records == 0 || args.users == 0 || args.batch_size == 0 {
        bail!("--records, --users and --batch-size must be at least 1");
    }
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>10} {:>8} {:>16}",
        "store", "data records", "objects", "objects/s", "MB/s", "seconds", "peak RSS MB"
    );
    let dir = tempfile::tempdir()?;
    let folder = Store::open(&StoreConfig {
        url: format!("file://{}", dir.path().join("objects").display()),
        ..StoreConfig::default()
    })?;
    measure("folder", folder, args.records, &args).await?;
    if let (Some(endpoint), true) = (&args.s3_endpoint, args.s3_records > 0) {
        let bucket = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let created = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .context("failed to create the bench bucket")?;
        if !created.status().is_success() {
            bail!("creating bucket {bucket} answered {}", created.status());
        }
        let s3 = Store::open(&StoreConfig {
            url: format!("s3://{bucket}"),
            s3_endpoint: Some(endpoint.clone()),
            s3_region: Some("us-east-1".into()),
            s3_path_style: true,
            allow_http: endpoint.starts_with("http://"),
            ..StoreConfig::default()
        })?;
        measure("s3", s3, args.s3_records, &args).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    name: &str,
    store: Store,
    records: usize,
    args: &ObjectsArgs,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = EventLog::Embedded(terra_eventlog::embedded::EmbeddedLog::open(
        &dir.path().join("log"),
        4,
    )?);
    let fill_args = LoadShape {
        records,
        per_webhook: 10,
        users: args.users,
    };
    let filled = fill(&log, &fill_args).await?;
    let mut config = ProjectorConfig::new("bench-objects");
    config.batch_size = args.batch_size;
    config.batch_wait = Duration::from_millis(10);
    config.stop_at_end = true;
    let mut sink = ObjectSink::new(store, ObjectSinkConfig::default(), None);
    let stopped = terra_projector::CancellationToken::new();
    // the peak resident memory while projecting, sampled every 20 ms
    let peak = Arc::new(AtomicU64::new(rss_kb()));
    let sampling = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kb(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let stats = terra_projector::run(
        &config,
        &log,
        &mut sink,
        &ProjectorMetrics::unregistered(),
        stopped,
        |_| {},
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    sampling.abort();
    // bytes written: each data object is about its record plus the body's other fields
    let bytes = filled.bytes as f64;
    println!(
        "{:<8} {:>12} {:>10} {:>10.0} {:>10.1} {:>8.1} {:>16.1}",
        name,
        filled.data_records,
        stats.payloads,
        stats.payloads as f64 / seconds,
        bytes / seconds / 1e6,
        seconds,
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    Ok(())
}
