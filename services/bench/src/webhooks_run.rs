//! The webhook destination as `terra-bench webhooks` runs it: endpoints on the in-process
//! receiver, the fan-out and the dispatcher over an embedded log, the deliveries' states.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use secrecy::SecretString;
use sqlx::{Executor, Row};
use terra_eventlog::EventLog;
use terra_projector::{CancellationToken, ProjectorConfig, ProjectorMetrics};
use terra_schema::SqlTarget;
use terra_sink_webhooks::address::AddressPolicy;
use terra_sink_webhooks::send::Sender;
use terra_sink_webhooks::{
    Endpoint, FanOutSink, Filter, Ordering, Schedule, Shared, SignatureMode, WebhookMetrics,
    WebhookSettings,
};

pub(crate) const SECRET: &str = "whsec-bench-webhooks";

pub(crate) fn open_log(path: &std::path::Path) -> anyhow::Result<EventLog> {
    Ok(EventLog::Embedded(
        terra_eventlog::embedded::EmbeddedLog::open(path, 4)?,
    ))
}

pub(crate) fn endpoint(
    name: String,
    url: &str,
    max_in_flight: usize,
    schedule: Schedule,
) -> Endpoint {
    Endpoint {
        name,
        url: reqwest::Url::parse(url).expect("a URL"),
        secrets: vec![SecretString::from(SECRET)],
        signature: SignatureMode::Terra,
        filter: Filter::default(),
        headers: Vec::new(),
        timeout: Duration::from_secs(10),
        schedule,
        ordering: Ordering::Unordered,
        max_in_flight,
    }
}

pub(crate) fn settings(endpoints: Vec<Endpoint>) -> WebhookSettings {
    WebhookSettings {
        endpoints,
        allow_cidrs: vec!["127.0.0.0/8".parse().expect("a CIDR")],
        ..WebhookSettings::default()
    }
}

pub(crate) fn quick_schedule() -> Schedule {
    Schedule::new(vec![Duration::from_millis(100); 3]).expect("a schedule")
}

/// The destination (fan-out and dispatcher) running until the token is cancelled.
pub(crate) struct Running {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// The fan-out reads at most `batch_size` records per batch.
    pub(crate) fn start(
        log: &EventLog,
        target: &SqlTarget,
        settings: WebhookSettings,
        batch_size: usize,
    ) -> Self {
        let stop = CancellationToken::new();
        let settings = Arc::new(settings);
        let shared = Shared::new(&settings);
        let metrics = WebhookMetrics::unregistered();
        // the dispatcher first: the fan-out waits for it to start
        let sender =
            Sender::new(AddressPolicy::new(settings.allow_cidrs.clone())).expect("an HTTP client");
        let dispatching = terra_sink_webhooks::dispatch::run(
            target.clone(),
            settings.clone(),
            sender,
            metrics.clone(),
            shared.clone(),
            stop.clone(),
        );
        let dispatcher = tokio::spawn(async move {
            dispatching.await?;
            anyhow::Ok(())
        });
        let mut config = ProjectorConfig::new(terra_sink_webhooks::WEBHOOKS_GROUP);
        config.batch_wait = Duration::from_millis(10);
        config.batch_size = batch_size;
        let mut sink = FanOutSink::new(target.clone(), settings, shared, metrics);
        let (log, fan_out_stop) = (log.clone(), stop.clone());
        let fan_out = tokio::spawn(async move {
            terra_projector::run(
                &config,
                &log,
                &mut sink,
                &ProjectorMetrics::unregistered(),
                fan_out_stop,
                |_| {},
            )
            .await?;
            anyhow::Ok(())
        });
        Self {
            stop,
            tasks: vec![fan_out, dispatcher],
        }
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

/// (endpoint, state) → deliveries.
pub(crate) async fn states(target: &SqlTarget) -> anyhow::Result<Vec<(String, String, i64)>> {
    let rows = target
        .pool()
        .fetch_all(
            format!(
                "SELECT endpoint, state, COUNT(*) FROM {} GROUP BY endpoint, state",
                target.table("webhook_deliveries")
            )
            .as_str(),
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// Waits until `endpoint` has `n` deliveries in state `delivered` in SQL.
pub(crate) async fn wait_delivered(
    target: &SqlTarget,
    endpoint: &str,
    n: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let states = states(target).await?;
        let delivered = states
            .iter()
            .find(|(e, s, _)| e == endpoint && s == "delivered")
            .map_or(0, |r| r.2);
        if delivered as usize == n {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{endpoint}: {delivered} of {n} delivered after 120 s; {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
