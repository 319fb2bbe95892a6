//! Prometheus metrics of the webhook destination (prefix `webhook_`): deliveries by endpoint
//! and outcome, attempt latency, the due backlog and the oldest pending delivery's age per
//! endpoint, each endpoint's state, rows pruned.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    endpoint: String,
    /// `delivered`, `retry`, `dead`, `probe_failed`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    /// `deliveries`, `attempts`, `events`.
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    endpoint: String,
    state: String,
}

type HistogramFamily = Family<EndpointLabel, Histogram, fn() -> Histogram>;

fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The states an endpoint can be in (one gauge each, 1 for the current one).
pub const STATES: [&str; 3] = ["enabled", "disabled", "paused"];

/// Handles to the metrics; clones share them.
#[derive(Clone)]
pub struct WebhookMetrics {
    attempts: Family<OutcomeLabel, Counter>,
    created: Family<EndpointLabel, Counter>,
    attempt_seconds: HistogramFamily,
    due: Family<EndpointLabel, Gauge>,
    oldest_pending: Family<EndpointLabel, Gauge>,
    state: Family<StateLabel, Gauge>,
    unreachable: Family<EndpointLabel, Gauge>,
    pruned: Family<TableLabel, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        let registry = registry.sub_registry_with_prefix("webhook");
        registry.register(
            "attempts",
            "Delivery attempts by endpoint and outcome (delivered, retry, dead, probe_failed)",
            metrics.attempts.clone(),
        );
        registry.register(
            "deliveries_created",
            "Deliveries created by the fan-out, by endpoint",
            metrics.created.clone(),
        );
        registry.register(
            "attempt_seconds",
            "Duration of delivery attempts",
            metrics.attempt_seconds.clone(),
        );
        registry.register(
            "backlog_due",
            "Pending deliveries due now, by endpoint",
            metrics.due.clone(),
        );
        registry.register(
            "oldest_pending_seconds",
            "Age of the oldest pending delivery, by endpoint (0 when none)",
            metrics.oldest_pending.clone(),
        );
        registry.register(
            "endpoint_state",
            "1 for the endpoint's current state (enabled, disabled, paused)",
            metrics.state.clone(),
        );
        registry.register(
            "endpoint_unreachable",
            "1 while this process finds the endpoint refusing connections: only probes go to it",
            metrics.unreachable.clone(),
        );
        registry.register(
            "pruned_rows",
            "Rows pruned: finished deliveries and attempts past the retention, event bodies \
             nothing will send again (table: deliveries, attempts, events)",
            metrics.pruned.clone(),
        );
        metrics
    }

    pub fn unregistered() -> Self {
        Self {
            attempts: Family::default(),
            created: Family::default(),
            attempt_seconds: Family::new_with_constructor(attempt_histogram),
            due: Family::default(),
            oldest_pending: Family::default(),
            state: Family::default(),
            unreachable: Family::default(),
            pruned: Family::default(),
        }
    }

    pub fn attempt(&self, endpoint: &str, outcome: &str, took: Duration) {
        self.attempts
            .get_or_create(&OutcomeLabel {
                endpoint: endpoint.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.attempt_seconds
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn created(&self, endpoint: &str, n: usize) {
        self.created
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .inc_by(n as u64);
    }

    pub fn backlog(&self, endpoint: &str, due: i64, oldest_age: Duration) {
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        self.due.get_or_create(&label).set(due);
        self.oldest_pending
            .get_or_create(&label)
            .set(oldest_age.as_secs() as i64);
    }

    pub fn pruned(&self, pruned: &crate::prune::Pruned) {
        for (table, n) in [
            ("deliveries", pruned.deliveries),
            ("attempts", pruned.attempts),
            ("events", pruned.events),
        ] {
            self.pruned
                .get_or_create(&TableLabel {
                    table: table.to_owned(),
                })
                .inc_by(n);
        }
    }

    pub fn unreachable(&self, endpoint: &str, unreachable: bool) {
        self.unreachable
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .set(i64::from(unreachable));
    }

    pub fn state(&self, endpoint: &str, state: &str) {
        for s in STATES {
            self.state
                .get_or_create(&StateLabel {
                    endpoint: endpoint.to_owned(),
                    state: s.to_owned(),
                })
                .set(i64::from(s == state));
        }
    }
}
