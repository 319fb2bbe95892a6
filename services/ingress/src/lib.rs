//! The ingress service: receives Terra webhooks over HTTP, verifies them and answers 2xx only
//! once the event is durable in the event log.
//!
//! Per request, in this order: resolve the source (404), client address against the
//! source's allowlist (403), body size (413), `terra-signature` over the raw bytes (400/401),
//! classification, append (503 when the log cannot take it), answer 200 with the envelope id.

mod client_addr;
mod config;
mod error;
mod metrics;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use terra_eventlog::EventLog;
use tokio::net::TcpListener;

pub use config::{
    AllowEntry, DEFAULT_SOURCE, IngressConfig, Source, SourceError, TERRA_EGRESS_IPS,
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
}

impl AppState {
    pub fn new(config: IngressConfig, log: EventLog, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                log,
                metrics,
            }),
        }
    }
}

/// The ingress routes: `POST /webhook`, `POST /webhooks/{source}`, `GET /healthz`,
/// `GET /readyz`, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhook", post(webhook::default_source))
        .route("/webhooks/{source}", post(webhook::named_source))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        // the body is read by the webhook handler itself, against the configured limit
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(3), state.inner.log.check_ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {err}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: event log check timed out\n".to_owned(),
        ),
    }
}

/// Serves the ingress on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (each gets its answer) and returns.
pub async fn run(
    config: IngressConfig,
    log: EventLog,
    metrics: Metrics,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(AppState::new(config, log, metrics));
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
