//! Prometheus metrics of the ingress: requests by source and outcome, append latency, body
//! sizes. Served as text on `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) source: String,
    pub(crate) outcome: String,
}

/// The ingress's metrics, registered in a registry other services may share.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) append_seconds: Histogram,
    pub(crate) body_bytes: Histogram,
    /// Connections answered 503 because the connection cap was reached.
    pub(crate) connections_refused: Counter,
    /// Replay-cache entries evicted before their tolerance window ended (the cache was full).
    pub(crate) replay_cache_evictions: Counter,
    /// Deliveries whose `X-Terra-Ordering-Timestamp` was later than their signature and was
    /// capped to it.
    pub(crate) ordering_timestamps_capped: Counter,
    /// Webhooks held because a projection of the same process was too far behind
    /// (`standalone`), and the time they were held.
    pub(crate) projection_hold_seconds: Histogram,
    /// Held webhooks let through after the whole hold, the projection still behind.
    pub(crate) projection_holds_expired: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_extra(|_| {})
    }

    /// The ingress metrics plus whatever `extra` registers (other services of the same
    /// process, e.g. the projectors in `standalone`), all served on `GET /metrics`.
    pub fn with_extra(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("terra_ingest");
        extra(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by source and outcome",
            requests.clone(),
        );
        let append_seconds = Histogram::new(exponential_buckets(0.0002, 2.0, 16));
        registry.register(
            "log_append_seconds",
            "Time for the event log to confirm an append",
            append_seconds.clone(),
        );
        let body_bytes = Histogram::new(exponential_buckets(256.0, 4.0, 10));
        registry.register(
            "webhook_body_bytes",
            "Size of accepted webhook bodies",
            body_bytes.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections answered 503 because the connection cap was reached",
            connections_refused.clone(),
        );
        let replay_cache_evictions = Counter::default();
        registry.register(
            "replay_cache_evictions",
            "Replay-cache entries evicted before their tolerance window ended",
            replay_cache_evictions.clone(),
        );
        let ordering_timestamps_capped = Counter::default();
        registry.register(
            "ordering_timestamps_capped",
            "Deliveries whose X-Terra-Ordering-Timestamp was later than their signature",
            ordering_timestamps_capped.clone(),
        );
        let projection_hold_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 12));
        registry.register(
            "projection_hold_seconds",
            "Time webhooks were held because a projection of this process was more than projector.max_lag records behind",
            projection_hold_seconds.clone(),
        );
        let projection_holds_expired = Counter::default();
        registry.register(
            "projection_holds_expired",
            "Held webhooks let through after the whole hold with a projection still behind",
            projection_holds_expired.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            append_seconds,
            body_bytes,
            connections_refused,
            replay_cache_evictions,
            ordering_timestamps_capped,
            projection_hold_seconds,
            projection_holds_expired,
        }
    }

    pub(crate) fn outcome(&self, source: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                source: source.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The registry the ingress's metrics (and the `extra` ones) are in.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /metrics` on the webhook port (when there is no operations port).
pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    terra_runtime::ops::metrics(&state.inner.metrics.registry)
}
