//! The `QueryService` methods: argument checks (INVALID_ARGUMENT naming the field), keyset
//! pagination with sealed page tokens, payload bodies streamed from the object store chunk by
//! chunk, and the live tail (shared, see `tail`). Every call but the live tail runs under the
//! server's deadline and in-flight cap; live tails under their own cap.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use terra_runtime::CancellationToken;
use terra_schema::SqlTarget;
use terra_sink_objects::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use terra_schema::read::{FromRow, PayloadIndexRow, UserEventRow, UserRow};
use terra_schema::tables::PAYLOAD_VERSION_COLUMNS;

use crate::db;
use crate::limits::{Gates, Limits};
use crate::proto::query_service_server::QueryService;
use crate::proto::{
    GetPayloadChunk, GetPayloadRequest, GetUserRequest, ListPayloadsRequest, ListPayloadsResponse,
    ListUserEventsRequest, ListUserEventsResponse, ListUsersRequest, ListUsersResponse, Order,
    PayloadEvent, User, WatchPayloadsRequest, get_payload_chunk,
};
use crate::tail::{Cursor, Tail, TailStats, Watch};
use crate::token::TokenKey;

/// Most items a page may hold; the default when the request says 0.
pub const MAX_PAGE_SIZE: u32 = 1_000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest data message of `GetPayload`.
pub const CHUNK: usize = 64 * 1024;
/// Events a live tail holds for a client that reads slower than they come.
const WATCHER_QUEUE: usize = 32;

/// The service's state.
#[derive(Clone)]
pub struct Query {
    pub(crate) sql: SqlTarget,
    pub(crate) objects: Store,
    pub(crate) tokens: TokenKey,
    /// Cancelled when the server shuts down: live tails end so it can drain.
    pub(crate) stopping: CancellationToken,
    /// The caps and deadline (set by `run` from its [`Limits`]).
    pub(crate) gates: Gates,
    /// The one live tail every watcher follows.
    pub(crate) tail: Arc<Tail>,
    /// The `WebhookDeliveries` service served beside this one, when given.
    pub(crate) deliveries: Option<crate::Deliveries>,
}

impl Query {
    /// The service over `sql` (read through [`SqlTarget::reader`]'s native pool on Postgres).
    pub fn new(sql: SqlTarget, objects: Store, tokens: TokenKey) -> Self {
        let stopping = CancellationToken::new();
        Self {
            sql: sql.reader(),
            objects,
            tokens,
            stopping,
            gates: Gates::new(&Limits::default()),
            tail: Arc::new(Tail::new()),
            deliveries: None,
        }
    }

    /// Serves `deliveries` (webhook endpoints and deliveries for operators) beside the query
    /// API, under the same authentication and limits.
    pub fn with_deliveries(mut self, deliveries: crate::Deliveries) -> Self {
        self.deliveries = Some(deliveries);
        self
    }

    /// Rows the shared live tail keeps for watchers that are momentarily behind (default
    /// 1024); a watcher further behind catches up from the database.
    pub fn with_tail_buffer(self, rows: usize) -> Self {
        self.tail.set_buffer(rows);
        self
    }

    /// How the shared live tail is doing (pollers, watchers, queries, lagging watchers).
    pub fn tail_stats(&self) -> TailStats {
        self.tail.stats()
    }

    /// The database this service reads.
    pub fn sql(&self) -> &SqlTarget {
        &self.sql
    }
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "page_size {n} is out of bounds (1..={MAX_PAGE_SIZE})"
        ))),
    }
}

fn user_id(value: &str) -> Result<&str, Status> {
    match terra_core::UserId::parse(value) {
        Ok(_) => Ok(value),
        Err(_) => Err(Status::invalid_argument("user_id must be 1-36 characters")),
    }
}

/// A history's user: `None` for `""`, the user-less history (events without a user:
/// `auth_cancelled`, lab reports, healthchecks, ...).
fn history_user(value: &str) -> Result<Option<&str>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    match terra_core::UserId::parse(value) {
        Ok(_) => Ok(Some(value)),
        Err(_) => Err(Status::invalid_argument(
            "user_id must be 1-36 characters (or empty for the events without a user)",
        )),
    }
}

/// A page token: where the previous page ended, and a fingerprint of the filters it was for.
#[derive(Serialize, Deserialize)]
struct PageToken {
    filters: String,
    after: Vec<String>,
}

impl Query {
    fn open_page(&self, token: &str, filters: &str) -> Result<Option<Vec<String>>, Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let page: PageToken = self.tokens.open(token).ok_or_else(|| {
            Status::invalid_argument("page_token is invalid (changed, or not from this service)")
        })?;
        if page.filters != filters {
            return Err(Status::invalid_argument(
                "page_token was issued for other filters",
            ));
        }
        Ok(Some(page.after))
    }

    fn seal_page(&self, filters: &str, after: Vec<String>) -> String {
        self.tokens.seal(&PageToken {
            filters: filters.to_owned(),
            after,
        })
    }

    /// The newest index row of a payload and its object, opened for streaming (nothing of
    /// the body is read yet).
    async fn open_payload(
        &self,
        payload_id: &str,
    ) -> Result<(crate::proto::Payload, object_store::GetResult), Status> {
        let mut stmt = self.sql.statement(format!(
            "SELECT {} FROM {} WHERE payload_id = ",
            PayloadIndexRow::COLUMNS,
            PayloadIndexRow::table(&self.sql)
        ));
        // the newest copy: last writer wins
        stmt.bind(payload_id).push(&format!(
            " ORDER BY {} DESC",
            PAYLOAD_VERSION_COLUMNS.join(" DESC, ")
        ));
        db::push_limit(&mut stmt, 1);
        let rows = db::fetch::<PayloadIndexRow>(&self.sql, &stmt).await?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found("no such payload"))?;
        let metadata = db::payload(row);
        let key = self.objects.key(payload_id);
        let path = object_store::path::Path::parse(&key)
            .map_err(|_| Status::invalid_argument("payload_id is not a valid key"))?;
        match self.objects.object_store().get(&path).await {
            Ok(object) => Ok((metadata, object)),
            Err(object_store::Error::NotFound { .. }) => Err(Status::unavailable(
                "the payload's body is not in the object store yet; retry",
            )),
            Err(_) => Err(Status::unavailable("object store unavailable; retry")),
        }
    }
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        self.gates
            .call(async move {
                let request = request.into_inner();
                let id = user_id(&request.user_id)?;
                let mut stmt = self.sql.statement(format!(
                    "SELECT {} FROM {} WHERE u.user_id = ",
                    UserRow::COLUMNS,
                    UserRow::from_clause(&self.sql)
                ));
                stmt.bind(id);
                let rows = db::fetch::<UserRow>(&self.sql, &stmt).await?;
                let row = rows
                    .into_iter()
                    .next()
                    .ok_or_else(|| Status::not_found("no such user"))?;
                Ok(Response::new(db::user(row)))
            })
            .await
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.gates
            .call(async move {
                let r = request.into_inner();
                let size = page_size(r.page_size)?;
                let filters = serde_json::to_string(&(&r.provider, &r.reference_id, &r.state))
                    .expect("serialises");
                let after = self.open_page(&r.page_token, &filters)?;
                let mut stmt = self.sql.statement(format!(
                    "SELECT {} FROM {} WHERE 1 = 1",
                    UserRow::COLUMNS,
                    UserRow::from_clause(&self.sql)
                ));
                for (column, value) in [
                    ("u.provider", &r.provider),
                    ("u.reference_id", &r.reference_id),
                    ("u.state", &r.state),
                ] {
                    if let Some(value) = value {
                        stmt.push(&format!(" AND {column} = ")).bind(value);
                    }
                }
                if let Some(after) = after.as_ref().and_then(|a| a.first()) {
                    stmt.push(" AND u.user_id > ").bind(after);
                }
                stmt.push(" ORDER BY u.user_id");
                db::push_limit(&mut stmt, size + 1);
                let mut rows = db::fetch::<UserRow>(&self.sql, &stmt).await?;
                let next_page_token = if rows.len() > size {
                    rows.truncate(size);
                    let last = rows.last().expect("a full page");
                    self.seal_page(&filters, vec![last.user_id.clone()])
                } else {
                    String::new()
                };
                Ok(Response::new(ListUsersResponse {
                    users: rows.into_iter().map(db::user).collect(),
                    next_page_token,
                }))
            })
            .await
    }

    async fn list_user_events(
        &self,
        request: Request<ListUserEventsRequest>,
    ) -> Result<Response<ListUserEventsResponse>, Status> {
        self.gates
            .call(async move {
                let r = request.into_inner();
                let id = history_user(&r.user_id)?.map(str::to_owned);
                let size = page_size(r.page_size)?;
                let filters = serde_json::to_string(&id).expect("serialises");
                let after = self.open_page(&r.page_token, &filters)?;
                let mut stmt = self.sql.statement(format!(
                    "SELECT {} FROM {} WHERE user_id = ",
                    UserEventRow::COLUMNS,
                    UserEventRow::table(&self.sql)
                ));
                match &id {
                    Some(id) => stmt.bind(id),
                    // the user-less history: history rows under "" with no part of a user
                    None => stmt
                        .bind("")
                        .push(" AND user_role = ")
                        .bind(terra_core::NO_USER_ROLE),
                };
                if let Some(after) = &after {
                    if after.len() != 4 {
                        return Err(Status::invalid_argument("page_token is invalid"));
                    }
                    let n = |i: usize| {
                        after[i]
                            .parse::<i64>()
                            .map_err(|_| Status::invalid_argument("page_token is invalid"))
                    };
                    stmt.push(" AND (version_ts_ms, log_partition, log_offset, event_id) > (")
                        .bind(n(0)?)
                        .push(", ")
                        .bind(n(1)?)
                        .push(", ")
                        .bind(n(2)?)
                        .push(", ")
                        .bind(&after[3])
                        .push(")");
                }
                stmt.push(" ORDER BY version_ts_ms, log_partition, log_offset, event_id");
                db::push_limit(&mut stmt, size + 1);
                let mut rows = db::fetch::<UserEventRow>(&self.sql, &stmt).await?;
                let next_page_token = if rows.len() > size {
                    rows.truncate(size);
                    let last = rows.last().expect("a full page");
                    self.seal_page(
                        &filters,
                        vec![
                            last.version_ts_ms.to_string(),
                            last.log_partition.to_string(),
                            last.log_offset.to_string(),
                            last.event_id.clone(),
                        ],
                    )
                } else {
                    String::new()
                };
                Ok(Response::new(ListUserEventsResponse {
                    events: rows.into_iter().map(db::user_event).collect(),
                    next_page_token,
                }))
            })
            .await
    }

    async fn list_payloads(
        &self,
        request: Request<ListPayloadsRequest>,
    ) -> Result<Response<ListPayloadsResponse>, Status> {
        self.gates
            .call(async move {
                let r = request.into_inner();
                let id = history_user(&r.user_id)?.map(str::to_owned);
                let size = page_size(r.page_size)?;
                let normalise =
                    |field: &str, value: &Option<String>| -> Result<Option<String>, Status> {
                        value
                            .as_deref()
                            .map(|v| {
                                terra_core::keys::iso_to_utc_seconds(v).ok_or_else(|| {
                                    Status::invalid_argument(format!(
                                        "{field} {v:?} is not an RFC 3339 date-time with an offset"
                                    ))
                                })
                            })
                            .transpose()
                    };
                let from = normalise("start_time_from", &r.start_time_from)?;
                let to = normalise("start_time_to", &r.start_time_to)?;
                if let (Some(from), Some(to)) = (&from, &to)
                    && from > to
                {
                    return Err(Status::invalid_argument(
                        "the time range is inverted: start_time_from is after start_time_to",
                    ));
                }
                let oldest_first = r.order() == Order::OldestFirst;
                let mut types = r.types.clone();
                types.sort();
                types.dedup();
                let filters = serde_json::to_string(&(&id, &types, &from, &to, oldest_first))
                    .expect("serialises");
                let after = self.open_page(&r.page_token, &filters)?;
                let mut stmt = self.sql.statement(format!(
                    "SELECT {} FROM {} WHERE user_id ",
                    PayloadIndexRow::COLUMNS,
                    PayloadIndexRow::table(&self.sql)
                ));
                match &id {
                    Some(id) => stmt.push("= ").bind(id),
                    None => stmt.push("IS NULL"),
                };
                db::push_in(&mut stmt, "event_type", &types);
                if let Some(from) = &from {
                    stmt.push(" AND start_utc >= ").bind(from);
                }
                if let Some(to) = &to {
                    stmt.push(" AND start_utc < ").bind(to);
                }
                let (cmp, dir) = if oldest_first {
                    (">", "ASC")
                } else {
                    ("<", "DESC")
                };
                if let Some(after) = &after {
                    let [start, key] = after.as_slice() else {
                        return Err(Status::invalid_argument("page_token is invalid"));
                    };
                    stmt.push(&format!(" AND (start_utc, row_key) {cmp} ("))
                        .bind(start)
                        .push(", ")
                        .bind(key)
                        .push(")");
                }
                stmt.push(&format!(" ORDER BY start_utc {dir}, row_key {dir}"));
                db::push_limit(&mut stmt, size + 1);
                let mut rows = db::fetch::<PayloadIndexRow>(&self.sql, &stmt).await?;
                let next_page_token = if rows.len() > size {
                    rows.truncate(size);
                    let last = rows.last().expect("a full page");
                    self.seal_page(&filters, db::payload_cursor(last))
                } else {
                    String::new()
                };
                Ok(Response::new(ListPayloadsResponse {
                    payloads: rows.into_iter().map(db::payload).collect(),
                    next_page_token,
                }))
            })
            .await
    }

    type GetPayloadStream = Pin<Box<dyn Stream<Item = Result<GetPayloadChunk, Status>> + Send>>;

    async fn get_payload(
        &self,
        request: Request<GetPayloadRequest>,
    ) -> Result<Response<Self::GetPayloadStream>, Status> {
        let payload_id = request.into_inner().payload_id;
        if terra_core::PayloadId::parse(payload_id.as_str()).is_err() {
            return Err(Status::invalid_argument(format!(
                "payload_id must be 1-{} characters",
                terra_core::PayloadId::MAX_LEN
            )));
        }
        // the permit and the deadline cover the body too: it is part of the answer
        let permit = self.gates.call_permit()?;
        let deadline = tokio::time::Instant::now() + self.gates.timeout;
        let (metadata, object) = tokio::time::timeout_at(deadline, self.open_payload(&payload_id))
            .await
            .unwrap_or_else(|_| Err(self.gates.deadline_exceeded()))?;
        let metadata = GetPayloadChunk {
            chunk: Some(get_payload_chunk::Chunk::Metadata(metadata)),
        };
        let body = crate::body::chunks(object, deadline, self.gates.clone(), permit);
        Ok(Response::new(Box::pin(
            futures::stream::once(async { Ok(metadata) }).chain(body),
        )))
    }

    type WatchPayloadsStream = Pin<Box<dyn Stream<Item = Result<PayloadEvent, Status>> + Send>>;

    async fn watch_payloads(
        &self,
        request: Request<WatchPayloadsRequest>,
    ) -> Result<Response<Self::WatchPayloadsStream>, Status> {
        let r = request.into_inner();
        if let Some(id) = &r.user_id {
            user_id(id)?;
        }
        let resumed: Option<Cursor> = if r.resume_from.is_empty() {
            None
        } else {
            let saved: Vec<(u32, i64, i64)> =
                self.tokens.open(&r.resume_from).ok_or_else(|| {
                    Status::invalid_argument(
                        "resume_from is invalid (changed, or not from this service)",
                    )
                })?;
            Some(saved.into_iter().map(|(p, o, i)| (p, (o, i))).collect())
        };
        // a live tail is long by design: it has its own cap, not the calls' cap and deadline
        let permit = self.gates.watcher_permit()?;
        let cursor = match resumed {
            Some(cursor) => cursor,
            // from now on: everything the projection already holds is behind the cursor
            None => tokio::time::timeout(self.gates.timeout, db::positions(&self.sql))
                .await
                .unwrap_or_else(|_| Err(self.gates.deadline_exceeded()))?
                .into_iter()
                .map(|(p, next)| (p, (next - 1, i64::MAX)))
                .collect(),
        };
        let mut types = r.types.clone();
        types.sort();
        types.dedup();
        let watcher = Watch {
            cursor,
            user: r.user_id,
            types,
        };
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let tail = self.tail.clone();
        let (sql, tokens, stopping) =
            (self.sql.clone(), self.tokens.clone(), self.stopping.clone());
        tokio::spawn(async move {
            tail.serve(sql, tokens, watcher, tx, stopping).await;
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
