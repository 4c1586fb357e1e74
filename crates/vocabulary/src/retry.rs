//! The one retry policy of mbx's retry loops (start-up steps, MessageBox work of a
//! delivery loop, the broker receive adapters' reconnects and requeues): a wait that
//! doubles after each failure from a first wait up to a longest one, and starts again
//! from the first after a success. Built on `backon`'s exponential backoff, without jitter
//! and without a limit on the number of tries: each loop decides itself when to give up.
//!
//! (The MessageBox's delivery retries — a send port's `--retry-count`, `--retry-interval`
//! and `--retry-backoff` — are a product setting and are not this.)

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The waits between the tries of one retry loop: `first`, twice that, … up to `longest`.
#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    longest: Duration,
    waits: ExponentialBackoff,
}

impl Backoff {
    /// A wait doubling from `first` up to `longest`.
    pub fn doubling(first: Duration, longest: Duration) -> Self {
        let policy = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(longest)
            .with_factor(2.0)
            .without_max_times();
        Self {
            waits: policy.build(),
            policy,
            longest,
        }
    }

    /// The wait before the next try (each call doubles the one after it).
    pub fn next_wait(&mut self) -> Duration {
        // never ends: the policy has no limit on the number of tries
        let wait = self.waits.next().unwrap_or(self.longest);
        // backon doubles in f32 (400.000006ms): whole milliseconds, as the waits are logged
        Duration::from_millis(((wait.as_micros() + 500) / 1000) as u64)
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.waits = self.policy.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(waits: &[Duration]) -> Vec<u128> {
        waits.iter().map(Duration::as_millis).collect()
    }

    #[test]
    fn the_wait_doubles_up_to_the_longest_and_starts_again_after_a_success() {
        let mut b = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
        let waits: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        assert_eq!(
            ms(&waits),
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000]
        );
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(200));
        assert_eq!(b.next_wait(), Duration::from_millis(400));
    }

    #[test]
    fn a_loop_retried_for_long_keeps_the_longest_wait() {
        let mut b = Backoff::doubling(Duration::from_millis(250), Duration::from_secs(5));
        let last = (0..10_000).map(|_| b.next_wait()).last();
        assert_eq!(last, Some(Duration::from_secs(5)));
    }
}
