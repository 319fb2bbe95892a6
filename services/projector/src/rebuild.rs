//! `terra-ingest rebuild sql`: replays the whole log into fresh tables (prefix
//! `rb<unix ms>_`), then swaps them in for the live ones, atomically where the database
//! allows (one transaction on Postgres and SQLite, one `RENAME TABLE` on MySQL), and drops
//! the old ones (unless asked to keep them, as `old<unix ms>_*`).
//!
//! A projector may keep running meanwhile: the rebuilt tables carry their own positions, so
//! after the swap the live projector either skips what the rebuild already wrote or, when
//! the rebuilt tables end before its next batch, reads again from their end (the gap check
//! in `write`).

//! `terra-ingest rebuild <sink>`: replays the whole log into a fresh projection beside the
//! live one (for SQL: tables under the prefix `rb<unix ms>_`), then swaps it in for the live
//! one (for SQL atomically where the database allows) and drops the replaced one unless asked
//! to keep it. The orchestration and its progress line are the same for every sink; what a
//! fresh projection is and how it is swapped in is the sink's ([`Rebuild`]).
//!
//! A projector may keep running meanwhile: the rebuilt projection carries its own positions,
//! so after the swap the live projector either skips what the rebuild already wrote or, when
//! the rebuilt one ends before its next batch, reads again from its end (the gap check of a
//! sink's write).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use terra_eventlog::EventLog;
use terra_runtime::CancellationToken;

use crate::{ProjectorConfig, ProjectorError, ProjectorMetrics, Sink, SinkError, WriteStats};

/// A sink whose projection can be rebuilt beside the live one and swapped in.
pub trait Rebuild: Sink + Sized {
    /// A fresh, empty projection beside this (live) one; `stamp` (Unix ms) makes its names
    /// unique. Returns it with the name it is built under (for messages).
    fn fresh(&self, stamp: i64) -> impl Future<Output = Result<(Self, String), SinkError>> + Send;

    /// The positions this projection has stored (empty when it has none yet).
    fn positions(&self) -> impl Future<Output = Result<BTreeMap<u32, u64>, SinkError>> + Send;

    /// Swaps `fresh` in for this projection. The replaced one is dropped, or kept under a
    /// name derived from `stamp` when `keep_old` (returned).
    fn swap_in(
        &self,
        fresh: &Self,
        stamp: i64,
        keep_old: bool,
    ) -> impl Future<Output = Result<Option<String>, SinkError>> + Send;
}

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub batch_size: usize,
    /// Keep the replaced projection (SQL: tables renamed `old<unix ms>_*`) instead of
    /// dropping it.
    pub keep_old: bool,
    /// Print a progress line (rate, ETA) to stderr.
    pub show_progress: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            keep_old: false,
            show_progress: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub records: usize,
    pub seconds: f64,
    /// Name the rebuilt projection was built under (SQL: its table prefix).
    pub built_prefix: String,
    /// Name of the replaced projection, when kept.
    pub kept_old_prefix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(
        "rebuild interrupted; the live tables are unchanged (fresh tables left under prefix {0})"
    )]
    Interrupted(String),
}

/// Rebuilds the projection `live` stands for from the log.
pub async fn rebuild<S: Rebuild>(
    live: &S,
    log: &EventLog,
    options: &RebuildOptions,
    metrics: &ProjectorMetrics,
    shutdown: CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    // milliseconds: two rebuilds in one second still get distinct names
    let stamp = terra_core::keys::now_ms();
    let (mut fresh, built) = live.fresh(stamp).await?;
    let total: u64 = log
        .end_offsets()
        .await
        .map_err(ProjectorError::from)?
        .values()
        .sum();
    let mut config = ProjectorConfig::new(format!("{}-rebuild-{stamp}", live.name()));
    config.batch_size = options.batch_size;
    config.stop_at_end = true;
    config.batch_wait = Duration::from_millis(200);
    let mut progress = Progress::new(live.name(), total, options.show_progress);
    let mut totals = WriteStats::default();
    // read to the end; then again until the rebuilt projection is not behind the live one
    for round in 0..20 {
        let stats = crate::run(&config, log, &mut fresh, metrics, shutdown.clone(), |t| {
            progress.show(totals.records + t.records, false);
        })
        .await?;
        totals.records += stats.records;
        if shutdown.is_cancelled() {
            progress.finish();
            return Err(RebuildError::Interrupted(built));
        }
        let built_positions = fresh.positions().await?;
        let live_positions = live.positions().await?;
        let behind = live_positions
            .iter()
            .any(|(p, &next)| built_positions.get(p).copied().unwrap_or(0) < next);
        if !behind || round == 19 {
            break;
        }
    }
    progress.show(totals.records, true);
    progress.finish();
    let kept_old_prefix = live.swap_in(&fresh, stamp, options.keep_old).await?;
    Ok(RebuildReport {
        records: totals.records,
        seconds: started.elapsed().as_secs_f64(),
        built_prefix: built,
        kept_old_prefix,
    })
}

/// A one-line progress display: done/total, percent, rate, ETA.
struct Progress {
    sink: String,
    total: u64,
    enabled: bool,
    started: Instant,
    last: Instant,
    printed: bool,
}

impl Progress {
    fn new(sink: &str, total: u64, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            sink: sink.to_owned(),
            total,
            enabled,
            started: now,
            last: now - Duration::from_secs(10),
            printed: false,
        }
    }

    fn show(&mut self, done: usize, force: bool) {
        if !self.enabled || (!force && self.last.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.last = Instant::now();
        eprint!(
            "\r{}",
            progress_line(&self.sink, done as u64, self.total, self.started.elapsed())
        );
        self.printed = true;
    }

    fn finish(&mut self) {
        if self.printed {
            eprintln!();
        }
    }
}

/// `rebuild sql [#######.............]  52.3%  523,000/1,000,000 records  41,233/s  ETA 0:12`
pub(crate) fn progress_line(sink: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let total = total.max(done);
    let fraction = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let width = 24;
    let filled = (fraction * width as f64).round() as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        let secs = ((total - done) as f64 / rate).round() as u64;
        format!("{}:{:02}", secs / 60, secs % 60)
    } else {
        "?".to_owned()
    };
    format!(
        "rebuild {sink} [{}{}] {:5.1}%  {}/{} records  {}/s  ETA {eta}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        fraction * 100.0,
        thousands(done),
        thousands(total),
        thousands(rate as u64),
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_shows_rate_and_eta() {
        let line = progress_line("sql", 500_000, 1_000_000, Duration::from_secs(10));
        assert!(line.starts_with("rebuild sql ["), "{line}");
        assert!(line.contains(" 50.0%"), "{line}");
        assert!(line.contains("500,000/1,000,000 records"), "{line}");
        assert!(line.contains("50,000/s"), "{line}");
        assert!(line.contains("ETA 0:10"), "{line}");
        assert!(line.contains("[############............]"), "{line}");
        let done = progress_line("sql", 7, 0, Duration::from_secs(1));
        assert!(
            done.contains("100.0%") && done.contains("ETA 0:00"),
            "{done}"
        );
    }
}
