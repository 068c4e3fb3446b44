//! Exponential backoff with jitter: the one retry schedule, for the
//! agent's reconnects, the notifier outbox and the drivers' store writes.
//!
//! The ceiling doubles from `base` to `cap`; the wait is drawn uniformly
//! from `[floor × ceiling, ceiling]`. A floor of 0 is "full jitter" (AWS
//! architecture blog): a fleet reconnecting after a restart spreads out
//! over the whole window. A floor such as 0.5 keeps retries of one queue
//! from coming back at once. The randomness comes in as an argument, so
//! tests are deterministic.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    floor: f64,
    attempt: u32,
}

impl Backoff {
    /// Full jitter: waits anywhere in `[0, ceiling]`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            floor: 0.0,
            attempt: 0,
        }
    }

    /// Waits at least `floor` (0 to 1) of the ceiling.
    pub fn with_floor(mut self, floor: f64) -> Self {
        self.floor = floor.clamp(0.0, 1.0);
        self
    }

    /// After a success: the next wait starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures so far since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling for the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        self.ceiling_after(self.attempt)
    }

    /// The ceiling once `attempts` waits have been taken.
    pub fn ceiling_after(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(16)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait; each call counts one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.delay_after(self.attempt, rng);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The wait after `attempts` earlier waits, for a caller that keeps
    /// the count itself (a queued notification stores its attempts).
    pub fn delay_after(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling_after(attempts);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        // Truncating the float is fine: the floor is a fraction of `ms`.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let low = ((ms as f64) * self.floor) as u64;
        Duration::from_millis(rng.random_range(low.min(ms)..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            let d = b.next_delay(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[9], Duration::from_secs(30));
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_spreads_a_herd() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..100)
            .map(|_| {
                Backoff::new(Duration::from_secs(8), Duration::from_secs(30)).next_delay(&mut rng)
            })
            .collect();
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 90, "delays should differ between agents");
        assert!(delays.iter().any(|d| *d < Duration::from_secs(2)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(6)));
    }

    #[test]
    fn a_floor_keeps_a_retry_from_coming_back_at_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).with_floor(0.5);
        for _ in 0..200 {
            let d = b.delay_after(3, &mut rng);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
            assert!(b.delay_after(40, &mut rng) <= Duration::from_secs(300));
        }
    }
}
