//! One endpoint's worker. It leases the endpoint's due deliveries ahead of sending (up to
//! [`Worker::prefetch`] at once, so one lease statement serves many attempts instead of one
//! round trip per freed permit), sends each holding a permit of the endpoint's cap and one of
//! the global cap (a slow or hanging endpoint holds at most its own share), and hands every
//! result to the writer.
//!
//! A lease covers a prefetched delivery's wait as well as its attempt: a lease runs for two
//! timeouts plus the settings' `lease_margin` (10 s), and a delivery is sent only while its lease has at least
//! one timeout plus half the margin left, so its result is written before the lease runs out
//! and no other worker (another replica) can take it meanwhile. One whose lease would not
//! cover its attempt (a hanging endpoint drains its queue slowly) is handed back
//! ([`store::release`]: its lease cleared, the attempt it had counted taken back) and leased
//! again later; so is whatever is queued when the endpoint stops being enabled or the worker
//! stops.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use terra_runtime::{Backoff, CancellationToken, Retry};
use terra_schema::{SqlError, SqlTarget};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::dispatch::{Outcome, Shared, View, Views, next_step, now_ms, outcome_label};
use crate::endpoint::{Endpoint, WebhookSettings};
use crate::metrics::WebhookMetrics;
use crate::reach::Reach;
use crate::send::{AttemptResult, ErrorClass, Outgoing, Sender};
use crate::store::{self, Finished, LeaseRequest, Leased, Next, Readable};

/// Most deliveries one worker leases at once.
const LEASE_BATCH: usize = 256;
/// Deliveries leased ahead per permit of the endpoint's cap (up to [`LEASE_BATCH`]).
const PREFETCH_PER_PERMIT: usize = 8;

pub(crate) struct Worker {
    pub(crate) target: SqlTarget,
    pub(crate) settings: Arc<WebhookSettings>,
    pub(crate) endpoint: Endpoint,
    pub(crate) sender: Sender,
    pub(crate) shared: Shared,
    pub(crate) views: Views,
    pub(crate) own: Arc<Semaphore>,
    /// Whether the endpoint refuses connections (shared with the fan-out's first attempts).
    pub(crate) reach: Arc<Reach>,
    pub(crate) global: Arc<Semaphore>,
    pub(crate) results: mpsc::Sender<Outcome>,
    pub(crate) metrics: WebhookMetrics,
}

/// Why an attempt is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// It is due.
    Due,
    /// It probes a disabled endpoint (a failure does not count towards its schedule).
    Disabled,
    /// It is due, and probes an endpoint that refused connections (see the `reach` module).
    Unreachable,
}

/// A leased delivery waiting for a permit, with its event.
struct Queued {
    delivery: Leased,
    event: Readable,
}

/// The event of `delivery` out of those read for its batch.
fn event_of(events: &mut HashMap<String, Readable>, delivery: &Leased) -> Readable {
    events.remove(&delivery.envelope_id).unwrap_or_else(|| {
        Err("the event of this delivery is missing from webhook_events".to_owned())
    })
}

impl Worker {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let worker = Arc::new(self);
        let wake = worker.shared.notify(&worker.endpoint.name);
        let mut sends = JoinSet::new();
        let mut queue: VecDeque<Queued> = VecDeque::new();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let what = format!("webhook endpoint {}", worker.endpoint.name);
        let mut retry = Retry::new(backoff, &stop, &what);
        while !stop.is_cancelled() {
            while sends.try_join_next().is_some() {}
            let view = worker.view();
            let enabled = matches!(view.state.as_str(), "enabled" | "");
            let unreachable = worker.reach.unreachable();
            if (!enabled || unreachable) && !queue.is_empty() {
                worker.hand_back(queue.drain(..).map(|q| q.delivery)).await;
            }
            let started = match view.state.as_str() {
                "enabled" | "" if unreachable => worker.probe_unreachable(&mut sends).await,
                "enabled" | "" => worker.send_due(&mut queue, &mut sends, &stop).await,
                "disabled" => worker.probe(&mut sends, &view).await,
                _ => Ok(0),
            };
            match started {
                Ok(n) => {
                    retry.done(());
                    if (n > 0 || !queue.is_empty()) && enabled {
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
        worker.hand_back(queue.drain(..).map(|q| q.delivery)).await;
        // attempts in flight end within their timeout; their results still reach the writer
        while sends.join_next().await.is_some() {}
    }

    fn view(&self) -> View {
        self.views
            .lock()
            .map(|v| v.get(&self.endpoint.name).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// How many deliveries a lease takes at once.
    fn prefetch(&self) -> usize {
        (self.endpoint.max_in_flight * PREFETCH_PER_PERMIT).clamp(1, LEASE_BATCH)
    }

    /// Fills the queue with due deliveries when it is empty, waits for a permit of each cap,
    /// then starts as many queued attempts as there are permits. Returns how many deliveries
    /// it started or handed back.
    async fn send_due(
        self: &Arc<Self>,
        queue: &mut VecDeque<Queued>,
        sends: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<usize, SqlError> {
        if queue.is_empty() {
            let leased = self.lease(self.prefetch(), false).await?;
            if leased.is_empty() {
                return Ok(0);
            }
            let mut events = self.events_of(&leased).await?;
            queue.extend(leased.into_iter().map(|delivery| Queued {
                event: event_of(&mut events, &delivery),
                delivery,
            }));
        }
        let must_have = (self.endpoint.timeout + self.settings.lease_margin / 2).as_millis() as i64;
        // waiting for a permit (the caps are shared with the fan-out's first attempts and the
        // other endpoints) ends when the queue's leases get too short to cover an attempt: they
        // are handed back then, before they run out and another replica takes them
        let stale_at = queue
            .iter()
            .map(|q| q.delivery.lease_until_ms - must_have)
            .min()
            .unwrap_or(i64::MAX);
        let patience = Duration::from_millis((stale_at - now_ms()).max(0) as u64);
        let first = tokio::select! {
            permits = async {
                let own = self.own.clone().acquire_owned().await;
                let global = self.global.clone().acquire_owned().await;
                (own, global)
            } => permits,
            () = tokio::time::sleep(patience) => {
                let now = now_ms();
                let (stale, fresh): (Vec<Queued>, Vec<Queued>) = queue
                    .drain(..)
                    .partition(|q| q.delivery.lease_until_ms - now < must_have);
                queue.extend(fresh);
                let n = stale.len();
                self.hand_back(stale.into_iter().map(|q| q.delivery)).await;
                return Ok(n);
            }
            () = stop.cancelled() => return Ok(0),
        };
        let (Ok(own), Ok(global)) = first else {
            return Ok(0);
        };
        let mut permits = Some((own, global));
        let (mut started, mut stale) = (0, Vec::new());
        while let Some(next) = queue.pop_front() {
            let Some((own, global)) = permits.take().or_else(|| self.try_permits()) else {
                queue.push_front(next);
                break;
            };
            if next.delivery.lease_until_ms - now_ms() < must_have {
                stale.push(next.delivery);
                permits = Some((own, global));
                continue;
            }
            let worker = self.clone();
            sends.spawn(async move {
                worker.attempt(next.delivery, next.event, Kind::Due).await;
                drop((own, global));
            });
            started += 1;
        }
        let handed_back = stale.len();
        self.hand_back(stale).await;
        Ok(started + handed_back)
    }

    fn try_permits(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let own = self.own.clone().try_acquire_owned().ok()?;
        let global = self.global.clone().try_acquire_owned().ok()?;
        Some((own, global))
    }

    /// Gives leased deliveries back (their leases cleared); on an error their leases simply
    /// run out.
    async fn hand_back(&self, deliveries: impl IntoIterator<Item = Leased>) {
        let deliveries: Vec<Leased> = deliveries.into_iter().collect();
        if deliveries.is_empty() {
            return;
        }
        if let Err(err) = store::release(&self.target, &deliveries).await {
            tracing::warn!(
                endpoint = %self.endpoint.name,
                deliveries = deliveries.len(),
                error = %err,
                "leased webhook deliveries not handed back: they are due again when their lease runs out"
            );
        }
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
        let mut events = self.events_of(&leased).await?;
        let n = leased.len();
        for delivery in leased {
            let event = event_of(&mut events, &delivery);
            let worker = self.clone();
            sends.spawn(async move { worker.attempt(delivery, event, Kind::Disabled).await });
        }
        Ok(n)
    }

    /// An endpoint that refused connections: once its wait has passed, its oldest due
    /// delivery is sent as the probe (holding a permit of each cap), nothing else meanwhile.
    async fn probe_unreachable(
        self: &Arc<Self>,
        sends: &mut JoinSet<()>,
    ) -> Result<usize, SqlError> {
        if !self.reach.take_probe(now_ms()) {
            return Ok(0);
        }
        let leased = async {
            let leased = self.lease(1, false).await?;
            let events = self.events_of(&leased).await?;
            Ok::<_, SqlError>((leased, events))
        }
        .await;
        let (leased, mut events) = match leased {
            Ok((leased, events)) if !leased.is_empty() => (leased, events),
            other => {
                self.reach.not_probed();
                return other.map(|_| 0);
            }
        };
        let n = leased.len();
        for delivery in leased {
            let event = event_of(&mut events, &delivery);
            let worker = self.clone();
            sends.spawn(async move {
                let own = worker.own.clone().acquire_owned().await;
                let global = worker.global.clone().acquire_owned().await;
                worker.attempt(delivery, event, Kind::Unreachable).await;
                drop((own, global));
            });
        }
        Ok(n)
    }

    async fn lease(&self, limit: usize, probe: bool) -> Result<Vec<Leased>, SqlError> {
        let now = now_ms();
        let token = uuid::Uuid::new_v4().to_string();
        let lease_until_ms =
            now + (self.endpoint.timeout * 2 + self.settings.lease_margin).as_millis() as i64;
        store::lease(
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
        .await
    }

    async fn events_of(&self, leased: &[Leased]) -> Result<HashMap<String, Readable>, SqlError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for l in leased {
            match self.shared.cache.get(&l.envelope_id) {
                Some(event) => {
                    found.insert(l.envelope_id.clone(), Ok(event));
                }
                None => missing.push(l.envelope_id.as_str()),
            }
        }
        found.extend(store::events(&self.target, &missing).await?);
        Ok(found)
    }

    /// One attempt, its result sent to the writer.
    async fn attempt(&self, delivery: Leased, event: Readable, kind: Kind) {
        let name = &self.endpoint.name;
        let probe = kind == Kind::Disabled;
        let (result, next) = match &event {
            Ok(event) => {
                let span = crate::trace::attempt_span(name, &delivery, event);
                let traceparent = crate::trace::outgoing_traceparent(&span, event);
                let out = Outgoing::of(event, traceparent.as_deref());
                let result =
                    tracing::Instrument::instrument(self.sender.send(&self.endpoint, &out), span)
                        .await;
                let next = next_step(&self.endpoint, &self.settings, &delivery, &result, probe);
                (result, next)
            }
            Err(why) => {
                // the event row is written with its deliveries and its body decodes: only a
                // hand-edited or damaged table gets here; nothing can be sent, so nothing is
                // retried
                let result = AttemptResult {
                    started_at_ms: now_ms(),
                    duration: Duration::ZERO,
                    status: None,
                    class: ErrorClass::Other,
                    error: Some(why.clone()),
                    response: None,
                    retry_after: None,
                };
                (
                    result,
                    Next::Dead {
                        reason: why.clone(),
                    },
                )
            }
        };
        self.reach
            .ended(result.class, kind == Kind::Unreachable, now_ms());
        self.metrics
            .attempt(name, outcome_label(&next), result.duration);
        let finished = Finished::of(&delivery, probe, &result, next);
        let _ = self
            .results
            .send(Outcome {
                endpoint: name.clone(),
                finished: Some(finished),
                gone: result.gone(),
                delivered: result.delivered(),
            })
            .await;
    }
}
