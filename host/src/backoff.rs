//! Waiting longer after each failure in a row: the one back-off for everything the host
//! restarts or retries — plugin workers that keep crashing, MCP servers that keep going away,
//! the session store while it refuses writes.

use std::time::Duration;

/// Doubling waits between `first` and `max`; [`Backoff::reset`] after a success (or a run
/// that lasted long enough to count as one).
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The wait after the first failure in a row.
    initial: Duration,
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits `first`, `2 × first`, … up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            initial: first,
            first,
            max,
            next: first,
        }
    }

    /// The first failure in a row is retried at once; after that as [`Backoff::new`].
    pub const fn immediate_then(first: Duration, max: Duration) -> Backoff {
        Backoff {
            initial: Duration::ZERO,
            first,
            max,
            next: Duration::ZERO,
        }
    }

    /// Another failure: how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).clamp(self.first, self.max);
        wait
    }

    /// A failure of something that had run for `lived`: one that ran at least `stable` starts
    /// the back-off over.
    pub fn failed_after(&mut self, lived: Duration, stable: Duration) -> Duration {
        if lived >= stable {
            self.reset();
        }
        self.failed()
    }

    /// A success: the next failure waits as the first did.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut b = Backoff::new(250 * MS, 1000 * MS);
        let waits: Vec<_> = (0..5).map(|_| b.failed()).collect();
        assert_eq!(waits, [250 * MS, 500 * MS, 1000 * MS, 1000 * MS, 1000 * MS]);
        b.reset();
        assert_eq!(b.failed(), 250 * MS);
    }

    #[test]
    fn immediate_retries_once_at_once_and_a_stable_run_resets() {
        let mut b = Backoff::immediate_then(250 * MS, 30_000 * MS);
        assert_eq!(b.failed(), Duration::ZERO);
        assert_eq!(b.failed(), 250 * MS);
        assert_eq!(b.failed_after(MS, 10 * MS), 500 * MS);
        assert_eq!(b.failed_after(10 * MS, 10 * MS), Duration::ZERO);
    }
}
