//! Exponential backoff with seeded jitter, for retrying requests to a peer that may be
//! partitioned away.
//!
//! The delay before retry `n` (counting from 0) is drawn uniformly from
//! `[cap_n / 2, cap_n]` where `cap_n = min(max, base * 2^n)` ("equal jitter"): the exponential
//! part spaces retries out while a link is down, the jitter keeps many instances that lost the
//! link at the same moment from retrying in lockstep, and the floor keeps a retry from firing
//! immediately. The jitter comes from a [`SeededRng`], so a run with the same seed retries at
//! the same offsets.

use std::time::Duration;

use crate::rng::SeededRng;

/// Backoff state for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: SeededRng,
}

impl Backoff {
    /// A backoff starting around `base` and never exceeding `max`.
    pub fn new(base: Duration, max: Duration, rng: SeededRng) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
            rng,
        }
    }

    /// The delay to wait before the next retry; each call doubles the cap up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let cap = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        half + half.mul_f64(self.rng.next_f64())
    }

    /// How many delays were handed out since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            SeededRng::new(3),
        );
        let caps = [100, 200, 400, 800, 1600, 2000, 2000];
        for cap in caps {
            let d = b.next_delay();
            let cap = Duration::from_millis(cap);
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn same_seed_same_schedule() {
        let run = |seed| {
            let mut b = Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(5),
                SeededRng::new(seed),
            );
            (0..6).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
