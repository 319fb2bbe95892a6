//! The ingress service: receives Terra webhooks over HTTP, verifies them and answers 2xx only
//! once the event is durable in the event log.
//!
//! Per request, in this order: resolve the source (404), client address against the
//! source's allowlist (403), body size (413), `terra-signature` over the raw bytes (400/401),
//! classification, append (503 when the log cannot take it), answer 200 with the envelope id.
//! A delivery accepted before (the replay cache) is answered with its first 200 again.
//!
//! Every request is bounded: headers within a timeout, the body within a deadline, the whole
//! request within another; connections, requests in flight and body bytes in flight are
//! capped, and beyond a cap the answer is 503 with `Retry-After` at once.

mod body;
mod client_addr;
mod config;
mod error;
mod log_limit;
mod metrics;
mod replay;
mod serve;
mod trace;
mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use terra_eventlog::EventLog;
use terra_runtime::{CancellationToken, Readiness};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use config::{
    AllowEntry, DEFAULT_SOURCE, IngressConfig, Limits, Source, SourceError, TERRA_EGRESS_IPS,
};
pub use error::IngressError;
pub use metrics::Metrics;

/// Shared state of the ingress handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: IngressConfig,
    log: EventLog,
    metrics: Metrics,
    /// Webhook requests being handled.
    in_flight: Arc<Semaphore>,
    /// Body bytes held by requests being read or appended.
    in_flight_bytes: Arc<Semaphore>,
    replay: Option<Arc<replay::ReplayCache>>,
    rejection_logs: log_limit::LogLimiter,
}

impl AppState {
    pub fn new(config: IngressConfig, log: EventLog, metrics: Metrics) -> Self {
        let limits = &config.limits;
        let in_flight = Arc::new(Semaphore::new(limits.max_in_flight_requests));
        let in_flight_bytes = Arc::new(Semaphore::new(
            limits.max_in_flight_bytes.min(Semaphore::MAX_PERMITS),
        ));
        let replay = (config.replay_cache_entries > 0)
            .then(|| Arc::new(replay::ReplayCache::new(config.replay_cache_entries)));
        let rejection_logs = log_limit::LogLimiter::new(config.rejection_logs_per_sec);
        Self {
            inner: Arc::new(Inner {
                config,
                log,
                metrics,
                in_flight,
                in_flight_bytes,
                replay,
                rejection_logs,
            }),
        }
    }
}

/// The ingress routes: `POST /webhook`, `POST /webhooks/{source}`, `GET /healthz`,
/// `GET /readyz`, `GET /metrics` (all on one port).
pub fn router(state: AppState) -> Router {
    public_router(state.clone(), true)
}

/// The webhook port; with `ops` also `/readyz` (without internals) and `/metrics`.
fn public_router(state: AppState, ops: bool) -> Router {
    let mut router = Router::new()
        .route("/webhook", post(webhook::default_source))
        .route("/webhooks/{source}", post(webhook::named_source))
        .route("/healthz", get(|| async { "ok\n" }));
    if ops {
        router = router
            .route("/readyz", get(public_readyz))
            .route("/metrics", get(metrics::render));
    }
    router
        // the body is read by the webhook handler itself, against the configured limit
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The operations port: `GET /healthz`, `GET /readyz`, `GET /metrics` (the shared
/// operations router over the log's readiness).
fn ops_router(state: AppState) -> Router {
    terra_runtime::ops::router(
        state.inner.metrics.registry(),
        Arc::new(LogReadiness(state.inner.log.clone())),
    )
}

/// `/readyz`: the event log can take appends.
struct LogReadiness(EventLog);

impl Readiness for LogReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.check_ready().await.map_err(|e| e.to_string()) })
    }
}

/// The webhook port's `/readyz`: the same check as the operations port's, but its reason
/// goes to the service log only: anyone who can send a webhook can read this answer.
async fn public_readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = LogReadiness(state.inner.log.clone());
    let problem = match terra_runtime::ops::check_ready(&readiness).await {
        Ok(()) => return (StatusCode::OK, "ready\n"),
        Err(problem) => problem,
    };
    if let Some(suppressed) = state.inner.rejection_logs.admit() {
        tracing::warn!(problem = %problem, suppressed, "not ready");
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready: the event log cannot take appends (details in the service log and on the operations port)\n",
    )
}

/// Serves the ingress on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish (each gets its answer) and returns. With `ops_listener`,
/// `/readyz` and `/metrics` are served there instead of on the webhook port.
pub async fn run(
    config: IngressConfig,
    log: EventLog,
    metrics: Metrics,
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = config.limits.clone();
    let state = AppState::new(config, log, metrics.clone());
    let stopping = shutdown;
    let public = public_router(state.clone(), ops_listener.is_none());
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    let ops = match ops_listener {
        Some(ops_listener) => {
            tracing::info!(addr = %ops_listener.local_addr()?, "ingress operations endpoint listening");
            let server = serve::Server::new(&limits, metrics.clone());
            Some(tokio::spawn(server.serve(
                ops_listener,
                ops_router(state),
                stopping.clone(),
            )))
        }
        None => None,
    };
    let served = serve::Server::new(&limits, metrics)
        .serve(listener, public, stopping)
        .await;
    if let Some(ops) = ops {
        ops.await.map_err(std::io::Error::other)??;
    }
    served
}
