//! Projections of the terra-ingest event log. The log is the source of truth; everything
//! here can be rebuilt from it.
//!
//! - [`plan`]: what one log record means for the projections (users, lifecycle steps,
//!   payload rows with their last-writer-wins identity), or why it is poison.
//! - [`runner`]: the projector loop every sink shares: batches, dead letters, outage backoff,
//!   resume from the sink's own positions, metrics.
//! - [`sql`]: Terra's SQL tables on Postgres, MySQL/MariaDB and SQLite.

mod metrics;
pub mod plan;
pub mod runner;
pub mod sql;

use std::collections::BTreeMap;

pub use metrics::ProjectorMetrics;
pub use runner::{Backoff, ProjectorConfig, ProjectorError, Sink, SinkError, WriteStats, run};

/// The consumer group of the SQL projection.
pub const SQL_GROUP: &str = "sql";

/// The SQL tables as a [`Sink`].
pub struct SqlSink {
    target: sql::SqlTarget,
}

impl SqlSink {
    pub fn new(target: sql::SqlTarget) -> Self {
        Self { target }
    }

    pub fn target(&self) -> &sql::SqlTarget {
        &self.target
    }
}

impl Sink for SqlSink {
    fn name(&self) -> &str {
        "sql"
    }

    async fn stored_positions(&mut self) -> Result<Option<BTreeMap<u32, u64>>, SinkError> {
        Ok(Some(sql::stored_positions(&self.target).await?))
    }

    async fn write(&mut self, batch: &[plan::Planned]) -> Result<WriteStats, SinkError> {
        sql::write(&self.target, batch).await
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
