//! `terra-ingest rebuild sql`: replays the whole log into fresh tables (prefix
//! `rb<unix ms>_`), then swaps them in for the live ones, atomically where the database
//! allows (one transaction on Postgres and SQLite, one `RENAME TABLE` on MySQL), and drops
//! the old ones (unless asked to keep them, as `old<unix ms>_*`).
//!
//! A projector may keep running meanwhile: the rebuilt tables carry their own positions, so
//! after the swap the live projector either skips what the rebuild already wrote or, when
//! the rebuilt tables end before its next batch, reads again from their end (the gap check
//! in `write`).

use std::time::{Duration, Instant};

use sqlx::{Executor, Row};
use terra_eventlog::EventLog;
use tokio::sync::watch;

use super::dialect::Stmt;
use super::{Dialect, SqlError, SqlTarget, TABLES, VIEW};
use crate::{ProjectorConfig, ProjectorError, ProjectorMetrics, SqlSink, WriteStats};

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub batch_size: usize,
    /// Keep the replaced tables (renamed `old<unix ms>_*`) instead of dropping them.
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
    /// Prefix the rebuilt tables were built under.
    pub built_prefix: String,
    /// Prefix of the replaced tables, when kept.
    pub kept_old_prefix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(
        "rebuild interrupted; the live tables are unchanged (fresh tables left under prefix {0})"
    )]
    Interrupted(String),
}

/// Rebuilds the projection `live` names from the log.
pub async fn rebuild(
    live: &SqlTarget,
    log: &EventLog,
    options: &RebuildOptions,
    metrics: &ProjectorMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    // milliseconds: two rebuilds in one second still get distinct table and index names
    let stamp = crate::now_ms();
    let prefix = format!("{}rb{stamp}_", live.prefix);
    let fresh = live.with_prefix(&prefix)?;
    super::migrate(&fresh).await?;
    let total: u64 = log
        .end_offsets()
        .await
        .map_err(ProjectorError::from)?
        .values()
        .sum();
    let mut config = ProjectorConfig::new(format!("sql-rebuild-{stamp}"));
    config.batch_size = options.batch_size;
    config.stop_at_end = true;
    config.batch_wait = Duration::from_millis(200);
    let mut sink = SqlSink::new(fresh.clone());
    let mut progress = Progress::new(total, options.show_progress);
    let mut totals = WriteStats::default();
    // read to the end; then again until the rebuilt tables are not behind the live ones
    for round in 0..20 {
        let stats = crate::run(&config, log, &mut sink, metrics, shutdown.clone(), |t| {
            progress.show(totals.records + t.records, false);
        })
        .await?;
        totals.records += stats.records;
        if *shutdown.borrow() {
            progress.finish();
            return Err(RebuildError::Interrupted(prefix));
        }
        let built = super::stored_positions(&fresh).await?;
        let live_positions = if table_exists(live, "ingest_positions").await? {
            super::stored_positions(live).await?
        } else {
            Default::default()
        };
        let behind = live_positions
            .iter()
            .any(|(p, &next)| built.get(p).copied().unwrap_or(0) < next);
        if !behind || round == 19 {
            break;
        }
    }
    progress.show(totals.records, true);
    progress.finish();
    let old_prefix = format!("{}old{stamp}_", live.prefix);
    swap(live, &prefix, &old_prefix).await?;
    if !options.keep_old {
        drop_tables(&live.with_prefix(&old_prefix)?).await?;
    }
    Ok(RebuildReport {
        records: totals.records,
        seconds: started.elapsed().as_secs_f64(),
        built_prefix: prefix,
        kept_old_prefix: options.keep_old.then_some(old_prefix),
    })
}

pub(crate) async fn table_exists(target: &SqlTarget, base: &str) -> Result<bool, SqlError> {
    let name = format!("{}{base}", target.prefix);
    let mut stmt = match target.dialect {
        Dialect::Postgres => Stmt::new(
            target.dialect,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ",
        ),
        Dialect::MySql => Stmt::new(
            target.dialect,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND 1 = ",
        ),
        Dialect::Sqlite => Stmt::new(
            target.dialect,
            "SELECT COUNT(*) FROM sqlite_master WHERE type IN ('table', 'view') AND 1 = ",
        ),
    };
    match target.dialect {
        Dialect::Postgres => stmt.bind(&target.schema),
        _ => stmt.bind(1i64),
    };
    stmt.push(if target.dialect == Dialect::Sqlite {
        " AND name = "
    } else {
        " AND table_name = "
    })
    .bind(name);
    let row = target.pool.fetch_one(stmt.query()).await?;
    let count: i64 = row.try_get(0)?;
    Ok(count > 0)
}

/// Renames the live tables to `old_prefix`, the rebuilt ones (`new_prefix`) to the live
/// names, and points the view at the new misc table.
async fn swap(live: &SqlTarget, new_prefix: &str, old_prefix: &str) -> Result<(), SqlError> {
    let mut existing = Vec::new();
    for base in TABLES {
        if table_exists(live, base).await? {
            existing.push(*base);
        }
    }
    // the target of a rename is a bare name (same schema / database)
    let name = |prefix: &str, base: &str| format!("\"{prefix}{base}\"");
    let view_sql = |target: &str| {
        format!(
            "CREATE VIEW {} AS SELECT user_id, data_type, payload_type, created_at, payload_id FROM {}",
            live.table(VIEW),
            target
        )
    };
    let drop_views = [
        format!("DROP VIEW IF EXISTS {}", live.table(VIEW)),
        format!(
            "DROP VIEW IF EXISTS {}",
            live.table_with_prefix(new_prefix, VIEW)
        ),
    ];
    match live.dialect {
        Dialect::MySql => {
            let mut conn = live.pool.acquire().await?;
            for statement in &drop_views {
                conn.execute(statement.as_str()).await?;
            }
            let mut renames = Vec::new();
            for base in TABLES {
                if existing.contains(base) {
                    renames.push(format!(
                        "{} TO {}",
                        live.table(base),
                        name(old_prefix, base)
                    ));
                }
                renames.push(format!(
                    "{} TO {}",
                    live.table_with_prefix(new_prefix, base),
                    live.table(base)
                ));
            }
            conn.execute(format!("RENAME TABLE {}", renames.join(", ")).as_str())
                .await?;
            conn.execute(view_sql(&live.table("terra_misc_payloads")).as_str())
                .await?;
        }
        Dialect::Postgres | Dialect::Sqlite => {
            let mut tx = live.pool.begin().await?;
            if live.dialect == Dialect::Postgres && existing.contains(&"ingest_positions") {
                // writers take the positions first; waiting here lets a batch in flight finish
                tx.execute(
                    format!(
                        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                        live.table("ingest_positions")
                    )
                    .as_str(),
                )
                .await?;
            }
            for statement in &drop_views {
                tx.execute(statement.as_str()).await?;
            }
            for base in TABLES {
                if existing.contains(base) {
                    tx.execute(
                        format!(
                            "ALTER TABLE {} RENAME TO {}",
                            live.table(base),
                            name(old_prefix, base)
                        )
                        .as_str(),
                    )
                    .await?;
                }
                tx.execute(
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        live.table_with_prefix(new_prefix, base),
                        name(&live.prefix, base)
                    )
                    .as_str(),
                )
                .await?;
            }
            tx.execute(view_sql(&live.table("terra_misc_payloads")).as_str())
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Drops every table of a projection (used for replaced tables after a swap).
pub async fn drop_tables(target: &SqlTarget) -> Result<(), SqlError> {
    let mut conn = target.pool.acquire().await?;
    conn.execute(format!("DROP VIEW IF EXISTS {}", target.table(VIEW)).as_str())
        .await?;
    for base in TABLES.iter().rev() {
        let cascade = if target.dialect == Dialect::Postgres {
            " CASCADE"
        } else {
            ""
        };
        conn.execute(format!("DROP TABLE IF EXISTS {}{cascade}", target.table(base)).as_str())
            .await?;
    }
    Ok(())
}

/// A one-line progress display: done/total, percent, rate, ETA.
struct Progress {
    total: u64,
    enabled: bool,
    started: Instant,
    last: Instant,
    printed: bool,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
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
            progress_line(done as u64, self.total, self.started.elapsed())
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
pub(crate) fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
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
        "rebuild sql [{}{}] {:5.1}%  {}/{} records  {}/s  ETA {eta}",
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
        let line = progress_line(500_000, 1_000_000, Duration::from_secs(10));
        assert!(line.contains(" 50.0%"), "{line}");
        assert!(line.contains("500,000/1,000,000 records"), "{line}");
        assert!(line.contains("50,000/s"), "{line}");
        assert!(line.contains("ETA 0:10"), "{line}");
        assert!(line.contains("[############............]"), "{line}");
        let done = progress_line(7, 0, Duration::from_secs(1));
        assert!(
            done.contains("100.0%") && done.contains("ETA 0:00"),
            "{done}"
        );
    }
}
