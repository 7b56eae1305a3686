//! A session's log fed from another host: the events of a turn that runs elsewhere, followed
//! from the shared store (`session/follow.rs`), with that host's numbering.

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::{Inner, Session};
use crate::metrics::Metrics;
use crate::session::turn::Turn;

impl Session {
    /// An event another host emitted in this session (followed from the shared store), with
    /// that host's `seq`: kept for replay and sent to the owning connection, unless the client
    /// saw it already (`seq` ≤ `floor`, its `last_seq` when it resumed here) or it is not newer
    /// than what this copy has. Not written back to the store (it is there).
    pub fn append_foreign(&self, seq: u64, frame: String, floor: u64, metrics: &Metrics) {
        let mut inner = self.lock();
        self.append_foreign_locked(&mut inner, seq, frame, floor, metrics);
    }

    fn append_foreign_locked(
        &self,
        inner: &mut Inner,
        seq: u64,
        frame: String,
        floor: u64,
        metrics: &Metrics,
    ) {
        if seq <= inner.seq {
            return; // this copy has it (restored from the store, or read twice)
        }
        inner.seq = seq;
        let text = Utf8Bytes::from(frame);
        self.keep_for_replay(inner, super::replay::Kept::Frame(seq, text.clone()));
        if seq > floor && inner.withheld_from.is_none() {
            if let Some(owner) = &inner.owner {
                owner.send(text);
                metrics.events_sent.inc();
            }
        }
    }

    /// Marks the session busy while another host runs its turn (this host follows it): messages
    /// meanwhile follow `on_busy`; cancelling the token is how a cancel reaches the follower.
    pub fn begin_follow(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let mut inner = self.lock();
        inner.running = Some(token.clone());
        inner.left = false;
        token
    }

    /// The session's client left (its resume window passed, or the host stops): a run here is
    /// cancelled, but a turn followed from another host is only let go — it goes on there, for
    /// whoever resumes it next. True when something was running.
    pub fn leave(&self) -> bool {
        self.lock().left = true;
        self.cancel()
    }

    /// Whether the client left (see [`Session::leave`]).
    pub fn has_left(&self) -> bool {
        self.lock().left
    }

    /// The followed turn ended: the session is idle here — then its `agent.ready` goes out: the
    /// other host's (`ready`: its seq and frame, held back until now so that a message sent on
    /// seeing it is not refused as busy), or one of ours. Returns the next queued message
    /// (already marked running) to run here, if any.
    pub fn end_follow(
        &self,
        ready: Option<(u64, String)>,
        floor: u64,
        metrics: &Metrics,
    ) -> Option<(Turn, CancellationToken)> {
        let mut inner = self.lock();
        let next = Self::next_queued(&mut inner);
        match ready {
            Some((seq, frame)) => {
                self.append_foreign_locked(&mut inner, seq, frame, floor, metrics)
            }
            None if next.is_none() => self.emit_ready(&mut inner, metrics),
            None => {}
        }
        next
    }
}
