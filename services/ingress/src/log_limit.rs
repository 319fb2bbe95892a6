//! Rate limit for the log lines of refused requests: anyone can send requests that are
//! refused, so their log lines must not grow with the attacker's rate. Each second at most
//! `per_sec` lines are written; the next line written says how many were left out. The
//! metrics still count every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub(crate) struct LogLimiter {
    per_sec: u64,
    start: Instant,
    /// The current second (since `start`) in the high 32 bits, lines written in it below.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(per_sec: u32) -> Self {
        Self {
            per_sec: u64::from(per_sec),
            start: Instant::now(),
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this line may be written, `n` being the lines left out since the
    /// last one written; `None` when it must be left out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let second = self.start.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window, count) = (current >> 32, current & 0xffff_ffff);
            let next = if window == second {
                if count >= self.per_sec {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_rate_per_second_and_the_next_line_counts_the_rest() {
        let limiter = LogLimiter::new(3);
        let admitted: Vec<_> = (0..1000).filter_map(|_| limiter.admit()).collect();
        // all within one second (or two, on a very slow machine)
        assert!((3..=6).contains(&admitted.len()), "{admitted:?}");
        assert_eq!(admitted[0], 0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let next = limiter.admit().expect("a new second");
        let reported: u64 = admitted.iter().sum();
        assert_eq!(
            next + reported + admitted.len() as u64,
            1000,
            "every line is written or counted"
        );

        let off = LogLimiter::new(0);
        assert!(off.admit().is_none());
    }
}
