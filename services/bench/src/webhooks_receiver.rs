//! The fast receiver of `terra-bench webhooks` (axum on 127.0.0.1: counts each request per
//! endpoint path and answers 200 at once; in the latency phase, the time from each event's
//! append to its arrival), and the receiver's ceiling: the same POSTs sent to it directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use terra_sink_webhooks::Endpoint;
use terra_sink_webhooks::address::AddressPolicy;
use terra_sink_webhooks::send::{Outgoing, Sender};

/// Endpoint paths the receiver serves: `/e/0` … `/e/{ENDPOINTS - 1}`.
pub(crate) const ENDPOINTS: usize = 4;

pub(crate) struct Counts {
    per_endpoint: [AtomicUsize; ENDPOINTS],
    /// When the receiver started: the origin of `first_ns`.
    base: Instant,
    /// Nanoseconds after `base` (plus 1) of the first request since the last reset; 0: none yet.
    first_ns: AtomicU64,
    /// Envelope id → when it was appended (latency phase only).
    pub(crate) appended: Mutex<HashMap<String, Instant>>,
    /// Append-to-arrival, in ms, of each request whose envelope is in `appended`.
    pub(crate) latencies: Mutex<Vec<f64>>,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            per_endpoint: Default::default(),
            base: Instant::now(),
            first_ns: AtomicU64::new(0),
            appended: Mutex::default(),
            latencies: Mutex::default(),
        }
    }
}

impl Counts {
    /// When the first request since the last reset arrived.
    pub(crate) fn first(&self) -> Option<Instant> {
        match self.first_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns - 1)),
        }
    }

    fn arrived(&self, at: Instant) {
        if self.first_ns.load(Ordering::Relaxed) == 0 {
            let ns = at.duration_since(self.base).as_nanos() as u64 + 1;
            let _ = self
                .first_ns
                .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    pub(crate) fn of(&self, endpoint: usize) -> usize {
        self.per_endpoint[endpoint].load(Ordering::Relaxed)
    }

    pub(crate) fn total(&self) -> usize {
        (0..ENDPOINTS).map(|i| self.of(i)).sum()
    }

    pub(crate) fn reset(&self) {
        for c in &self.per_endpoint {
            c.store(0, Ordering::Relaxed);
        }
        self.first_ns.store(0, Ordering::Release);
        self.appended.lock().expect("poisoned").clear();
        self.latencies.lock().expect("poisoned").clear();
    }
}

pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) counts: Arc<Counts>,
}

impl Receiver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let counts = Arc::new(Counts::default());
        let app = axum::Router::new()
            .route("/e/{i}", axum::routing::post(receive))
            .with_state(Arc::clone(&counts));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, counts })
    }

    pub(crate) fn url(&self, endpoint: usize) -> String {
        format!("http://{}/e/{endpoint}", self.addr)
    }

    /// Waits until `done` holds for the counts (checked every 2 ms), at most `limit`.
    pub(crate) async fn wait(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Counts) -> bool,
    ) -> anyhow::Result<Instant> {
        let started = Instant::now();
        while !done(&self.counts) {
            if started.elapsed() > limit {
                bail!(
                    "{what}: not reached in {limit:?} ({} requests received)",
                    self.counts.total()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Instant::now())
    }
}

async fn receive(
    State(counts): State<Arc<Counts>>,
    Path(i): Path<usize>,
    headers: HeaderMap,
    _body: Bytes,
) -> &'static str {
    let at = Instant::now();
    counts.arrived(at);
    if let Some(c) = counts.per_endpoint.get(i) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let id = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    if let Some(id) = id {
        let appended = counts.appended.lock().expect("poisoned").get(id).copied();
        if let Some(appended) = appended {
            let ms = at.duration_since(appended).as_secs_f64() * 1000.0;
            counts.latencies.lock().expect("poisoned").push(ms);
        }
    }
    ""
}

/// Sends at least `total` POSTs, and for at least `min_time`, straight to the receiver over
/// `concurrency` tasks: the bodies (and envelope ids) of the log in turn, spread over
/// `endpoints` paths, by the destination's own [`Sender`] (the same HTTP client, the same
/// headers, signed per request), without the deliveries' state. The clock starts once every
/// connection is open (one request each first, not counted): a short burst would otherwise
/// measure connection set-up. Returns requests/s and the CPU (this process and Postgres, in
/// µs) per request.
pub(crate) async fn ceiling(
    receiver: &Receiver,
    bodies: &Arc<Vec<(String, Bytes)>>,
    endpoints: usize,
    (total, min_time): (usize, Duration),
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    let sender = Sender::new(AddressPolicy::new(vec!["127.0.0.0/8".parse()?]))
        .map_err(anyhow::Error::msg)
        .context("failed to build the direct client")?;
    let targets: Arc<Vec<Endpoint>> = Arc::new(
        (0..endpoints)
            .map(|i| {
                crate::webhooks_run::endpoint(
                    format!("direct-{i}"),
                    &receiver.url(i),
                    concurrency,
                    crate::webhooks_run::quick_schedule(),
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let warm = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let (sender, targets, next, bodies, warm, started) = (
            sender.clone(),
            Arc::clone(&targets),
            Arc::clone(&next),
            Arc::clone(bodies),
            Arc::clone(&warm),
            Arc::clone(&started),
        );
        tasks.push(tokio::spawn(async move {
            let mut first = Some(task);
            let mut waited = false;
            loop {
                let i = match first.take() {
                    Some(task) => task,
                    None => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let since = started.get().map_or(Duration::ZERO, Instant::elapsed);
                        if i >= total && since >= min_time {
                            return anyhow::Ok(());
                        }
                        i
                    }
                };
                let (id, body) = &bodies[(i / endpoints) % bodies.len()];
                let out = Outgoing {
                    envelope_id: id,
                    body,
                    terra_reference: None,
                    terra_trace_id: None,
                    ordering_timestamp_ms: None,
                    traceparent: None,
                };
                let result = sender.send(&targets[i % endpoints], &out).await;
                if !result.delivered() {
                    bail!(
                        "the receiver did not take a direct POST: {}",
                        result.error.unwrap_or_default()
                    );
                }
                if !waited {
                    // this task's connection is open: wait for the others, then the clock
                    waited = true;
                    warm.wait().await;
                }
            }
        }));
    }
    warm.wait().await;
    let cpu = crate::cpu::seconds();
    let clock = *started.get_or_init(Instant::now);
    for task in tasks {
        task.await??;
    }
    let sent = next.load(Ordering::Relaxed).saturating_sub(concurrency);
    let cpu_us = (crate::cpu::seconds() - cpu) * 1e6 / sent.max(1) as f64;
    Ok((sent as f64 / clock.elapsed().as_secs_f64(), cpu_us))
}
