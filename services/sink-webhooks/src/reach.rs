//! Endpoints nothing answers at (the connection refused or reset, the host unknown): a
//! circuit breaker, per endpoint and per process.
//!
//! Knocking once per event at a door nobody opens costs as much as delivering the event (a
//! connection set up and refused, an attempt row, the delivery's next attempt scheduled), and
//! on a small machine that cost is taken from the healthy endpoints. So after [`TRIP`]
//! attempts in a row failed to connect, the endpoint is *unreachable*:
//! - the fan-out sends it no first attempts (its deliveries are written pending, due now);
//! - its worker leases nothing, except one due delivery, its oldest, as a probe once a wait
//!   has passed (`unreachable_wait`, doubling while the probes fail, at most
//!   `unreachable_wait_max`). The probe is a real attempt of that delivery, recorded and
//!   scheduled like any other.
//!
//! Any answer (a status, even 5xx), a timeout or another error than a refused connection
//! ends it: the backlog is due at once, in order. Deliveries wait meanwhile without using
//! attempts of their schedule, so an outage never dead-letters them; an endpoint that stays
//! unreachable is disabled after `disable_after` like any failing one (its probes are failed
//! attempts).

use std::sync::Mutex;
use std::time::Duration;

use crate::metrics::WebhookMetrics;
use crate::send::ErrorClass;

/// Attempts in a row that failed to connect before an endpoint is unreachable.
pub(crate) const TRIP: u32 = 5;

/// The breaker of one endpoint.
pub(crate) struct Reach {
    name: String,
    metrics: WebhookMetrics,
    first_wait: Duration,
    max_wait: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Attempts in a row that failed to connect.
    failures: u32,
    /// 0: reachable; else how many waits in a row (each twice the last).
    strikes: u32,
    /// No probe before this (unix ms).
    probe_at_ms: i64,
    /// A probe is being leased or is in flight.
    probing: bool,
}

impl Reach {
    pub(crate) fn new(
        name: &str,
        (first_wait, max_wait): (Duration, Duration),
        metrics: WebhookMetrics,
    ) -> Self {
        metrics.unreachable(name, false);
        Self {
            name: name.to_owned(),
            metrics,
            first_wait,
            max_wait,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint is unreachable: only probes go to it.
    pub(crate) fn unreachable(&self) -> bool {
        self.state().strikes > 0
    }

    /// Whether the caller may probe now (then it must end with [`Reach::ended`] or
    /// [`Reach::not_probed`]).
    pub(crate) fn take_probe(&self, now_ms: i64) -> bool {
        let mut state = self.state();
        if state.strikes == 0 || state.probing || state.probe_at_ms > now_ms {
            return false;
        }
        state.probing = true;
        true
    }

    /// The probe taken was not sent (nothing was due, or reading failed).
    pub(crate) fn not_probed(&self) {
        self.state().probing = false;
    }

    fn wait(&self, strikes: u32) -> Duration {
        (self.first_wait * 2u32.pow(strikes.saturating_sub(1).min(16))).min(self.max_wait)
    }

    /// An attempt to the endpoint ended with `class` (`probe`: the one [`Reach::take_probe`]
    /// allowed).
    pub(crate) fn ended(&self, class: ErrorClass, probe: bool, now_ms: i64) {
        let mut state = self.state();
        if probe {
            state.probing = false;
        }
        match class {
            ErrorClass::Connect => {
                state.failures = state.failures.saturating_add(1);
                if probe {
                    state.strikes = state.strikes.saturating_add(1);
                } else if state.strikes == 0 && state.failures >= TRIP {
                    state.strikes = 1;
                    self.metrics.unreachable(&self.name, true);
                    tracing::warn!(
                        endpoint = %self.name,
                        attempts = state.failures,
                        wait_ms = self.first_wait.as_millis() as u64,
                        "webhook endpoint refuses connections: its deliveries wait, one probes it now and then"
                    );
                } else {
                    return;
                }
                let wait = self.wait(state.strikes);
                state.probe_at_ms = now_ms + wait.as_millis() as i64;
            }
            // the guard's refusal says nothing about the endpoint (its delivery is dead)
            ErrorClass::RefusedAddress => {}
            _ => {
                state.failures = 0;
                if state.strikes > 0 {
                    state.strikes = 0;
                    state.probe_at_ms = 0;
                    self.metrics.unreachable(&self.name, false);
                    tracing::info!(endpoint = %self.name, "webhook endpoint reachable again: its deliveries go");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach() -> Reach {
        Reach::new(
            "e",
            (Duration::from_millis(100), Duration::from_millis(1_000)),
            WebhookMetrics::unregistered(),
        )
    }

    #[test]
    fn refused_connections_in_a_row_trip_it_and_an_answer_ends_it() {
        let r = reach();
        for _ in 0..TRIP - 1 {
            r.ended(ErrorClass::Connect, false, 0);
        }
        assert!(!r.unreachable());
        // an answer in between starts the count afresh
        r.ended(ErrorClass::Status, false, 0);
        for _ in 0..TRIP - 1 {
            r.ended(ErrorClass::Connect, false, 0);
        }
        assert!(!r.unreachable());
        r.ended(ErrorClass::Connect, false, 0);
        assert!(r.unreachable());
        // a refused address says nothing about the endpoint
        r.ended(ErrorClass::RefusedAddress, false, 0);
        assert!(r.unreachable());
        r.ended(ErrorClass::Timeout, false, 0);
        assert!(!r.unreachable());
        assert!(!r.take_probe(0), "a reachable endpoint needs no probe");
    }

    #[test]
    fn one_probe_at_a_time_after_a_wait_that_doubles() {
        let r = reach();
        for _ in 0..TRIP {
            r.ended(ErrorClass::Connect, false, 1_000);
        }
        // more refusals of attempts already in flight do not push the probe back
        r.ended(ErrorClass::Connect, false, 1_050);
        assert!(!r.take_probe(1_099));
        assert!(r.take_probe(1_100));
        assert!(!r.take_probe(1_100), "one probe at a time");
        r.ended(ErrorClass::Connect, true, 1_200);
        assert!(!r.take_probe(1_399));
        assert!(r.take_probe(1_400), "the wait doubled");
        r.not_probed();
        assert!(r.take_probe(1_400), "a probe not sent can be taken again");
        r.ended(ErrorClass::Connect, true, 2_000);
        r.ended(ErrorClass::Connect, true, 2_000);
        r.ended(ErrorClass::Connect, true, 2_000);
        r.ended(ErrorClass::Connect, true, 2_000);
        assert!(!r.take_probe(2_999));
        assert!(r.take_probe(3_000), "at most the longest wait");
        r.ended(ErrorClass::None, true, 3_010);
        assert!(!r.unreachable());
    }
}
