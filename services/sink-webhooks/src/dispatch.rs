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
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::cache::EventCache;
use crate::endpoint::{Endpoint, WebhookSettings};
use crate::first::Lane;
use crate::metrics::WebhookMetrics;
use crate::send::{AttemptResult, ErrorClass, Sender};
use crate::store::{Finished, Leased, Next};

/// Most results the writer records in one transaction.
pub(crate) const FINISH_BATCH: usize = 1_000;

/// What the fan-out and the dispatcher share in one process: endpoints to wake when they have
/// new deliveries, and the events just written (so the dispatcher need not read them back).
#[derive(Clone)]
pub struct Shared {
    wake: Arc<HashMap<String, Arc<Notify>>>,
    pub cache: EventCache,
    /// Set by the dispatcher: lets the fan-out send first attempts itself.
    lane: Arc<Mutex<Option<Arc<Lane>>>>,
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
            lane: Arc::default(),
        }
    }

    pub(crate) fn lane(&self) -> Option<Arc<Lane>> {
        self.lane.lock().ok()?.clone()
    }

    fn set_lane(&self, lane: Option<Arc<Lane>>) {
        if lane.is_none()
            && let Some(old) = self.lane()
        {
            old.close();
        }
        if let Ok(mut slot) = self.lane.lock() {
            *slot = lane;
        }
    }

    pub fn wake(&self, endpoint: &str) {
        if let Some(notify) = self.wake.get(endpoint) {
            notify.notify_one();
        }
    }

    pub(crate) fn notify(&self, endpoint: &str) -> Arc<Notify> {
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

/// The dispatcher, to run until `shutdown`: attempts in flight finish (each is bounded by its
/// endpoint's timeout) and their results are recorded before it returns. Calling this (before
/// the future runs) tells the fan-out of this `shared` that a dispatcher is starting: it waits
/// for it (see [`crate::first`]), so call it before starting the fan-out.
pub fn run(
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    sender: Sender,
    metrics: WebhookMetrics,
    shared: Shared,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = Result<(), SqlError>> + Send + 'static {
    let (results, inbox) = mpsc::channel::<Outcome>(FINISH_BATCH * 4);
    let lane = Arc::new(Lane::new(sender, settings, results.downgrade(), metrics));
    shared.set_lane(Some(lane.clone()));
    async move {
        let served = serve(target, shared, (results, inbox), &lane, shutdown).await;
        lane.close();
        served
    }
}

/// The dispatcher's tasks: registers the endpoints, then runs a worker per endpoint, the
/// result writer and the refresher until `shutdown`.
async fn serve(
    target: SqlTarget,
    shared: Shared,
    (results, inbox): (mpsc::Sender<Outcome>, mpsc::Receiver<Outcome>),
    lane: &Lane,
    shutdown: CancellationToken,
) -> Result<(), SqlError> {
    let Lane {
        sender,
        settings,
        views,
        global,
        metrics,
        ..
    } = lane;
    let now = now_ms();
    let names: Vec<&str> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    let ordered: Vec<&str> = (settings.endpoints.iter())
        .filter(|e| e.ordering == crate::Ordering::PerUser)
        .map(|e| e.name.as_str())
        .collect();
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut retry = Retry::new(backoff, &shutdown, "webhook endpoints at start-up");
    loop {
        let started = async {
            crate::endpoints_store::register_endpoints(&target, &names, now).await?;
            crate::endpoints_store::key_ordered(&target, &ordered).await
        };
        match started.await {
            Ok(_) => break,
            Err(SqlError::Unavailable(why)) => {
                if !retry.wait(&why).await {
                    shared.set_lane(None);
                    return Ok(());
                }
            }
            Err(err) => {
                shared.set_lane(None);
                return Err(err);
            }
        }
    }
    crate::writer::load_views(&target, settings, views, metrics).await;
    lane.ready();
    let stop_sending = shutdown.child_token();
    let mut workers = JoinSet::new();
    for (i, endpoint) in settings.endpoints.iter().enumerate() {
        let worker = crate::worker::Worker {
            target: target.clone(),
            settings: settings.clone(),
            endpoint: endpoint.clone(),
            sender: sender.clone(),
            shared: shared.clone(),
            views: views.clone(),
            own: lane.own(i),
            reach: lane.reach(i),
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
        views.clone(),
        metrics.clone(),
        stop_sending.clone(),
    ));
    let pruner = tokio::spawn(crate::prune::run(
        target.clone(),
        settings.clone(),
        metrics.clone(),
        stop_sending.clone(),
    ));
    stop_sending.cancelled().await;
    shared.set_lane(None);
    while workers.join_next().await.is_some() {}
    let _ = refresher.await;
    let _ = pruner.await;
    // every sender is gone once the workers are: the writer drains what is left and ends
    writer
        .await
        .map_err(|e| SqlError::Unavailable(format!("result writer failed: {e}")))?;
    Ok(())
}

/// One attempt's result on its way to the writer.
pub(crate) struct Outcome {
    pub(crate) endpoint: String,
    /// `None`: already recorded (first attempts written by the fan-out).
    pub(crate) finished: Option<Finished>,
    pub(crate) gone: bool,
    pub(crate) delivered: bool,
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

/// The `outcome` label of an attempt's metric.
pub(crate) fn outcome_label(next: &Next) -> &'static str {
    match next {
        Next::Delivered => "delivered",
        Next::Retry { .. } => "retry",
        Next::Dead { .. } => "dead",
        Next::Unchanged => "probe_failed",
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
