//! Acknowledgements held back until the store committed what they acknowledge
//! (`agent.session_created`, `agent.ready`): the event is numbered, kept and stored at once, and
//! reaches the client — with any event after it — at [`Session::release`].

use super::Session;
use crate::metrics::Metrics;
use crate::session::event::ServerEvent;

impl Session {
    /// [`Session::emit`], but the event (and any after it) reaches the client only at
    /// [`Session::release`] — once the store has committed what it acknowledges.
    pub fn emit_held(&self, event: &ServerEvent, metrics: &Metrics) {
        let mut inner = self.lock();
        let next = inner.seq + 1;
        inner.withheld_from.get_or_insert(next);
        self.emit_event_locked(&mut inner, event, metrics, false);
    }

    /// [`Session::emit_held`] for an event whose live form carries a secret (the resume token
    /// of `agent.session_created`): `logged` is numbered, kept for replay and written to the
    /// store; the owner receives `live`, with the same `seq`, at [`Session::release`].
    pub fn emit_held_secret(&self, logged: &ServerEvent, live: &ServerEvent, metrics: &Metrics) {
        let mut inner = self.lock();
        let seq = inner.seq + 1;
        inner.withheld_from.get_or_insert(seq);
        inner.live_frame = Some((seq, live.frame_in_session(&self.id, seq)));
        self.emit_event_locked(&mut inner, logged, metrics, false);
    }

    /// Sends the held-back events (in order) to the owning connection.
    pub fn release(&self, metrics: &Metrics) {
        let mut inner = self.lock();
        let Some(from) = inner.withheld_from.take() else {
            return;
        };
        let live = inner.live_frame.take();
        self.settle_pieces(&mut inner);
        let held = inner
            .replay
            .frames(&self.id, from - 1, u64::MAX, live.as_ref());
        if let Some(owner) = &inner.owner {
            metrics.events_sent.add(held.len() as u64);
            owner.send_batch(held);
        }
    }
}
