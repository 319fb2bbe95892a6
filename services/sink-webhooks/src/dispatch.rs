//! The dispatcher: one worker per endpoint leases that endpoint's due deliveries, sends them
//! (each attempt holding a permit of the endpoint's cap and one of the global cap, so a slow
//! or hanging endpoint holds at most its own share), and hands the results to one writer that
//! records them in batches and moves endpoints between states.
//!
//! Nothing is decided in memory alone: a delivery is pending in SQL until the writer has
//! recorded its end, so a crash at any point leaves it due again once its lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terra_runtime::{Backoff, CancellationToken, Retry};
use terra_schema::{SqlError, SqlTarget};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::cache::EventCache;
use crate::endpoint::{Endpoint, WebhookSettings};
use crate::metrics::WebhookMetrics;
use crate::send::{AttemptResult, ErrorClass, Outgoing, Sender};
use crate::store::{self, EventRow, Finished, LeaseRequest, Leased, Next};

/// Most deliveries one worker leases at once.
const LEASE_BATCH: usize = 256;
/// How long a lease outlives the attempt's timeout (the result is written within it; a
/// worker that died holds its deliveries this long past their timeout).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Most results the writer records in one transaction.
pub(crate) const FINISH_BATCH: usize = 1_000;

/// What the fan-out and the dispatcher share in one process: endpoints to wake when they have
/// new deliveries, and the events just written (so the dispatcher need not read them back).
#[derive(Clone)]
pub struct Shared {
    wake: Arc<HashMap<String, Arc<Notify>>>,
    pub cache: EventCache,
}

impl Shared {
    pub fn new(settings: &WebhookSettings) -> Self {
        Self {
            wake: Arc::new(
                settings
                    .endpoints
                    .iter()
                    .map(|e| (e.name.clone(), Arc::new(Notify::new())))
                    .collect(),
            ),
            cache: EventCache::new(64 << 20),
        }
    }

    pub fn wake(&self, endpoint: &str) {
        if let Some(notify) = self.wake.get(endpoint) {
            notify.notify_one();
        }
    }

    fn notify(&self, endpoint: &str) -> Arc<Notify> {
        self.wake.get(endpoint).cloned().unwrap_or_default()
    }
}

/// An endpoint's state as the workers see it (refreshed from SQL, so an operator's change
/// in another process reaches them within a poll interval).
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub(crate) state: String,
    pub(crate) failing_since_ms: Option<i64>,
    pub(crate) next_probe_at_ms: Option<i64>,
}

pub(crate) type Views = Arc<Mutex<HashMap<String, View>>>;

/// Runs the dispatcher until `shutdown`: attempts in flight finish (each is bounded by its
/// endpoint's timeout) and their results are recorded before it returns.
pub async fn run(
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    sender: Sender,
    metrics: WebhookMetrics,
    shared: Shared,
    shutdown: CancellationToken,
) -> Result<(), SqlError> {
    let now = now_ms();
    let names: Vec<&str> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut retry = Retry::new(backoff, &shutdown, "webhook endpoints at start-up");
    loop {
        match crate::endpoints_store::register_endpoints(&target, &names, now).await {
            Ok(()) => break,
            Err(SqlError::Unavailable(why)) => {
                if !retry.wait(&why).await {
                    return Ok(());
                }
            }
            Err(err) => return Err(err),
        }
    }
    let views: Views = Arc::default();
    crate::writer::load_views(&target, &settings, &views, &metrics).await;
    let (results, inbox) = mpsc::channel::<Outcome>(FINISH_BATCH * 4);
    let stop_sending = shutdown.child_token();
    let global = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut workers = JoinSet::new();
    for endpoint in &settings.endpoints {
        let worker = Worker {
            target: target.clone(),
            settings: settings.clone(),
            endpoint: endpoint.clone(),
            sender: sender.clone(),
            shared: shared.clone(),
            views: views.clone(),
            own: Arc::new(Semaphore::new(endpoint.max_in_flight)),
            global: global.clone(),
            results: results.clone(),
            metrics: metrics.clone(),
        };
        workers.spawn(worker.run(stop_sending.clone()));
    }
    drop(results);
    let writer = tokio::spawn(crate::writer::write_results(
        target.clone(),
        settings.clone(),
        inbox,
        views.clone(),
        shared.clone(),
        metrics.clone(),
    ));
    let refresher = tokio::spawn(crate::writer::refresh(
        target.clone(),
        settings.clone(),
        views,
        metrics,
        stop_sending.clone(),
    ));
    stop_sending.cancelled().await;
    while workers.join_next().await.is_some() {}
    let _ = refresher.await;
    // every sender is gone once the workers are: the writer drains what is left and ends
    writer
        .await
        .map_err(|e| SqlError::Unavailable(format!("result writer failed: {e}")))?;
    Ok(())
}

/// One attempt's result on its way to the writer.
pub(crate) struct Outcome {
    pub(crate) endpoint: String,
    pub(crate) finished: Finished,
    pub(crate) gone: bool,
    pub(crate) delivered: bool,
}

struct Worker {
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    endpoint: Endpoint,
    sender: Sender,
    shared: Shared,
    views: Views,
    own: Arc<Semaphore>,
    global: Arc<Semaphore>,
    results: mpsc::Sender<Outcome>,
    metrics: WebhookMetrics,
}

impl Worker {
    async fn run(self, stop: CancellationToken) {
        let worker = Arc::new(self);
        let wake = worker.shared.notify(&worker.endpoint.name);
        let mut sends = JoinSet::new();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let what = format!("webhook endpoint {}", worker.endpoint.name);
        let mut retry = Retry::new(backoff, &stop, &what);
        while !stop.is_cancelled() {
            while sends.try_join_next().is_some() {}
            let view = worker.view();
            let leased = match view.state.as_str() {
                "enabled" | "" => worker.lease_due(&mut sends, &stop).await,
                "disabled" => worker.probe(&mut sends, &view).await,
                _ => Ok(0),
            };
            match leased {
                Ok(n) => {
                    retry.done(());
                    if n > 0 && view.state != "disabled" {
                        continue;
                    }
                }
                Err(err) => {
                    if !retry.wait(&err.to_string()).await {
                        break;
                    }
                    continue;
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(worker.settings.poll_interval) => {}
                () = stop.cancelled() => {}
            }
        }
        // attempts in flight end within their timeout; their results still reach the writer
        while sends.join_next().await.is_some() {}
    }

    fn view(&self) -> View {
        self.views
            .lock()
            .map(|v| v.get(&self.endpoint.name).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Leases as many due deliveries as there are permits (waiting for one of each cap
    /// first) and starts their attempts. Returns how many it leased.
    async fn lease_due(
        self: &Arc<Self>,
        sends: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<usize, SqlError> {
        let (own, global) = tokio::select! {
            permits = async {
                let own = self.own.clone().acquire_owned().await;
                let global = self.global.clone().acquire_owned().await;
                (own, global)
            } => permits,
            () = stop.cancelled() => return Ok(0),
        };
        let (Ok(mut own), Ok(mut global)) = (own, global) else {
            return Ok(0);
        };
        let want = LEASE_BATCH.min(self.own.available_permits() + 1);
        let want = want.min(self.global.available_permits() + 1);
        if want > 1 {
            if let Ok(more) = self.own.clone().try_acquire_many_owned(want as u32 - 1) {
                own.merge(more);
            }
            if let Ok(more) = self.global.clone().try_acquire_many_owned(want as u32 - 1) {
                global.merge(more);
            }
        }
        let limit = own.num_permits().min(global.num_permits());
        let leased = self.lease(limit, false).await?;
        if leased.is_empty() {
            return Ok(0);
        }
        let events = self.events_of(&leased).await?;
        let n = leased.len();
        for delivery in leased {
            let own = own.split(1);
            let global = global.split(1);
            let event = events.get(&delivery.envelope_id).cloned();
            let worker = self.clone();
            sends.spawn(async move {
                worker.attempt(delivery, event, false).await;
                drop((own, global));
            });
        }
        Ok(n)
    }

    /// A disabled endpoint: once its probe is due, its oldest pending delivery is sent as the
    /// probe (a 2xx delivers it and re-enables the endpoint).
    async fn probe(
        self: &Arc<Self>,
        sends: &mut JoinSet<()>,
        view: &View,
    ) -> Result<usize, SqlError> {
        let now = now_ms();
        if view.next_probe_at_ms.is_some_and(|at| at > now) || !sends.is_empty() {
            return Ok(0);
        }
        let next = now + self.settings.probe_interval.as_millis() as i64;
        crate::endpoints_store::set_next_probe(&self.target, &self.endpoint.name, next).await?;
        if let Ok(mut views) = self.views.lock()
            && let Some(v) = views.get_mut(&self.endpoint.name)
        {
            v.next_probe_at_ms = Some(next);
        }
        let leased = self.lease(1, true).await?;
        let events = self.events_of(&leased).await?;
        let n = leased.len();
        for delivery in leased {
            let event = events.get(&delivery.envelope_id).cloned();
            let worker = self.clone();
            sends.spawn(async move { worker.attempt(delivery, event, true).await });
        }
        Ok(n)
    }

    async fn lease(&self, limit: usize, probe: bool) -> Result<Vec<Leased>, SqlError> {
        let now = now_ms();
        let token = uuid::Uuid::new_v4().to_string();
        let lease_until_ms = now + (self.endpoint.timeout + LEASE_MARGIN).as_millis() as i64;
        let leased = store::lease(
            &self.target,
            &LeaseRequest {
                endpoint: &self.endpoint.name,
                ordering: self.endpoint.ordering,
                limit,
                now_ms: now,
                lease_until_ms,
                token: &token,
                probe,
            },
        )
        .await?;
        Ok(leased)
    }

    async fn events_of(&self, leased: &[Leased]) -> Result<HashMap<String, EventRow>, SqlError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for l in leased {
            match self.shared.cache.get(&l.envelope_id) {
                Some(event) => {
                    found.insert(l.envelope_id.clone(), event);
                }
                None => missing.push(l.envelope_id.as_str()),
            }
        }
        for event in store::events(&self.target, &missing).await? {
            found.insert(event.envelope_id.clone(), event);
        }
        Ok(found)
    }

    /// One attempt, its result sent to the writer.
    async fn attempt(&self, delivery: Leased, event: Option<EventRow>, probe: bool) {
        let name = &self.endpoint.name;
        let (result, next) = match &event {
            Some(event) => {
                let span = crate::trace::attempt_span(name, &delivery, event);
                let traceparent = crate::trace::outgoing_traceparent(&span, event);
                let out = Outgoing {
                    envelope_id: &event.envelope_id,
                    body: &event.body,
                    terra_reference: event.terra_reference.as_deref(),
                    terra_trace_id: event.terra_trace_id.as_deref(),
                    ordering_timestamp_ms: event.ordering_timestamp_ms,
                    traceparent: traceparent.as_deref(),
                };
                let result =
                    tracing::Instrument::instrument(self.sender.send(&self.endpoint, &out), span)
                        .await;
                let next = next_step(&self.endpoint, &self.settings, &delivery, &result, probe);
                (result, next)
            }
            None => {
                // the event row is written with its deliveries: only a hand-edited table lacks it
                let result = AttemptResult {
                    started_at_ms: now_ms(),
                    duration: Duration::ZERO,
                    status: None,
                    class: ErrorClass::Other,
                    error: Some("the event is missing from webhook_events".to_owned()),
                    response: None,
                    retry_after: None,
                };
                let next = Next::Dead {
                    reason: "the event of this delivery is missing from webhook_events".to_owned(),
                };
                (result, next)
            }
        };
        let outcome = match &next {
            Next::Delivered => "delivered",
            Next::Retry { .. } => "retry",
            Next::Dead { .. } => "dead",
            Next::Unchanged => "probe_failed",
        };
        self.metrics.attempt(name, outcome, result.duration);
        let finished = Finished {
            delivery_id: delivery.id,
            token: delivery.token.clone(),
            attempt: delivery.attempts,
            probe,
            started_at_ms: result.started_at_ms,
            duration_ms: result.duration.as_millis() as i64,
            status: result.status,
            error_class: result.class.as_str(),
            error: result.error.clone(),
            response: result.response.clone(),
            next,
        };
        let _ = self
            .results
            .send(Outcome {
                endpoint: name.clone(),
                finished,
                gone: result.gone(),
                delivered: result.delivered(),
            })
            .await;
    }
}

/// Where a delivery goes after an attempt: delivered on a 2xx; dead at once when the
/// address guard refused the endpoint's address (retrying cannot help); a failed probe
/// leaves it as it was; otherwise the next attempt on the schedule (a `Retry-After` on 429
/// or 503 pushes it later, up to `retry_after_max`), or dead once the schedule is used up.
pub fn next_step(
    endpoint: &Endpoint,
    settings: &WebhookSettings,
    delivery: &Leased,
    result: &AttemptResult,
    probe: bool,
) -> Next {
    if result.delivered() {
        return Next::Delivered;
    }
    if result.class == ErrorClass::RefusedAddress {
        return Next::Dead {
            reason: result
                .error
                .clone()
                .unwrap_or_else(|| "the endpoint's address is refused".to_owned()),
        };
    }
    if probe {
        return Next::Unchanged;
    }
    let Some(delay) = endpoint.schedule.delay_before(delivery.attempts) else {
        return Next::Dead {
            reason: format!(
                "{} attempt(s) failed, the schedule is used up; the last: {}",
                delivery.attempts,
                describe(result)
            ),
        };
    };
    let mut delay = jittered(delay, settings.jitter);
    if let Some(asked) = result.retry_after {
        delay = delay.max(asked.min(settings.retry_after_max));
    }
    Next::Retry {
        at_ms: now_ms() + delay.as_millis() as i64,
    }
}

/// An attempt in a few words, for a dead letter's reason.
fn describe(result: &AttemptResult) -> String {
    match (result.status, &result.error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => format!("{} ({error})", result.class.as_str()),
        (None, None) => result.class.as_str().to_owned(),
    }
}

/// `delay` moved by up to ± `fraction` of itself, at random.
fn jittered(delay: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 || delay.is_zero() {
        return delay;
    }
    let unit = (uuid::Uuid::new_v4().as_u128() >> 64) as f64 / u64::MAX as f64;
    let factor = 1.0 + fraction * (2.0 * unit - 1.0);
    delay.mul_f64(factor.max(0.0))
}

pub fn now_ms() -> i64 {
    terra_core::keys::now_ms()
}
