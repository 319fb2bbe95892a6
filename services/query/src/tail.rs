//! `WatchPayloads`' live tail: one shared poller per service reads the payload index by log
//! position below the stored positions, once, and fans each new row out over a broadcast
//! channel; every watcher applies its own filters and seals its own resume position. So the
//! database sees the same queries for one watcher or a thousand.
//!
//! A watcher starts (and restarts, after falling behind the broadcast's buffer) by catching up
//! from the database from its own position, then follows the broadcast, skipping what it
//! already has: no gap, no duplicate. The poller starts with the first watcher and stops
//! shortly after the last one left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use terra_runtime::{Backoff, CancellationToken, Retry};
use terra_schema::SqlTarget;
use terra_schema::read::{FromRow, PayloadIndexRow};
use tokio::sync::{Mutex, broadcast, mpsc};
use tonic::Status;

use crate::db;
use crate::proto::{Payload, PayloadEvent};
use crate::token::TokenKey;

/// How often the shared poller looks for new payloads.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
const WATCH_BATCH: usize = 500;
/// Consecutive UNAVAILABLE reads (~30 s) before live tails end with UNAVAILABLE.
const MAX_FAILURES: u32 = 150;
/// Rows the shared tail keeps for watchers that are momentarily behind.
pub(crate) const DEFAULT_TAIL_BUFFER: usize = 1024;

/// Where a tail stands: per partition, the last (offset, record index) read.
pub(crate) type Cursor = BTreeMap<u32, (i64, i64)>;

/// What the shared poller broadcasts (each behind an `Arc`, so the size of a row is no cost).
#[allow(clippy::large_enum_variant)]
enum TailItem {
    /// A new row of the payload index.
    Row {
        partition: u32,
        at: (i64, i64),
        payload: Payload,
    },
    /// The partition is read up to its stored position: nothing else lies below `at`.
    Through { partition: u32, at: (i64, i64) },
    /// The poller cannot read (a long outage, or an error): watchers end with it.
    Failed(tonic::Code, String),
}

/// How the shared tail works, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Shared pollers started so far (one at a time; a new one after every watcher left).
    pub pollers_started: u64,
    /// Whether a shared poller runs now.
    pub polling: bool,
    /// Live tails being served now.
    pub watchers: usize,
    /// Database queries of the shared poller.
    pub poll_queries: u64,
    /// Database queries of watchers catching up (at start, when resuming, after lagging).
    pub catch_up_queries: u64,
    /// Times a watcher fell further behind than the shared buffer and caught up from the
    /// database instead.
    pub lagged: u64,
}

/// The shared live tail of one service (every clone of `Query` shares it).
pub(crate) struct Tail {
    /// The running poller's channel; `None` while nobody watches.
    sender: Mutex<Option<broadcast::Sender<Arc<TailItem>>>>,
    buffer: AtomicUsize,
    polling: AtomicBool,
    watchers: AtomicUsize,
    pollers_started: AtomicU64,
    poll_queries: AtomicU64,
    catch_up_queries: AtomicU64,
    lagged: AtomicU64,
}

/// What one watcher wants.
pub(crate) struct Watch {
    pub(crate) cursor: Cursor,
    pub(crate) user: Option<String>,
    /// Sorted, without duplicates.
    pub(crate) types: Vec<String>,
}

impl Watch {
    fn wants(&self, payload: &Payload) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| payload.user_id.as_deref() == Some(u))
            && (self.types.is_empty() || self.types.binary_search(&payload.event_type).is_ok())
    }
}

impl Tail {
    pub(crate) fn new() -> Self {
        Self {
            sender: Mutex::new(None),
            buffer: AtomicUsize::new(DEFAULT_TAIL_BUFFER),
            polling: AtomicBool::new(false),
            watchers: AtomicUsize::new(0),
            pollers_started: AtomicU64::new(0),
            poll_queries: AtomicU64::new(0),
            catch_up_queries: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        }
    }

    /// Rows kept for watchers that are behind (takes effect when the next poller starts).
    pub(crate) fn set_buffer(&self, rows: usize) {
        self.buffer.store(rows.max(1), Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> TailStats {
        TailStats {
            pollers_started: self.pollers_started.load(Ordering::Relaxed),
            polling: self.polling.load(Ordering::Relaxed),
            watchers: self.watchers.load(Ordering::Relaxed),
            poll_queries: self.poll_queries.load(Ordering::Relaxed),
            catch_up_queries: self.catch_up_queries.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
        }
    }

    /// A receiver of the shared tail, starting the poller when none runs. The poller's start
    /// position is read before the receiver exists, so a watcher that then catches up to the
    /// stored positions has everything the broadcast does not carry.
    async fn subscribe(
        self: &Arc<Self>,
        sql: &SqlTarget,
        stopping: &CancellationToken,
    ) -> Result<broadcast::Receiver<Arc<TailItem>>, Status> {
        let mut sender = self.sender.lock().await;
        if let Some(tx) = sender.as_ref() {
            return Ok(tx.subscribe());
        }
        self.poll_queries.fetch_add(1, Ordering::Relaxed);
        let head: Cursor = db::positions(sql)
            .await?
            .into_iter()
            .map(|(p, next)| (p, (next - 1, i64::MAX)))
            .collect();
        let (tx, rx) = broadcast::channel(self.buffer.load(Ordering::Relaxed));
        *sender = Some(tx.clone());
        self.polling.store(true, Ordering::Relaxed);
        self.pollers_started.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("live tail poller starting");
        tokio::spawn(self.clone().poll(sql.clone(), tx, head, stopping.clone()));
        Ok(rx)
    }

    /// The shared poller: reads what is new once and broadcasts it, until nobody listens.
    async fn poll(
        self: Arc<Self>,
        sql: SqlTarget,
        tx: broadcast::Sender<Arc<TailItem>>,
        mut head: Cursor,
        stopping: CancellationToken,
    ) {
        let mut failures = 0u32;
        loop {
            {
                // under the lock `subscribe` takes: a watcher either finds this poller still
                // running (and is counted) or starts the next one
                let mut sender = self.sender.lock().await;
                if tx.receiver_count() == 0 || stopping.is_cancelled() {
                    *sender = None;
                    self.polling.store(false, Ordering::Relaxed);
                    tracing::debug!("live tail poller stopping");
                    return;
                }
            }
            match self.poll_once(&sql, &mut head, &tx).await {
                Ok(true) => failures = 0,
                Ok(false) => {
                    failures = 0;
                    continue; // a full batch: more is waiting
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        let _ = tx.send(Arc::new(TailItem::Failed(
                            status.code(),
                            status.message().to_owned(),
                        )));
                        failures = 0;
                    }
                }
                Err(status) => {
                    let _ = tx.send(Arc::new(TailItem::Failed(
                        status.code(),
                        status.message().to_owned(),
                    )));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                // no sender (a Query not served by `run`): only the timer wakes the poller
                () = stopping.cancelled() => {}
            }
        }
    }

    /// One pass of the poller; `Ok(true)` when every partition was read to its position.
    async fn poll_once(
        &self,
        sql: &SqlTarget,
        head: &mut Cursor,
        tx: &broadcast::Sender<Arc<TailItem>>,
    ) -> Result<bool, Status> {
        let (found, complete) = read_new(sql, head, None, &[], &self.poll_queries).await?;
        for (partition, at, payload) in found {
            advance(head, partition, at);
            let item = match payload {
                Some(payload) => TailItem::Row {
                    partition,
                    at,
                    payload,
                },
                None => TailItem::Through { partition, at },
            };
            // no receiver left: the next pass stops the poller
            let _ = tx.send(Arc::new(item));
        }
        Ok(complete)
    }

    /// Serves one watcher until the client goes away, the server stops or the tail fails.
    pub(crate) async fn serve(
        self: Arc<Self>,
        sql: SqlTarget,
        tokens: TokenKey,
        mut watcher: Watch,
        tx: mpsc::Sender<Result<PayloadEvent, Status>>,
        stopping: CancellationToken,
    ) {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.watchers);
        let mut rx = match self.subscribe(&sql, &stopping).await {
            Ok(rx) => rx,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        loop {
            // catch up from the database from this watcher's own position
            if !self
                .catch_up(&sql, &tokens, &mut watcher, &tx, &stopping)
                .await
            {
                return;
            }
            // then follow the shared tail until it runs ahead of this watcher
            loop {
                if stopping.is_cancelled() {
                    return;
                }
                let item = tokio::select! {
                    item = rx.recv() => item,
                    () = tx.closed() => return,
                    () = stopping.cancelled() => continue,
                };
                match item {
                    Ok(item) => match &*item {
                        TailItem::Row {
                            partition,
                            at,
                            payload,
                        } => {
                            if !advance(&mut watcher.cursor, *partition, *at) {
                                continue; // caught up past it already
                            }
                            if watcher.wants(payload)
                                && !send(&tx, &tokens, &watcher.cursor, payload.clone()).await
                            {
                                return;
                            }
                        }
                        TailItem::Through { partition, at } => {
                            advance(&mut watcher.cursor, *partition, *at);
                        }
                        TailItem::Failed(code, message) => {
                            let _ = tx.send(Err(Status::new(*code, message.clone()))).await;
                            return;
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.lagged.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            missed,
                            "live tail watcher fell behind; catching up from the database"
                        );
                        break;
                    }
                    // the poller stopped (the server is stopping)
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    /// Reads this watcher's rows from the database until it reached the stored positions;
    /// `false` when the watcher is done (client gone, stopping, or an error sent).
    async fn catch_up(
        &self,
        sql: &SqlTarget,
        tokens: &TokenKey,
        watcher: &mut Watch,
        tx: &mpsc::Sender<Result<PayloadEvent, Status>>,
        stopping: &CancellationToken,
    ) -> bool {
        // the database away: keep the stream and read again at the poll interval
        let mut retry = Retry::new(
            Backoff::new(WATCH_INTERVAL, WATCH_INTERVAL),
            stopping,
            "live tail catch-up",
        );
        loop {
            if tx.is_closed() || stopping.is_cancelled() {
                return false;
            }
            match read_new(
                sql,
                &watcher.cursor,
                watcher.user.as_deref(),
                &watcher.types,
                &self.catch_up_queries,
            )
            .await
            {
                Ok((found, complete)) => {
                    retry.done(());
                    for (partition, at, payload) in found {
                        advance(&mut watcher.cursor, partition, at);
                        // each event carries the position right after it
                        if let Some(payload) = payload
                            && watcher.wants(&payload)
                            && !send(tx, tokens, &watcher.cursor, payload).await
                        {
                            return false;
                        }
                    }
                    if complete {
                        return true;
                    }
                }
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && retry.failures() < MAX_FAILURES =>
                {
                    retry.wait(&status.message()).await;
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return false;
                }
            }
        }
    }
}

/// Decrements a gauge when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Moves `cursor` forward to `at` in `partition`; `false` when it already stood there or
/// beyond (nothing read yet stands before every row).
fn advance(cursor: &mut Cursor, partition: u32, at: (i64, i64)) -> bool {
    if at > cursor.get(&partition).copied().unwrap_or((-1, i64::MAX)) {
        cursor.insert(partition, at);
        true
    } else {
        false
    }
}

/// Sends one event with the sealed position; `false` when the client went away.
async fn send(
    tx: &mpsc::Sender<Result<PayloadEvent, Status>>,
    tokens: &TokenKey,
    cursor: &Cursor,
    payload: Payload,
) -> bool {
    tx.send(Ok(PayloadEvent {
        payload: Some(payload),
        position: seal(tokens, cursor),
    }))
    .await
    .is_ok()
}

pub(crate) fn seal(tokens: &TokenKey, cursor: &Cursor) -> String {
    let list: Vec<(u32, i64, i64)> = cursor.iter().map(|(&p, &(o, i))| (p, o, i)).collect();
    tokens.seal(&list)
}

/// A row read (`Some`), or a partition read through its stored position (`None`), at a
/// position, in log order.
type Found = Vec<(u32, (i64, i64), Option<Payload>)>;

/// Reads what lies after `cursor` below the stored positions (at most one batch per
/// partition): each row, and each partition read through its stored position (rows filtered
/// out included). Rows and positions are written in one transaction, so reading the
/// positions first and then the rows below them never skips a row that commits later. The
/// flag is true when every partition was read to its position.
async fn read_new(
    sql: &SqlTarget,
    cursor: &Cursor,
    user: Option<&str>,
    types: &[String],
    queries: &AtomicU64,
) -> Result<(Found, bool), Status> {
    queries.fetch_add(1, Ordering::Relaxed);
    let positions = db::positions(sql).await?;
    let mut found = Vec::new();
    let mut complete = true;
    for (partition, next) in positions {
        let done = (next - 1, i64::MAX);
        let (offset, index) = cursor.get(&partition).copied().unwrap_or((-1, i64::MAX));
        if (offset, index) >= done {
            continue; // nothing new in this partition
        }
        let mut stmt = sql.statement(format!(
            "SELECT {} FROM {} WHERE log_partition = ",
            PayloadIndexRow::COLUMNS,
            PayloadIndexRow::table(sql)
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
        queries.fetch_add(1, Ordering::Relaxed);
        let rows = db::fetch::<PayloadIndexRow>(sql, &stmt).await?;
        let full = rows.len() == WATCH_BATCH;
        for row in rows {
            let at = (row.log_offset, row.record_index);
            found.push((partition, at, Some(db::payload(row))));
        }
        if full {
            complete = false;
        } else {
            found.push((partition, done, None));
        }
    }
    Ok((found, complete))
}
