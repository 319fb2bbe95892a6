//! The SQL sink: Terra's tables (see `terra-schema`) written from the projector's plans, one
//! transaction per batch with the log positions it covers (exactly-once effect), last writer
//! wins by [`terra_projector::Version`], replays skipped, gaps refused.
//!
//! - [`SqlSink`] (`sink`): the projector's `Sink`, and its `Rebuild` (fresh tables under a
//!   prefix, swapped in).
//! - `write`: one batch, one transaction; `payloads` and `users`: its rows.

mod payloads;
mod sink;
mod users;
mod write;

use terra_projector::plan::Planned;
use terra_schema::{SqlError, SqlTarget};

pub use sink::{SQL_GROUP, SqlSink, sink_error};

/// A benchmark baseline: bulk-inserts the payload rows of `batch` with plain multi-row
/// INSERTs (no projector logic). Returns the rows written.
pub async fn raw_load(
    target: &SqlTarget,
    batch: &[Planned],
    records_per_tx: usize,
) -> Result<usize, SqlError> {
    payloads::raw_load(target, batch, records_per_tx).await
}
