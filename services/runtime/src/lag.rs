//! How far the projections of one process may fall behind its ingress (`standalone`): the
//! projectors report their lag after every batch, and the ingress holds a new webhook while a
//! projection is more than [`LagBound::max`] records behind *and has grown since its best*
//! (the lowest lag it reported since it went beyond the bound), for at most
//! [`LagBound::hold`], then accepts it anyway.
//!
//! Why "grown since its best": the bound is there to stop the ingress from outrunning the
//! projections, not to slow it down while they work off a backlog it did not cause (a
//! restart after a database outage, a rebuild): then the lag shrinks report after report,
//! each report is its best, and nothing is held. Beyond the bound, any growth holds the next
//! webhooks until the projection is back to its best, so under saturation the lag stays at
//! most about a batch above where it crossed the bound (a ratchet: it cannot drift up).
//!
//! Why a hold and not a refusal: the log already keeps what was accepted, so the lag costs
//! nothing but freshness; a 503 would send Terra into its retry schedule (minutes to hours),
//! which is far worse for freshness than a lag of seconds. Holding slows a sender with
//! bounded concurrency (Terra, a load generator) down to the rate the projections keep up
//! with, so the lag stays near the bound instead of growing for as long as the ingress is
//! saturated; each request still gets its answer well inside Terra's timeout.
//!
//! A projector that has not reported for [`STALE_AFTER`] (its database or store is down, or
//! it stopped) is left out: an outage of a sink must not slow the ingress down, since the
//! log is there to absorb it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A report older than this no longer counts.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// The shared bound (cheap to clone).
#[derive(Clone)]
pub struct LagBound {
    inner: Arc<Inner>,
}

struct Inner {
    max: u64,
    hold: Duration,
    reports: Mutex<HashMap<String, Report>>,
    /// Whether a fresh projection is beyond the bound and above its best, as of the last
    /// report.
    pressing: watch::Sender<bool>,
}

/// A projector's last report.
#[derive(Debug, Clone, Copy)]
struct Report {
    lag: u64,
    /// The lowest lag it reported since it went beyond the bound (`None` while within it).
    best: Option<u64>,
    at: Instant,
}

impl std::fmt::Debug for LagBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagBound")
            .field("max", &self.inner.max)
            .field("hold", &self.inner.hold)
            .finish()
    }
}

/// What [`LagBound::admit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the bound: not held.
    Now,
    /// Held until the projections came back within the bound.
    Held(Duration),
    /// Held for the whole [`LagBound::hold`], then let through.
    HeldOut,
}

impl LagBound {
    /// `max` records behind at most; a webhook is held up to `hold` beyond it.
    pub fn new(max: u64, hold: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                hold,
                reports: Mutex::new(HashMap::new()),
                pressing: watch::Sender::new(false),
            }),
        }
    }

    pub fn max(&self) -> u64 {
        self.inner.max
    }

    pub fn hold(&self) -> Duration {
        self.inner.hold
    }

    /// Projector `group` is `lag` records behind the log's end.
    pub fn report(&self, group: &str, lag: u64) {
        let now = Instant::now();
        let pressing = {
            let mut reports = self.inner.reports.lock().expect("not poisoned");
            let best = if lag > self.inner.max {
                let before = reports.get(group).and_then(|r| r.best).unwrap_or(lag);
                Some(before.min(lag))
            } else {
                None
            };
            reports.insert(group.to_owned(), Report { lag, best, at: now });
            self.pressing_in(&reports, now)
        };
        self.inner.pressing.send_if_modified(|current| {
            let changed = *current != pressing;
            *current = pressing;
            changed
        });
    }

    /// Whether a fresh projection is beyond the bound and above its best now.
    pub fn pressing(&self) -> bool {
        let reports = self.inner.reports.lock().expect("not poisoned");
        self.pressing_in(&reports, Instant::now())
    }

    fn pressing_in(&self, reports: &HashMap<String, Report>, now: Instant) -> bool {
        reports.values().any(|r| {
            now.duration_since(r.at) < STALE_AFTER && r.best.is_some_and(|best| r.lag > best)
        })
    }

    /// Waits while a projection is beyond [`LagBound::max`] and above its best, for at most
    /// [`LagBound::hold`].
    pub async fn admit(&self) -> Admission {
        if !*self.inner.pressing.borrow() {
            return Admission::Now;
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.inner.hold;
        let mut pressing = self.inner.pressing.subscribe();
        loop {
            // a projector that stopped reporting drops out after STALE_AFTER: look again at
            // least that often, not only when a report comes
            if !self.pressing() {
                return Admission::Held(started.elapsed());
            }
            let wake = (tokio::time::Instant::now() + STALE_AFTER).min(deadline);
            match tokio::time::timeout_at(wake, pressing.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Admission::Held(started.elapsed()),
                Err(_) if tokio::time::Instant::now() >= deadline => return Admission::HeldOut,
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_the_bound_nothing_is_held() {
        let bound = LagBound::new(100, Duration::from_secs(5));
        bound.report("sql", 100);
        bound.report("objects", 3);
        assert_eq!(bound.admit().await, Admission::Now);
    }

    #[tokio::test]
    async fn a_projection_working_off_a_backlog_holds_nothing() {
        let bound = LagBound::new(100, Duration::from_secs(5));
        // far behind (a restart after an outage), and shrinking report after report
        bound.report("sql", 900_000);
        bound.report("sql", 880_000);
        assert_eq!(bound.admit().await, Admission::Now);
        // growing again while beyond the bound: the ingress is outrunning it
        bound.report("sql", 880_001);
        assert!(bound.pressing());
    }

    #[tokio::test]
    async fn beyond_the_bound_a_webhook_waits_until_the_projection_is_back_to_its_best() {
        let bound = LagBound::new(100, Duration::from_secs(30));
        bound.report("sql", 5_000);
        assert!(!bound.pressing(), "crossing the bound is its best so far");
        bound.report("sql", 5_100);
        bound.report("objects", 50);
        let reporter = bound.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // the other projection catching up does not release it
            reporter.report("objects", 0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            reporter.report("sql", 5_050);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // back to its best: it can no longer drift up
            reporter.report("sql", 5_000);
        });
        match bound.admit().await {
            Admission::Held(waited) => assert!(waited >= Duration::from_millis(150), "{waited:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_webhook_is_let_through_after_the_hold() {
        let bound = LagBound::new(100, Duration::from_millis(100));
        bound.report("sql", 5_000);
        bound.report("sql", 5_001);
        let reporter = bound.clone();
        // reports keep coming, all behind and growing
        let keep = tokio::spawn(async move {
            for lag in 5_002.. {
                reporter.report("sql", lag);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert_eq!(bound.admit().await, Admission::HeldOut);
        keep.abort();
    }

    #[tokio::test]
    async fn a_projection_that_stopped_reporting_holds_nothing_once_stale() {
        let bound = LagBound::new(100, Duration::from_secs(60));
        bound.report("sql", 5_000);
        bound.report("sql", 5_100);
        assert!(bound.pressing());
        // the SQL projector's database is down: no more reports (its last one is made
        // STALE_AFTER old by hand rather than waited for)
        bound
            .inner
            .reports
            .lock()
            .unwrap()
            .get_mut("sql")
            .unwrap()
            .at = Instant::now()
            .checked_sub(STALE_AFTER)
            .expect("the clock has run that long");
        assert!(!bound.pressing());
        assert!(matches!(
            bound.admit().await,
            Admission::Held(_) | Admission::Now
        ));
    }
}
