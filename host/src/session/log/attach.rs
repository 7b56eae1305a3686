//! Who a session's events go to, and when: detaching when a connection goes, resuming — the owner
//! attached and the missed events replayed under the session's lock, so nothing is lost or
//! sent twice between the replay and the live events.

use super::{Inner, ResumeOutcome, Session};
use crate::metrics::Metrics;
use crate::session::event::{AgentInfo, ServerEvent};
use crate::session::subscriber::{send_about, Sub};

impl Session {
    /// [`Session::emit`] for a piece of a model's stream: queued for the client without waking
    /// its writer, which the model's pause ([`Session::wake`]) or the next other event does — the
    /// pieces of one model read go out in one write.
    pub fn emit_streamed(&self, event: &ServerEvent, metrics: &Metrics) {
        let mut inner = self.lock();
        self.emit_event_locked(&mut inner, event, metrics, true);
    }

    /// The model paused: the pieces [`Session::emit_streamed`] gathered go to the client in one
    /// step, and to the replay buffer and the store as one block.
    pub fn wake(&self) {
        let mut inner = self.lock();
        send_unsent(&mut inner, &self.budget.metrics);
        self.settle_pieces(&mut inner);
    }

    /// Detaches from `conn_id` (its connection closed); returns the new epoch to expire on.
    pub fn detach(&self, conn_id: u64) -> Option<u64> {
        let mut inner = self.lock();
        if inner.owner.as_ref().map(|o| o.id()) != Some(conn_id) {
            return None;
        }
        send_unsent(&mut inner, &self.budget.metrics);
        inner.owner = None;
        inner.epoch += 1;
        Some(inner.epoch)
    }

    /// True when the session is still detached since the detach that returned `epoch`.
    pub fn still_detached(&self, epoch: u64) -> bool {
        let inner = self.lock();
        inner.owner.is_none() && inner.epoch == epoch
    }

    /// The seq of the newest event, held ones (an acknowledgement waiting for the store)
    /// included.
    pub fn newest_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Attaches `conn` and replays every event after `last_seq`, atomically with respect to
    /// new events: `agent.session_resumed` first, then the replayed events, then live ones.
    pub fn resume(&self, conn: Sub, last_seq: u64, metrics: &Metrics) -> ResumeOutcome {
        let mut inner = self.lock();
        inner.epoch += 1;
        self.settle_pieces(&mut inner);
        let first_available = inner
            .replay
            .first_seq()
            .unwrap_or(inner.seq.saturating_add(1));
        // Held-back events are not replayed: `release` sends them to whoever owns it then.
        let shown_to = inner.withheld_from.map_or(inner.seq, |w| w - 1);
        let missed = inner.replay.frames(&self.id, last_seq, shown_to, None);
        let recovered = last_seq.saturating_add(1) >= first_available || last_seq >= inner.seq;
        metrics.events_sent.add(missed.len() as u64);
        let m = &inner.bound.plugin.manifest;
        let agent = AgentInfo {
            name: m.name.clone(),
            version: m.version.clone(),
            generation: None,
            tools: None,
        };
        let header = ServerEvent::SessionResumed {
            agent,
            last_seq: shown_to,
            replayed: missed.len(),
            recovered,
            pending_approvals: self.approvals.pending(),
            usage: inner.usage,
        };
        send_about(&*conn, Some(&self.id), &header);
        conn.send_batch(missed);
        send_unsent(&mut inner, &self.budget.metrics);
        inner.owner = Some(conn);
        if recovered {
            ResumeOutcome::Recovered
        } else {
            ResumeOutcome::Gap { first_available }
        }
    }
}

/// Queues the model read's frames not yet sent for the owner, in one step.
pub(super) fn send_unsent(inner: &mut Inner, metrics: &Metrics) {
    if inner.unsent.is_empty() {
        return;
    }
    match &inner.owner {
        Some(owner) => {
            metrics.events_sent.add(inner.unsent.len() as u64);
            owner.send_pieces(&mut inner.unsent);
        }
        None => inner.unsent.clear(),
    }
}
