//! The baseline of `terra-bench sql`: the payload rows the projector writes, bulk-inserted with
//! none of its logic (no positions, no last-writer-wins lookups, no deletes), through the SQL
//! sink's own statements ([`terra_sink_sql::payload_inserts`]) so both write the same rows.

use std::collections::{HashMap, HashSet};

use sqlx::Executor;
use terra_projector::plan::{PayloadRow, Plan, Planned};
use terra_schema::{SqlError, SqlTarget};

/// Bulk-inserts the payload rows of `batch` (multi-row INSERTs, `rows_per_tx` records per
/// transaction). Returns the rows written.
pub(crate) async fn raw_load(
    target: &SqlTarget,
    batch: &[Planned],
    rows_per_tx: usize,
) -> Result<usize, SqlError> {
    // the newest copy of each identity, as the projector would keep (in log order)
    let mut order: Vec<&str> = Vec::new();
    let mut newest: HashMap<&str, (&Planned, &PayloadRow)> = HashMap::new();
    for planned in batch {
        if let Plan::Event(event) = &planned.plan {
            for row in &event.payloads {
                if newest.insert(&row.identity, (planned, row)).is_none() {
                    order.push(&row.identity);
                }
            }
        }
    }
    let rows: Vec<(&Planned, &PayloadRow)> = order.iter().map(|id| newest[id]).collect();
    let mut seen = HashSet::new();
    for chunk in rows.chunks(rows_per_tx.max(1)) {
        let terra_rows: Vec<&PayloadRow> = chunk
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| seen.insert(r.payload_id.as_str()))
            .collect();
        let mut tx = target.pool().begin().await?;
        for stmt in terra_sink_sql::payload_inserts(target, &terra_rows, chunk) {
            tx.execute(stmt.query()).await?;
        }
        tx.commit().await?;
    }
    Ok(rows.len())
}
