//! Prometheus metrics of the projectors: records and payloads written, batch latency,
//! consumer lag per partition, dead letters, sink errors, sinks refusing writes (with the
//! cause kept for readiness checks). Registered into a registry the caller owns (the
//! ingress's in `standalone`, the projector's own `/metrics` otherwise).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::WriteStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    sink: String,
    partition: u32,
}

type HistogramFamily = Family<SinkLabel, Histogram, fn() -> Histogram>;

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Handles to the projector metrics; clones share them.
#[derive(Clone)]
pub struct ProjectorMetrics {
    records: Family<SinkLabel, Counter>,
    payloads: Family<SinkLabel, Counter>,
    replayed: Family<SinkLabel, Counter>,
    superseded: Family<SinkLabel, Counter>,
    dead_lettered: Family<SinkLabel, Counter>,
    sink_errors: Family<SinkLabel, Counter>,
    refused: Family<SinkLabel, Gauge>,
    /// The cause of each sink's current refusal (see [`ProjectorMetrics::refusal`]).
    refusals: Arc<Mutex<BTreeMap<String, String>>>,
    lag: Family<PartitionLabel, Gauge>,
    batch_seconds: HistogramFamily,
    plans_shared: Family<SinkLabel, Counter>,
}

impl ProjectorMetrics {
    /// Creates the metrics and registers them in `registry` (prefix `projector_`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            records: Family::default(),
            payloads: Family::default(),
            replayed: Family::default(),
            superseded: Family::default(),
            dead_lettered: Family::default(),
            sink_errors: Family::default(),
            refused: Family::default(),
            refusals: Arc::default(),
            lag: Family::default(),
            batch_seconds: Family::new_with_constructor(batch_histogram),
            plans_shared: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("projector");
        registry.register(
            "records",
            "Log records projected (including dead letters)",
            metrics.records.clone(),
        );
        registry.register(
            "payloads",
            "Payload rows or objects written",
            metrics.payloads.clone(),
        );
        registry.register(
            "replayed",
            "Records skipped because the sink already had them",
            metrics.replayed.clone(),
        );
        registry.register(
            "superseded",
            "Payload copies older than the stored one (last writer wins)",
            metrics.superseded.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records written to the dead-letter table",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "sink_errors",
            "Sink outages (each retried with backoff)",
            metrics.sink_errors.clone(),
        );
        registry.register(
            "sink_refused",
            "1 while the sink refuses writes for a reason that will not pass by itself (credentials, permissions, a missing bucket, a setting it does not accept); the log says why",
            metrics.refused.clone(),
        );
        registry.register(
            "consumer_lag",
            "Log records not yet read, per partition",
            metrics.lag.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time to write one batch",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "plans_shared",
            "Records whose plan another projector of the process made and kept for this one (standalone's shared plans): the rest it planned itself",
            metrics.plans_shared.clone(),
        );
        metrics
    }

    /// The counter of `sink`'s records planned by another projector
    /// ([`crate::PlanReader::counted`]).
    pub fn plans_shared(&self, sink: &str) -> Counter {
        self.plans_shared
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .clone()
    }

    /// Metrics registered nowhere (tools that do not serve `/metrics`).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub(crate) fn batch(&self, sink: &str, stats: &WriteStats, took: Duration) {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        self.records
            .get_or_create(&label)
            .inc_by(stats.records as u64);
        self.payloads
            .get_or_create(&label)
            .inc_by(stats.payloads as u64);
        self.replayed
            .get_or_create(&label)
            .inc_by(stats.replayed as u64);
        self.superseded
            .get_or_create(&label)
            .inc_by(stats.superseded as u64);
        self.dead_lettered
            .get_or_create(&label)
            .inc_by(stats.dead as u64);
        self.batch_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn sink_error(&self, sink: &str) {
        self.sink_errors
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Records that `sink` refuses writes because of `cause`; true when the cause is new
    /// (the sink was not refusing, or for another reason).
    pub(crate) fn refused(&self, sink: &str, cause: &str) -> bool {
        self.refused
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .set(1);
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals
            .insert(sink.to_owned(), cause.to_owned())
            .as_deref()
            != Some(cause)
    }

    /// Records that `sink` wrote; true when it was refusing until now.
    pub(crate) fn accepted(&self, sink: &str) -> bool {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let was = refusals.remove(sink).is_some();
        if was {
            self.refused
                .get_or_create(&SinkLabel {
                    sink: sink.to_owned(),
                })
                .set(0);
        }
        was
    }

    /// Why `sink` refuses writes, while it does (from the first refusal until a write
    /// succeeds): what a readiness check reports.
    pub fn refusal(&self, sink: &str) -> Option<String> {
        let refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals.get(sink).cloned()
    }

    pub(crate) fn set_lag(&self, sink: &str, lag: &BTreeMap<u32, u64>) {
        for (&partition, &records) in lag {
            self.lag
                .get_or_create(&PartitionLabel {
                    sink: sink.to_owned(),
                    partition,
                })
                .set(records.min(i64::MAX as u64) as i64);
        }
    }
}
