//! The SQL tables as a projector [`Sink`], and as a [`Rebuild`]: fresh tables under a prefix,
//! swapped in.

use std::collections::BTreeMap;

use terra_projector::plan::Planned;
use terra_projector::{Rebuild, Sink, SinkError, WriteStats};
use terra_schema::{SqlError, SqlTarget, swap, tables};

use crate::write;

/// The consumer group of the SQL projection.
pub const SQL_GROUP: &str = "sql";

/// The SQL tables as a [`Sink`].
pub struct SqlSink {
    target: SqlTarget,
}

impl SqlSink {
    pub fn new(target: SqlTarget) -> Self {
        Self { target }
    }

    pub fn target(&self) -> &SqlTarget {
        &self.target
    }
}

/// What a database error means for the projector (terra-schema's `From<SqlError>`): data it
/// refuses is poison, settings and schemas are fatal, anything else an outage to wait out.
pub fn sink_error(err: SqlError) -> SinkError {
    err.into()
}

impl Sink for SqlSink {
    fn name(&self) -> &str {
        SQL_GROUP
    }

    async fn stored_positions(&mut self) -> Result<Option<BTreeMap<u32, u64>>, SinkError> {
        Ok(Some(
            terra_schema::positions::stored(&self.target)
                .await
                .map_err(sink_error)?,
        ))
    }

    async fn write(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        write::write_batch(&self.target, batch).await
    }
}

impl Rebuild for SqlSink {
    /// Fresh tables under the prefix `rb<stamp>_` (after the live prefix), migrated.
    async fn fresh(&self, stamp: i64) -> Result<(Self, String), SinkError> {
        let prefix = format!("{}rb{stamp}_", self.target.prefix());
        let fresh = self.target.with_prefix(&prefix).map_err(sink_error)?;
        terra_schema::migrate(&fresh).await.map_err(sink_error)?;
        Ok((Self::new(fresh), prefix))
    }

    async fn positions(&self) -> Result<BTreeMap<u32, u64>, SinkError> {
        let exists = swap::table_exists(&self.target, tables::INGEST_POSITIONS)
            .await
            .map_err(sink_error)?;
        if !exists {
            return Ok(BTreeMap::new());
        }
        terra_schema::positions::stored(&self.target)
            .await
            .map_err(sink_error)
    }

    /// Renames the live tables to `old<stamp>_*` and the fresh ones to the live names, then
    /// drops the old ones unless kept.
    async fn swap_in(
        &self,
        fresh: &Self,
        stamp: i64,
        keep_old: bool,
    ) -> Result<Option<String>, SinkError> {
        let live = &self.target;
        let old_prefix = format!("{}old{stamp}_", live.prefix());
        swap::swap(live, fresh.target.prefix(), &old_prefix)
            .await
            .map_err(sink_error)?;
        if keep_old {
            return Ok(Some(old_prefix));
        }
        let old = live.with_prefix(&old_prefix).map_err(sink_error)?;
        swap::drop_tables(&old).await.map_err(sink_error)?;
        Ok(None)
    }
}
