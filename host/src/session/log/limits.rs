//! What a session may ask for at a time: custom events waiting for the plugin's hook, and
//! messages a minute (`--max-runs-per-minute`); and what its replay buffer keeps.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::replay::Kept;
use super::{Inner, Session, MAX_CUSTOM_IN_FLIGHT};

/// One of a session's [`MAX_CUSTOM_IN_FLIGHT`] places for custom events, given back when
/// dropped — however the event's task ends.
pub struct CustomSlot(Arc<Session>);

impl CustomSlot {
    pub fn session(&self) -> &Session {
        &self.0
    }
}

impl Drop for CustomSlot {
    fn drop(&mut self) {
        self.0.custom_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Session {
    /// A place for one more custom event, unless [`MAX_CUSTOM_IN_FLIGHT`] are taken.
    pub fn custom_slot(self: &Arc<Self>) -> Option<CustomSlot> {
        let taken = self.custom_in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= MAX_CUSTOM_IN_FLIGHT {
            self.custom_in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(CustomSlot(self.clone()))
    }

    /// Takes one of the messages the session may send this minute (`per_minute` 0: no limit);
    /// when none is left, how long until one is.
    pub fn take_run_token(&self, per_minute: u32) -> Result<(), std::time::Duration> {
        if per_minute == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        self.lock()
            .runs
            .get_or_insert_with(|| crate::session::rate::Bucket::full(per_minute, now))
            .take(per_minute, now)
    }
}

impl Session {
    /// Keeps `kept` in the replay buffer, dropping the oldest events past the session's cap or
    /// the host's replay budget.
    pub(super) fn keep_for_replay(&self, inner: &mut Inner, kept: Kept) {
        let cost = inner.replay.push(kept);
        // The host-wide gauge moves once an entry, by what was kept less what was dropped (it
        // is shared by every session: one atomic operation, not two).
        let mut freed = 0;
        while inner.replay.bytes() > self.replay_cap_bytes
            || self.budget.over_with(cost as i64 - freed as i64)
        {
            let Some(n) = inner.replay.drop_oldest() else {
                break;
            };
            freed += n;
        }
        let gauge = &self.budget.metrics.replay_bytes;
        match cost >= freed {
            true => gauge.add((cost - freed) as u64),
            false => gauge.sub((freed - cost) as u64),
        }
    }
}
