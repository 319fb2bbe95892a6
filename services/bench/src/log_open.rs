//! `terra-bench log-open`: how long the embedded log takes to open as it grows. For each
//! size, the log is filled with that many records, then opened a few times as it is (sealed
//! segments read through their index headers, the active segment scanned) and once with the
//! sealed indexes deleted, which makes open scan every segment as the one-file log of
//! version 1 did on every open: the ratio is what the index checkpoint saves. Then one
//! consumer group reads the whole log (a projector's read, in polls of 4,000 records): records/s
//! and CPU per record, best of `--repeat`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use terra_eventlog::embedded::{EmbeddedLog, EmbeddedOptions};
use terra_eventlog::{EventLog, Record};

#[derive(Debug, clap::Args)]
pub struct LogOpenArgs {
    /// Log sizes to measure, in records (each log is filled from empty).
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub records: Vec<u64>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 200)]
    pub value_bytes: usize,
    /// Where the logs are written (a folder on the disk to measure; removed after).
    #[arg(long, default_value = "/tmp/terra-bench-log-open")]
    pub dir: std::path::PathBuf,
    /// Opens measured per size.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
}

pub(crate) async fn run(args: LogOpenArgs) -> anyhow::Result<ExitCode> {
    let options = EmbeddedOptions::default();
    println!(
        "embedded log open time ({} partitions, {}-byte values, {} MiB segments)",
        terra_eventlog::DEFAULT_PARTITIONS,
        args.value_bytes,
        options.segment_bytes >> 20
    );
    for &records in &args.records {
        let dir = args.dir.join(format!("log-{records}"));
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        fill(&dir, records, args.value_bytes).await?;
        let filled = started.elapsed();
        let bytes = folder_bytes(&dir.join("segments"))?;
        let mut opens = Vec::new();
        let mut segments = 0;
        for _ in 0..args.repeat {
            let (took, log) = timed_open(&dir)?;
            segments = log.segment_count();
            opens.push(took);
        }
        let mut reads = Vec::new();
        for n in 0..args.repeat {
            reads.push(timed_read(&dir, &format!("read-{n}")).await?);
        }
        let (read_s, read_cpu) = reads
            .iter()
            .copied()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or_default();
        println!(
            "{records:>10} records read by a consumer group in {:.3} s: {:.0} records/s, {:.2} us of CPU per record (best of {}: {})",
            read_s,
            records as f64 / read_s.max(1e-9),
            read_cpu * 1e6 / records.max(1) as f64,
            args.repeat,
            reads
                .iter()
                .map(|(s, cpu)| format!("{s:.3} s / {:.2} us", cpu * 1e6 / records.max(1) as f64))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let indexes = remove_indexes(&dir.join("segments"))?;
        let (scan, _) = timed_open(&dir)?;
        let best = opens.iter().min().copied().unwrap_or_default();
        println!(
            "{records:>10} records, {:>7.1} MiB in {segments} segments (written in {:.1} s): open {:>8.1} ms (best of {}: {:?}); with the {indexes} sealed indexes deleted (every segment scanned) {:>8.1} ms ({:.0}x)",
            bytes as f64 / (1 << 20) as f64,
            filled.as_secs_f64(),
            best.as_secs_f64() * 1e3,
            args.repeat,
            opens
                .iter()
                .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>(),
            scan.as_secs_f64() * 1e3,
            scan.as_secs_f64() / best.as_secs_f64().max(1e-9),
        );
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn fill(dir: &Path, records: u64, value_bytes: usize) -> anyhow::Result<()> {
    let log = EventLog::Embedded(EmbeddedLog::open(dir, terra_eventlog::DEFAULT_PARTITIONS)?);
    let value = Bytes::from(vec![b'x'; value_bytes]);
    let mut written = 0u64;
    while written < records {
        let batch = (records - written).min(5_000);
        let batch: Vec<Record> = (written..written + batch)
            .map(|n| Record {
                key: Some(Bytes::from(format!("user-{}", n % 10_007))),
                headers: vec![("terra-type".into(), Bytes::from_static(b"activity"))],
                value: value.clone(),
            })
            .collect();
        written += log.append(batch).await?.len() as u64;
    }
    Ok(())
}

fn timed_open(dir: &Path) -> anyhow::Result<(Duration, EmbeddedLog)> {
    let started = Instant::now();
    let log = EmbeddedLog::open(dir, terra_eventlog::DEFAULT_PARTITIONS)?;
    Ok((started.elapsed(), log))
}

/// Seconds and seconds of this process's CPU for a new group to read every record.
async fn timed_read(dir: &Path, group: &str) -> anyhow::Result<(f64, f64)> {
    let log = EmbeddedLog::open(dir, terra_eventlog::DEFAULT_PARTITIONS)?;
    let mut consumer = EventLog::Embedded(log).consumer(group)?;
    let (started, cpu) = (Instant::now(), crate::cpu::split().0);
    let mut bytes = 0usize;
    loop {
        let batch = consumer.poll(4_000, Duration::from_millis(10)).await?;
        if batch.is_empty() {
            break;
        }
        bytes += batch.iter().map(|c| c.record.value.len()).sum::<usize>();
    }
    anyhow::ensure!(bytes > 0, "the consumer read nothing");
    Ok((started.elapsed().as_secs_f64(), crate::cpu::split().0 - cpu))
}

fn folder_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

fn remove_indexes(dir: &Path) -> anyhow::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "idx") {
            std::fs::remove_file(path)?;
            removed += 1;
        }
    }
    Ok(removed)
}
