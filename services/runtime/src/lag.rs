//! How far the projections of one process may fall behind its ingress (`standalone`): the
//! projectors report their lag after every batch, and the ingress holds a new webhook while
//! the furthest-behind projection is more than [`LagBound::max`] records behind, for at most
//! [`LagBound::hold`], then accepts it anyway.
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
    reports: Mutex<HashMap<String, (u64, Instant)>>,
    /// The furthest-behind fresh projection's lag, as of the last report.
    behind: watch::Sender<u64>,
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
                behind: watch::Sender::new(0),
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
        let behind = {
            let mut reports = self.inner.reports.lock().expect("not poisoned");
            match reports.get_mut(group) {
                Some(report) => *report = (lag, now),
                None => {
                    reports.insert(group.to_owned(), (lag, now));
                }
            }
            furthest(&reports, now)
        };
        self.inner.behind.send_if_modified(|current| {
            let changed = *current != behind;
            *current = behind;
            changed
        });
    }

    /// The furthest-behind fresh projection's lag now.
    pub fn behind(&self) -> u64 {
        let reports = self.inner.reports.lock().expect("not poisoned");
        furthest(&reports, Instant::now())
    }

    /// Waits while the projections are more than [`LagBound::max`] behind, for at most
    /// [`LagBound::hold`].
    pub async fn admit(&self) -> Admission {
        if *self.inner.behind.borrow() <= self.inner.max {
            return Admission::Now;
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.inner.hold;
        let mut behind = self.inner.behind.subscribe();
        loop {
            // a projector that stopped reporting drops out after STALE_AFTER: look again at
            // least that often, not only when a report comes
            if self.behind() <= self.inner.max {
                return Admission::Held(started.elapsed());
            }
            let wake = (tokio::time::Instant::now() + STALE_AFTER).min(deadline);
            match tokio::time::timeout_at(wake, behind.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Admission::Held(started.elapsed()),
                Err(_) if tokio::time::Instant::now() >= deadline => return Admission::HeldOut,
                Err(_) => {}
            }
        }
    }
}

fn furthest(reports: &HashMap<String, (u64, Instant)>, now: Instant) -> u64 {
    reports
        .values()
        .filter(|(_, at)| now.duration_since(*at) < STALE_AFTER)
        .map(|(lag, _)| *lag)
        .max()
        .unwrap_or(0)
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
    async fn beyond_the_bound_a_webhook_waits_until_the_furthest_projection_is_back() {
        let bound = LagBound::new(100, Duration::from_secs(30));
        bound.report("sql", 5_000);
        bound.report("objects", 50);
        let reporter = bound.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // the other projection catching up does not release it
            reporter.report("objects", 0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            reporter.report("sql", 90);
        });
        match bound.admit().await {
            Admission::Held(waited) => assert!(waited >= Duration::from_millis(100), "{waited:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_webhook_is_let_through_after_the_hold() {
        let bound = LagBound::new(100, Duration::from_millis(100));
        bound.report("sql", 5_000);
        let reporter = bound.clone();
        // reports keep coming, all behind
        let keep = tokio::spawn(async move {
            loop {
                reporter.report("sql", 5_001);
                tokio::time::sleep(Duration::from_millis(10)).await;
                reporter.report("sql", 5_000);
            }
        });
        assert_eq!(bound.admit().await, Admission::HeldOut);
        keep.abort();
    }

    #[tokio::test]
    async fn a_projection_that_stopped_reporting_holds_nothing_once_stale() {
        let bound = LagBound::new(100, Duration::from_secs(60));
        bound.report("sql", 5_000);
        // the SQL projector's database is down: no more reports (its last one is made
        // STALE_AFTER old by hand rather than waited for)
        bound
            .inner
            .reports
            .lock()
            .unwrap()
            .get_mut("sql")
            .unwrap()
            .1 = Instant::now()
            .checked_sub(STALE_AFTER)
            .expect("the clock has run that long");
        assert_eq!(bound.behind(), 0);
        assert!(matches!(
            bound.admit().await,
            Admission::Held(_) | Admission::Now
        ));
    }
}
