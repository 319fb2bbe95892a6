//! Waiting out an outage: capped exponential [`Backoff`], and [`Retry`], the state of one
//! retry loop (how many failures in a row, the log lines, the wait that gives up when the
//! process shuts down). Every loop that retries an unavailable database, store or log uses
//! these two, so delays, logs and shutdown behave the same everywhere.
//!
//! A loop keeps its own `match` on the operation's result (only it knows which errors are
//! worth waiting out), and asks [`Retry::wait`] to sleep:
//!
//! ```ignore
//! let mut retry = Retry::new(Backoff::DEFAULT, &cancel, "database");
//! let target = loop {
//!     match connect().await {
//!         Err(Error::Unavailable(why)) if retry.wait(&why).await => continue,
//!         Err(Error::Unavailable(_)) => return Err(stopped),
//!         other => break retry.done(other),
//!     }
//! };
//! ```

use std::fmt::Display;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff: `initial`, doubled after every failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The default of every outage loop: 200 ms doubling to 30 s.
    pub const DEFAULT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// Delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One retry loop's state. `what` names the thing waited for in the log lines
/// (`sink sql`, `database`, ...).
#[derive(Debug)]
pub struct Retry<'a> {
    backoff: Backoff,
    cancel: &'a CancellationToken,
    what: &'a str,
    failures: u32,
}

impl<'a> Retry<'a> {
    pub fn new(backoff: Backoff, cancel: &'a CancellationToken, what: &'a str) -> Self {
        Self {
            backoff,
            cancel,
            what,
            failures: 0,
        }
    }

    /// What is waited for (the name given to [`Retry::new`]).
    pub fn what(&self) -> &str {
        self.what
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure, logs it (`error` must not carry secrets or values: pass a
    /// redacted description) and sleeps the next delay. `false` when the token was
    /// cancelled first: the caller gives up. A long outage is logged at failures 1, 2, 4,
    /// 8, ... (the others at debug), so it cannot flood the log.
    pub async fn wait(&mut self, error: &(dyn Display + Sync)) -> bool {
        let delay = self.backoff.delay(self.failures);
        self.failures += 1;
        if self.failures.is_power_of_two() {
            tracing::warn!(
                what = self.what,
                error = %error,
                attempt = self.failures,
                retry_in_ms = delay.as_millis() as u64,
                "unavailable; waiting before the next attempt"
            );
        } else {
            tracing::debug!(what = self.what, error = %error, attempt = self.failures, "still unavailable");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => !self.cancel.is_cancelled(),
            () = self.cancel.cancelled() => false,
        }
    }

    /// Ends the loop with `value`: logs the recovery when there were failures, resets.
    pub fn done<T>(&mut self, value: T) -> T {
        if self.failures > 0 {
            tracing::info!(
                what = self.what,
                attempts = self.failures + 1,
                "available again; resuming"
            );
            self.failures = 0;
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<u64> = (0..8).map(|i| b.delay(i).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_and_reset_after_success() {
        let cancel = CancellationToken::new();
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut retry = Retry::new(b, &cancel, "test");
        let start = tokio::time::Instant::now();
        assert!(retry.wait(&"down").await);
        assert!(retry.wait(&"down").await);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(retry.failures(), 2);
        assert_eq!(retry.done(7), 7);
        assert_eq!(retry.failures(), 0);
        let again = tokio::time::Instant::now();
        assert!(retry.wait(&"down").await);
        assert_eq!(again.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_token_ends_the_wait_at_once() {
        let cancel = CancellationToken::new();
        let b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let mut retry = Retry::new(b, &cancel, "test");
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            canceller.cancel();
        });
        let start = tokio::time::Instant::now();
        assert!(!retry.wait(&"down").await);
        assert!(start.elapsed() < Duration::from_secs(1));
        // already cancelled: no wait at all
        assert!(!retry.wait(&"down").await);
    }
}
