//! First attempts sent by the fan-out itself. For an enabled, unordered endpoint that answers
//! quickly, a new delivery's first attempt goes out while the fan-out holds its batch (on
//! Postgres and MySQL with the positions' writer lock held, so a second replica waits and then
//! finds the batch written: no pair is sent by two at once), and the delivery is written once,
//! in the state that attempt left it in, with the attempt and the batch's positions, in one
//! transaction. A delivery answered at once costs one row and one attempt row instead of a
//! pending row leased, then finished; its body is not kept (nothing will send it again).
//!
//! Nothing is decided in memory alone: a crash before the transaction commits leaves the
//! positions where they were, so the batch is read again and its first attempts sent again
//! (the receiver sees the same idempotency id twice, as after any crash mid-attempt).
//!
//! Isolation: the fan-out waits at most [`FIRST_WAIT`] for a chunk's attempts. Then attempts
//! still waiting for a permit are not sent (written pending, due now, for the dispatcher) and
//! those in flight are written pending and leased to themselves; they record their end
//! through the dispatcher's result writer, fenced by the lease token like any other. An
//! endpoint whose attempt took longer than [`SLOW`] gets no first attempts from the fan-out
//! for a cool-down (30 s, doubling while it stays slow, at most 10 min): a hanging endpoint
//! costs the others at most one wait per cool-down. One that refuses connections gets none
//! while it is unreachable (see the `reach` module).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering as Atomic};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::dispatch::{Outcome, Views, next_step, now_ms, outcome_label};
use crate::endpoint::{Ordering, WebhookSettings};
use crate::metrics::WebhookMetrics;
use crate::reach::Reach;
use crate::send::{AttemptResult, Outgoing, Sender};
use crate::store::{EventRow, Finished, Leased, Next};

/// The longest the fan-out waits for a chunk's first attempts (a batch goes in chunks: see
/// the `fanout` module).
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(1);
/// An attempt this long makes its endpoint slow: no first attempts from the fan-out for a
/// cool-down.
pub(crate) const SLOW: Duration = Duration::from_millis(500);
const COOL_DOWN: Duration = Duration::from_secs(30);
const COOL_DOWN_MAX: Duration = Duration::from_secs(600);

/// What the fan-out needs to send first attempts: the dispatcher's sender, permits (the same
/// caps as its workers) and result writer. Set up by [`crate::dispatch::run`].
pub(crate) struct Lane {
    pub(crate) sender: Sender,
    pub(crate) settings: Arc<WebhookSettings>,
    /// The endpoints' states as the dispatcher reads them.
    pub(crate) views: Views,
    /// The global cap.
    pub(crate) global: Arc<Semaphore>,
    /// Weak: the writer ends once the workers and the batches in flight are done with it.
    results: mpsc::WeakSender<Outcome>,
    pub(crate) metrics: WebhookMetrics,
    /// Per endpoint (the settings' order): its cap and when it may have first attempts again.
    endpoints: Vec<LaneEndpoint>,
    /// `Some(true)` once the dispatcher has registered the endpoints and read their states;
    /// `Some(false)` while it starts; `None` once it stopped.
    state: watch::Sender<Option<bool>>,
}

struct LaneEndpoint {
    own: Arc<Semaphore>,
    /// Shared with the endpoint's worker.
    reach: Arc<Reach>,
    slow_until_ms: AtomicI64,
    strikes: AtomicU32,
}

impl LaneEndpoint {
    fn new(own: Arc<Semaphore>, reach: Reach) -> Self {
        Self {
            own,
            reach: Arc::new(reach),
            slow_until_ms: AtomicI64::new(0),
            strikes: AtomicU32::new(0),
        }
    }
}

/// How a pair's first attempt ended, as the fan-out writes it.
pub(crate) enum First {
    /// Not sent: written pending, due now, for the dispatcher.
    NotSent,
    /// Answered (or failed): written in the state it left the delivery in, with its attempt.
    Done { result: AttemptResult, next: Next },
    /// In flight at the cut-off: written pending, leased under `token` until `lease_until_ms`;
    /// the attempt is told the delivery's id once written and records its own end.
    InFlight {
        token: String,
        lease_until_ms: i64,
        id: oneshot::Sender<i64>,
    },
}

/// A task's state: waiting for its permits, cancelled, or started (micros after the batch
/// started, plus 2).
const WAITING: u64 = 0;
const CANCELLED: u64 = 1;

impl Lane {
    pub(crate) fn new(
        sender: Sender,
        settings: Arc<WebhookSettings>,
        results: mpsc::WeakSender<Outcome>,
        metrics: WebhookMetrics,
    ) -> Self {
        let endpoints = settings
            .endpoints
            .iter()
            .map(|e| {
                let waits = (settings.unreachable_wait, settings.unreachable_wait_max);
                let reach = Reach::new(&e.name, waits, metrics.clone());
                LaneEndpoint::new(Arc::new(Semaphore::new(e.max_in_flight)), reach)
            })
            .collect();
        Self {
            global: Arc::new(Semaphore::new(settings.max_in_flight)),
            sender,
            settings,
            views: Views::default(),
            results,
            metrics,
            endpoints,
            state: watch::Sender::new(Some(false)),
        }
    }

    /// The cap of endpoint `i` (shared with its worker).
    pub(crate) fn own(&self, i: usize) -> Arc<Semaphore> {
        self.endpoints[i].own.clone()
    }

    /// The breaker of endpoint `i` (shared with its worker).
    pub(crate) fn reach(&self, i: usize) -> Arc<Reach> {
        self.endpoints[i].reach.clone()
    }

    /// The dispatcher is up: the endpoints' states are known.
    pub(crate) fn ready(&self) {
        self.state.send_replace(Some(true));
    }

    /// The dispatcher stopped (or never started).
    pub(crate) fn close(&self) {
        self.state.send_replace(None);
    }

    /// Waits (up to `limit`) while the dispatcher starts.
    pub(crate) async fn wait_ready(&self, limit: Duration) {
        let mut state = self.state.subscribe();
        let _ = tokio::time::timeout(limit, state.wait_for(|s| *s != Some(false))).await;
    }

    /// Which endpoints (by index) take first attempts from the fan-out now.
    pub(crate) fn eligible(&self) -> Vec<bool> {
        let now = now_ms();
        let up = *self.state.borrow() == Some(true);
        let views = self.views.lock().map(|v| v.clone()).unwrap_or_default();
        self.settings
            .endpoints
            .iter()
            .zip(&self.endpoints)
            .map(|(e, lane)| {
                let state = views.get(&e.name).map_or("", |v| v.state.as_str());
                up && self.settings.first_from_fan_out
                    && e.ordering == Ordering::Unordered
                    && state == "enabled"
                    && lane.slow_until_ms.load(Atomic::Relaxed) <= now
                    && !lane.reach.unreachable()
            })
            .collect()
    }

    /// Sends the first attempt of each pair (event, endpoint index) marked in `send`, waits
    /// for them up to [`FIRST_WAIT`], and says how each ended.
    pub(crate) async fn first_attempts(
        self: &Arc<Self>,
        events: &[Arc<EventRow>],
        pairs: &[(usize, usize)],
        send: &[bool],
    ) -> Vec<First> {
        let mut firsts: Vec<First> = pairs.iter().map(|_| First::NotSent).collect();
        let Some(results) = self.results.upgrade() else {
            return firsts;
        };
        let token = uuid::Uuid::new_v4().to_string();
        let start = Instant::now();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut tasks: Vec<Option<(Arc<AtomicU64>, oneshot::Sender<i64>)>> = Vec::new();
        let mut sent = 0;
        for (i, &(event, endpoint)) in pairs.iter().enumerate() {
            if !send[i] {
                tasks.push(None);
                continue;
            }
            let state = Arc::new(AtomicU64::new(WAITING));
            let (id_tx, id_rx) = oneshot::channel();
            let task = Task {
                lane: self.clone(),
                index: i,
                endpoint,
                event: events[event].clone(),
                state: state.clone(),
                start,
                token: token.clone(),
                lease_until_ms: self.lease_until(endpoint),
                done: done_tx.clone(),
                id: id_rx,
                results: results.clone(),
            };
            tokio::spawn(task.run());
            tasks.push(Some((state, id_tx)));
            sent += 1;
        }
        drop(done_tx);
        let deadline = tokio::time::Instant::from_std(start + FIRST_WAIT);
        let mut received = 0;
        while received < sent {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some((i, result, next))) => {
                    firsts[i] = First::Done { result, next };
                    received += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut slow = vec![false; self.endpoints.len()];
        if received < sent {
            // the cut-off: attempts not started stay unsent, answers already in are taken,
            // the rest are in flight
            let cut = start.elapsed();
            for task in tasks.iter().flatten() {
                let _ =
                    task.0
                        .compare_exchange(WAITING, CANCELLED, Atomic::AcqRel, Atomic::Acquire);
            }
            done_rx.close();
            // after `close`, `recv` drains what was sent before it (a send racing the close
            // either lands here or fails, and its task then waits for its delivery's id)
            while let Some((i, result, next)) = done_rx.recv().await {
                firsts[i] = First::Done { result, next };
            }
            for (i, task) in tasks.into_iter().enumerate() {
                let Some((state, id)) = task else { continue };
                let state = state.load(Atomic::Acquire);
                if state == CANCELLED || !matches!(firsts[i], First::NotSent) {
                    continue;
                }
                let endpoint = pairs[i].1;
                let started = Duration::from_micros(state - 2);
                slow[endpoint] |= cut.saturating_sub(started) >= SLOW;
                firsts[i] = First::InFlight {
                    token: token.clone(),
                    lease_until_ms: self.lease_until(endpoint),
                    id,
                };
            }
        }
        for (i, first) in firsts.iter().enumerate() {
            if let First::Done { result, .. } = first {
                slow[pairs[i].1] |= result.duration >= SLOW;
            }
        }
        self.cool_down(pairs, send, &slow);
        firsts
    }

    fn lease_until(&self, endpoint: usize) -> i64 {
        let e = &self.settings.endpoints[endpoint];
        now_ms() + (e.timeout * 2 + self.settings.lease_margin).as_millis() as i64
    }

    /// Slow endpoints get no first attempts for a cool-down (doubling while they stay slow);
    /// one that was sent to and was not slow starts afresh.
    fn cool_down(&self, pairs: &[(usize, usize)], send: &[bool], slow: &[bool]) {
        let mut tried = vec![false; self.endpoints.len()];
        for (i, &(_, endpoint)) in pairs.iter().enumerate() {
            tried[endpoint] |= send[i];
        }
        for (endpoint, lane) in self.endpoints.iter().enumerate() {
            if slow[endpoint] {
                let strikes = lane.strikes.fetch_add(1, Atomic::Relaxed).min(5);
                let wait = (COOL_DOWN * 2u32.pow(strikes)).min(COOL_DOWN_MAX);
                lane.slow_until_ms
                    .store(now_ms() + wait.as_millis() as i64, Atomic::Relaxed);
                tracing::warn!(
                    endpoint = %self.settings.endpoints[endpoint].name,
                    cool_down_s = wait.as_secs(),
                    "webhook endpoint answers slowly: its deliveries go through the dispatcher for a while"
                );
            } else if tried[endpoint] {
                lane.strikes.store(0, Atomic::Relaxed);
            }
        }
    }

    /// Tells the result writer how an endpoint's first attempts went, once written (a success
    /// ends a failing streak; a 410 disables the endpoint).
    pub(crate) async fn recorded(&self, endpoint: &str, delivered: bool, gone: bool) {
        if let Some(results) = self.results.upgrade() {
            let _ = results
                .send(Outcome {
                    endpoint: endpoint.to_owned(),
                    finished: None,
                    gone,
                    delivered,
                })
                .await;
        }
    }
}

/// One first attempt.
struct Task {
    lane: Arc<Lane>,
    index: usize,
    endpoint: usize,
    event: Arc<EventRow>,
    state: Arc<AtomicU64>,
    start: Instant,
    token: String,
    lease_until_ms: i64,
    done: mpsc::UnboundedSender<(usize, AttemptResult, Next)>,
    id: oneshot::Receiver<i64>,
    results: mpsc::Sender<Outcome>,
}

impl Task {
    async fn run(self) {
        let lane = &self.lane;
        let endpoint = &lane.settings.endpoints[self.endpoint];
        let own = lane.endpoints[self.endpoint]
            .own
            .clone()
            .acquire_owned()
            .await;
        let global = lane.global.clone().acquire_owned().await;
        let started = self.start.elapsed().as_micros() as u64 + 2;
        if own.is_err()
            || global.is_err()
            || self
                .state
                .compare_exchange(WAITING, started, Atomic::AcqRel, Atomic::Acquire)
                .is_err()
        {
            return;
        }
        let event = &self.event;
        let delivery = Leased {
            id: 0,
            envelope_id: event.envelope_id.clone(),
            attempts: 1,
            token: self.token.clone(),
            lease_until_ms: self.lease_until_ms,
        };
        let span = crate::trace::attempt_span(&endpoint.name, &delivery, event);
        let traceparent = crate::trace::outgoing_traceparent(&span, event);
        let out = Outgoing::of(event, traceparent.as_deref());
        let result = tracing::Instrument::instrument(lane.sender.send(endpoint, &out), span).await;
        drop((own, global));
        lane.endpoints[self.endpoint]
            .reach
            .ended(result.class, false, now_ms());
        let next = next_step(endpoint, &lane.settings, &delivery, &result, false);
        lane.metrics
            .attempt(&endpoint.name, outcome_label(&next), result.duration);
        let Err(mpsc::error::SendError((_, result, next))) =
            self.done.send((self.index, result, next))
        else {
            return;
        };
        // cut off while in flight: the fan-out writes the delivery leased to this attempt
        let Ok(id) = self.id.await else {
            // the batch was not written: it is read and sent again
            return;
        };
        let leased = Leased { id, ..delivery };
        let _ = self
            .results
            .send(Outcome {
                endpoint: endpoint.name.clone(),
                gone: result.gone(),
                delivered: result.delivered(),
                finished: Some(Finished::of(&leased, false, &result, next)),
            })
            .await;
    }
}

/// Errors of a chunk's first attempts to an endpoint, for the writer: (any delivered, any 410).
pub(crate) fn health(
    firsts: &[First],
    pairs: &[(usize, usize)],
    endpoints: usize,
) -> Vec<Option<(bool, bool)>> {
    let mut health = vec![None; endpoints];
    for (first, &(_, endpoint)) in firsts.iter().zip(pairs) {
        if let First::Done { result, .. } = first {
            let entry: &mut (bool, bool) = health[endpoint].get_or_insert((false, false));
            entry.0 |= result.delivered();
            entry.1 |= result.gone();
        }
    }
    health
}
