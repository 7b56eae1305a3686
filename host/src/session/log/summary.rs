//! A session as its principal's list shows it (title, turns, activity, usage), kept beside the
//! log and written to the store with each turn.

use super::Session;
use crate::agent::usage::UsageTotals;
use crate::store::{now_ms, Listed, Listing};

impl Session {
    /// A turn starts: the session's activity, and on its first turn the title it gets (the
    /// message's text, cut), which this returns to be stored.
    pub fn turn_started(&self, text: &str) -> Option<String> {
        let mut inner = self.lock();
        inner.updated = now_ms();
        if !inner.listing.title.is_empty() || text.trim().is_empty() {
            return None;
        }
        inner.listing.title = Listing::title_of(text);
        Some(inner.listing.title.clone())
    }

    /// A turn ended with the session's usage totals.
    pub fn turn_ended(&self, usage: UsageTotals) {
        let mut inner = self.lock();
        inner.usage = usage;
        inner.listing.turns += 1;
        inner.updated = now_ms();
    }

    /// A handoff moved the session to agent `name` (listed, and stored with the turn's end).
    pub fn set_agent(&self, name: &str) {
        let mut inner = self.lock();
        if inner.listing.agent != name {
            inner.listing.agent = name.to_owned();
        }
    }

    /// The agent the session talks to, as listed and stored ('' for a session stored before
    /// sessions named their agent).
    pub fn agent_name(&self) -> String {
        self.lock().listing.agent.clone()
    }

    /// The session's usage totals as of its last turn's end.
    pub fn usage(&self) -> UsageTotals {
        self.lock().usage
    }

    /// The session as the store had it when this host took it over (a followed turn's end).
    pub fn took_over(&self, listing: Listing, usage: UsageTotals) {
        let mut inner = self.lock();
        inner.listing = listing;
        inner.usage = usage;
        inner.updated = now_ms();
    }

    /// The session is deleted from the store: what its ending run still writes (its last
    /// events, its turn's end) would leave rows of a session that no longer exists.
    pub fn unstore(&self) {
        let mut inner = self.lock();
        inner.unstored = true;
    }

    /// The session's list entry as this host has it now.
    pub fn listed(&self) -> Listed {
        let inner = self.lock();
        Listed {
            id: self.id.clone(),
            listing: inner.listing.clone(),
            updated: inner.updated,
            running: inner.running.is_some(),
            usage: inner.usage.to_stored(),
        }
    }
}
