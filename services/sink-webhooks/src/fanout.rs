//! The fan-out as a projector [`Sink`] (group `webhooks`): each batch's events and their
//! deliveries (one per matching endpoint) written with the batch's positions in one
//! transaction, then the endpoints with new deliveries woken.

use std::collections::BTreeMap;
use std::sync::Arc;

use terra_projector::plan::Planned;
use terra_projector::{Sink, SinkError, WriteStats};
use terra_schema::SqlTarget;
use terra_schema::tables::WEBHOOK_POSITIONS;

use crate::dispatch::{Shared, now_ms};
use crate::endpoint::WebhookSettings;
use crate::metrics::WebhookMetrics;
use crate::store::{self, FanOutError};

/// The consumer group of the webhook destination.
pub const WEBHOOKS_GROUP: &str = "webhooks";

pub struct FanOutSink {
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    shared: Shared,
    metrics: WebhookMetrics,
}

impl FanOutSink {
    pub fn new(
        target: SqlTarget,
        settings: Arc<WebhookSettings>,
        shared: Shared,
        metrics: WebhookMetrics,
    ) -> Self {
        Self {
            target,
            settings,
            shared,
            metrics,
        }
    }
}

impl Sink for FanOutSink {
    fn name(&self) -> &str {
        WEBHOOKS_GROUP
    }

    async fn stored_positions(&mut self) -> Result<Option<BTreeMap<u32, u64>>, SinkError> {
        terra_schema::positions::stored_in(&self.target, WEBHOOK_POSITIONS)
            .await
            .map(Some)
            .map_err(SinkError::from)
    }

    async fn write(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        let out = match store::fan_out(&self.target, &self.settings, batch, now_ms()).await {
            Ok(out) => out,
            Err(FanOutError::Behind(stored)) => return Err(SinkError::Behind(stored)),
            Err(FanOutError::Sql(err)) => return Err(err.into()),
        };
        for event in out.events {
            self.shared.cache.put(event);
        }
        let mut created = 0;
        for (endpoint, n) in &out.deliveries {
            self.metrics.created(endpoint, *n);
            self.shared.wake(endpoint);
            created += n;
        }
        Ok(WriteStats {
            records: out.records,
            replayed: out.replayed,
            payloads: created,
            ..WriteStats::default()
        })
    }
}
