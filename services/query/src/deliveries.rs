//! The `WebhookDeliveries` methods (`proto/terra/ingest/v1/deliveries.proto`): what operators
//! see and do with webhook deliveries, through `terra_sink_webhooks::admin` (the one place of
//! that SQL and of endpoint state changes). Served beside `QueryService` by
//! [`crate::server::run`], with the same authentication, deadline and in-flight cap. It writes
//! (re-queues, state changes), so it has a writable target of its own: the query service's may
//! be read-only connections.

use std::sync::Arc;

use terra_schema::{SqlError, SqlTarget, TableSet};
use terra_sink_webhooks::admin::{
    self, AttemptRow, DeliveryFilter, DeliveryRow, DeliveryState, EndpointState, EndpointStatus,
    MAX_LIMIT,
};
use tonic::{Request, Response, Status};

use crate::db::{self, timestamp};
use crate::limits::{Gates, Limits};
use crate::proto::webhook_deliveries_server::WebhookDeliveries;
use crate::proto::{
    GetDeliveryRequest, GetDeliveryResponse, ListDeliveriesRequest, ListDeliveriesResponse,
    ListEndpointsRequest, ListEndpointsResponse, RequeueDeadLettersRequest,
    RequeueDeadLettersResponse, SetEndpointStateRequest, SetEndpointStateResponse, WebhookAttempt,
    WebhookBacklog, WebhookDelivery, WebhookEndpoint,
};

/// Page size when the request sets none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Longest reason kept with a state change, in characters.
pub const MAX_REASON: usize = 1_000;

/// The service's state.
#[derive(Clone)]
pub struct Deliveries {
    /// Writable: re-queues and state changes go through it.
    pub(crate) sql: SqlTarget,
    /// The endpoints of the configuration (listed even before they have a row).
    configured: Arc<Vec<String>>,
    /// The caps and deadline, shared with the query service (set by `run`).
    pub(crate) gates: Gates,
}

impl Deliveries {
    /// The service over `sql`, a writable target of the webhook tables' database (not the
    /// query service's read-only pool).
    pub fn new(sql: SqlTarget) -> Self {
        Self {
            sql,
            configured: Arc::new(Vec::new()),
            gates: Gates::new(&Limits::default()),
        }
    }

    /// The names of the configured endpoints (`[[webhooks.endpoints]]`).
    pub fn with_configured(mut self, names: Vec<String>) -> Self {
        self.configured = Arc::new(names);
        self
    }

    /// The database this service reads and writes.
    pub fn sql(&self) -> &SqlTarget {
        &self.sql
    }

    /// A database error as a status: FAILED_PRECONDITION when the webhook tables are not
    /// there (the likely cause on a fresh database), else as the query service maps them.
    async fn status(&self, err: SqlError) -> Status {
        match terra_schema::pending_set(&self.sql, TableSet::Webhooks).await {
            Ok(pending) if !pending.is_empty() => Status::failed_precondition(format!(
                "the webhook tables are not there (migrations not applied: {}): run `terra-ingest project webhooks` once, which creates them, or migrate the database first",
                pending.join(", ")
            )),
            _ => db::status(err),
        }
    }

    async fn endpoint_list(&self) -> Result<Vec<EndpointStatus>, Status> {
        match admin::endpoints(&self.sql, &self.configured, now_ms()).await {
            Ok(list) => Ok(list),
            Err(err) => Err(self.status(err).await),
        }
    }

    /// The endpoint named `name`, NOT_FOUND when neither configured nor in the tables.
    async fn known_endpoint(&self, name: &str) -> Result<EndpointStatus, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("endpoint is required"));
        }
        self.endpoint_list()
            .await?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "endpoint {name:?} is neither configured nor in the webhook tables"
                ))
            })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A required timestamp as Unix milliseconds, INVALID_ARGUMENT naming `field` otherwise.
fn millis(value: Option<prost_types::Timestamp>, field: &str) -> Result<i64, Status> {
    let t = value.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "{field} has nanos {} outside 0..1e9",
            t.nanos
        )));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .ok_or_else(|| Status::invalid_argument(format!("{field} is out of range")))
}

/// The filter of a `ListDeliveries` request, INVALID_ARGUMENT naming the bad field.
fn filter(r: ListDeliveriesRequest) -> Result<DeliveryFilter, Status> {
    let state = r
        .state
        .as_deref()
        .map(DeliveryState::parse)
        .transpose()
        .map_err(|e| Status::invalid_argument(format!("state: {e}")))?;
    let limit = match r.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(Status::invalid_argument(format!(
                "limit {n} is out of bounds (1..={MAX_LIMIT})"
            )));
        }
    };
    if r.after_id < 0 {
        return Err(Status::invalid_argument("after_id must not be negative"));
    }
    Ok(DeliveryFilter {
        endpoint: r.endpoint,
        user_id: r.user_id,
        envelope_id: r.envelope_id,
        state,
        after_id: r.after_id,
        limit,
    })
}

pub(crate) fn endpoint(e: EndpointStatus) -> WebhookEndpoint {
    WebhookEndpoint {
        name: e.name,
        configured: e.configured,
        state: e.state.as_str().to_owned(),
        reason: e.reason,
        changed_at: e.changed_at_ms.map(timestamp),
        failing_since: e.failing_since_ms.map(timestamp),
        last_success: e.last_success_ms.map(timestamp),
        next_probe_at: e.next_probe_at_ms.map(timestamp),
        backlog: Some(WebhookBacklog {
            pending: e.backlog.pending,
            due: e.backlog.due,
            dead: e.backlog.dead,
            oldest_pending_created_at: e.backlog.oldest_pending_created_at_ms.map(timestamp),
        }),
    }
}

fn delivery(d: DeliveryRow) -> WebhookDelivery {
    WebhookDelivery {
        id: d.id,
        endpoint: d.endpoint,
        envelope_id: d.envelope_id,
        user_id: d.user_id,
        event_type: d.event_type,
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: Some(timestamp(d.next_attempt_at_ms)),
        lease_until: d.lease_until_ms.map(timestamp),
        created_at: Some(timestamp(d.created_at_ms)),
        finished_at: d.finished_at_ms.map(timestamp),
        last_status: d.last_status.map(|s| s as i32),
        last_error: d.last_error,
    }
}

fn attempt(a: AttemptRow) -> WebhookAttempt {
    WebhookAttempt {
        id: a.id,
        attempt: a.attempt,
        probe: a.probe,
        started_at: Some(timestamp(a.started_at_ms)),
        duration_ms: a.duration_ms,
        status_code: a.status_code.map(|s| s as i32),
        error_class: a.error_class,
        error: a.error,
        response: a.response,
    }
}

#[tonic::async_trait]
impl WebhookDeliveries for Deliveries {
    async fn list_endpoints(
        &self,
        _request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        self.gates
            .call(async move {
                let endpoints = self.endpoint_list().await?;
                Ok(Response::new(ListEndpointsResponse {
                    endpoints: endpoints.into_iter().map(endpoint).collect(),
                }))
            })
            .await
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        self.gates
            .call(async move {
                let filter = filter(request.into_inner())?;
                let rows = match admin::deliveries(&self.sql, &filter).await {
                    Ok(rows) => rows,
                    Err(err) => return Err(self.status(err).await),
                };
                let next_after_id = match rows.last() {
                    Some(last) if rows.len() == filter.limit as usize => last.id,
                    _ => 0,
                };
                Ok(Response::new(ListDeliveriesResponse {
                    deliveries: rows.into_iter().map(delivery).collect(),
                    next_after_id,
                }))
            })
            .await
    }

    async fn get_delivery(
        &self,
        request: Request<GetDeliveryRequest>,
    ) -> Result<Response<GetDeliveryResponse>, Status> {
        self.gates
            .call(async move {
                let id = request.into_inner().id;
                let found = match admin::delivery(&self.sql, id).await {
                    Ok(found) => found,
                    Err(err) => return Err(self.status(err).await),
                };
                let (row, attempts) =
                    found.ok_or_else(|| Status::not_found(format!("no delivery with id {id}")))?;
                Ok(Response::new(GetDeliveryResponse {
                    delivery: Some(delivery(row)),
                    attempts: attempts.into_iter().map(attempt).collect(),
                }))
            })
            .await
    }

    async fn requeue_dead_letters(
        &self,
        request: Request<RequeueDeadLettersRequest>,
    ) -> Result<Response<RequeueDeadLettersResponse>, Status> {
        self.gates
            .call(async move {
                let r = request.into_inner();
                let from = millis(r.created_from, "created_from")?;
                let to = millis(r.created_to, "created_to")?;
                if from > to {
                    return Err(Status::invalid_argument(
                        "created_from is after created_to",
                    ));
                }
                self.known_endpoint(&r.endpoint).await?;
                match admin::requeue_dead(&self.sql, &r.endpoint, from, to, now_ms()).await {
                    Ok(requeued) => {
                        tracing::info!(endpoint = %r.endpoint, from, to, requeued, "dead letters re-queued");
                        Ok(Response::new(RequeueDeadLettersResponse { requeued }))
                    }
                    Err(err) => Err(self.status(err).await),
                }
            })
            .await
    }

    async fn set_endpoint_state(
        &self,
        request: Request<SetEndpointStateRequest>,
    ) -> Result<Response<SetEndpointStateResponse>, Status> {
        self.gates
            .call(async move {
                let r = request.into_inner();
                let state = match EndpointState::parse(&r.state) {
                    Ok(EndpointState::Disabled) => {
                        return Err(Status::invalid_argument(
                            "state \"disabled\" is the dispatcher's (an endpoint failing too long); to stop an endpoint, set \"paused\"",
                        ));
                    }
                    Ok(state) => state,
                    Err(e) => {
                        return Err(Status::invalid_argument(format!(
                            "state: {e}; operators set \"enabled\" or \"paused\""
                        )));
                    }
                };
                if r.reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON) {
                    return Err(Status::invalid_argument(format!(
                        "reason is longer than {MAX_REASON} characters"
                    )));
                }
                self.known_endpoint(&r.endpoint).await?;
                if let Err(err) = admin::set_state(
                    &self.sql,
                    &r.endpoint,
                    state,
                    r.reason.as_deref(),
                    now_ms(),
                )
                .await
                {
                    return Err(self.status(err).await);
                }
                tracing::info!(endpoint = %r.endpoint, state = state.as_str(), "endpoint state set");
                let after = self.known_endpoint(&r.endpoint).await?;
                Ok(Response::new(SetEndpointStateResponse {
                    endpoint: Some(endpoint(after)),
                }))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_name_the_field() {
        let bad = |r: ListDeliveriesRequest| filter(r).unwrap_err();
        let err = bad(ListDeliveriesRequest {
            state: Some("gone".into()),
            ..Default::default()
        });
        assert!(
            err.code() == tonic::Code::InvalidArgument && err.message().starts_with("state:"),
            "{err:?}"
        );
        for limit in [0, MAX_LIMIT + 1] {
            let err = bad(ListDeliveriesRequest {
                limit: Some(limit),
                ..Default::default()
            });
            assert!(err.message().contains("limit"), "{err:?}");
        }
        let err = bad(ListDeliveriesRequest {
            after_id: -1,
            ..Default::default()
        });
        assert!(err.message().contains("after_id"), "{err:?}");
        assert_eq!(
            filter(ListDeliveriesRequest::default()).unwrap().limit,
            DEFAULT_LIMIT
        );
    }

    #[test]
    fn timestamps_are_checked() {
        let t = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        assert_eq!(millis(t(2, 5_000_000), "f").unwrap(), 2_005);
        assert!(
            millis(None, "created_to")
                .unwrap_err()
                .message()
                .contains("created_to")
        );
        assert!(millis(t(1, -1), "f").is_err());
        assert!(millis(t(i64::MAX, 0), "f").is_err());
    }
}
