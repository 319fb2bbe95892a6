//! `WatchPayloads`' live tail: polls the payload index by log position below the stored
//! positions and streams what is new, each event with a sealed resume position.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;

use crate::db;
use crate::proto::PayloadEvent;
use crate::service::Query;

/// How often the live tail looks for new payloads.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
const WATCH_BATCH: usize = 500;

/// Where the live tail stands: per partition, the last (offset, record index) delivered.
pub(crate) type Cursor = BTreeMap<u32, (i64, i64)>;

impl Query {
    /// Polls the payload index by log position and sends what is new, until the client goes
    /// away. Rows and positions are written in one transaction, so reading the positions
    /// first and then the rows below them never skips a row that commits later.
    pub(crate) async fn tail(
        &self,
        mut cursor: Cursor,
        user: Option<String>,
        types: Vec<String>,
        tx: mpsc::Sender<Result<PayloadEvent, Status>>,
    ) {
        let mut failures = 0u32;
        let mut stopping = self.stopping.clone();
        loop {
            if tx.is_closed() || *stopping.borrow() {
                return;
            }
            match self
                .tail_once(&mut cursor, user.as_deref(), &types, &tx)
                .await
            {
                Ok(sent_all) => {
                    failures = 0;
                    if !sent_all {
                        continue; // a full batch: more is waiting
                    }
                }
                Err(status) if status.code() == tonic::Code::Unavailable && failures < 150 => {
                    // the database is away: keep the stream, try again
                    failures += 1;
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                // no sender (a Query not served by `run`): only the timer wakes the tail
                Ok(()) = stopping.changed() => {}
            }
        }
    }

    /// One pass; `Ok(true)` when every partition was read to its stored position.
    async fn tail_once(
        &self,
        cursor: &mut Cursor,
        user: Option<&str>,
        types: &[String],
        tx: &mpsc::Sender<Result<PayloadEvent, Status>>,
    ) -> Result<bool, Status> {
        let positions = db::positions(&self.sql).await?;
        let mut complete = true;
        for (partition, next) in positions {
            let (offset, index) = cursor.get(&partition).copied().unwrap_or((-1, i64::MAX));
            let mut stmt = self.sql.statement(format!(
                "SELECT {} FROM {} WHERE log_partition = ",
                db::PAYLOAD_COLUMNS,
                self.sql.table("ingest_payloads")
            ));
            stmt.bind(i64::from(partition))
                .push(" AND log_offset < ")
                .bind(next)
                .push(" AND (log_offset > ")
                .bind(offset)
                .push(" OR (log_offset = ")
                .bind(offset)
                .push(" AND record_index > ")
                .bind(index)
                .push("))");
            if let Some(user) = user {
                stmt.push(" AND user_id = ").bind(user);
            }
            db::push_in(&mut stmt, "event_type", types);
            stmt.push(" ORDER BY log_offset, record_index");
            db::push_limit(&mut stmt, WATCH_BATCH);
            let rows = db::fetch(&self.sql, &stmt).await?;
            let full = rows.len() == WATCH_BATCH;
            for row in &rows {
                let payload = db::payload(row);
                cursor.insert(
                    partition,
                    (payload.log_offset as i64, db::record_index(row)),
                );
                let position = self.seal_cursor(cursor);
                if tx
                    .send(Ok(PayloadEvent {
                        payload: Some(payload),
                        position,
                    }))
                    .await
                    .is_err()
                {
                    return Ok(true);
                }
            }
            if full {
                complete = false;
            } else {
                // nothing more below the stored position (rows filtered out included)
                let done = (next - 1, i64::MAX);
                if cursor.get(&partition).is_none_or(|c| *c < done) {
                    cursor.insert(partition, done);
                }
            }
        }
        Ok(complete)
    }

    fn seal_cursor(&self, cursor: &Cursor) -> String {
        let list: Vec<(u32, i64, i64)> = cursor.iter().map(|(&p, &(o, i))| (p, o, i)).collect();
        self.tokens.seal(&list)
    }
}
