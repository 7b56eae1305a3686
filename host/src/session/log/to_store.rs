//! The session's events on their way to the store: a model read's pieces are gathered and
//! handed to the store's writer as one write when the read ends (the session's wake), every
//! other event at once with whatever was gathered before it — so the store receives a few
//! writes a second per session, not one per token, and still in `seq` order.

use std::sync::Arc;

use super::{Inner, Session};
use crate::store::{Store, CHUNK_BYTES};

/// Events logged and not yet handed to the store: `count` frames from `first` on, one a line.
#[derive(Default)]
pub(super) struct ToStore {
    first: u64,
    count: u64,
    frames: String,
}

/// Room a gathering starts with: a model read's pieces (up to 16 frames of ~200 bytes).
const GATHER_ROOM: usize = 4096;

impl Session {
    /// Logs event `seq` for the store: gathered while `quiet` (a piece of a model's stream,
    /// handed over at [`Session::wake`]), else handed over now with what was gathered.
    pub(super) fn to_store(&self, inner: &mut Inner, seq: u64, text: &str, quiet: bool) {
        if self.store.is_none() || inner.unstored {
            return;
        }
        let g = &mut inner.to_store;
        if g.count == 0 {
            g.first = seq;
            g.frames = String::with_capacity(if quiet { GATHER_ROOM } else { text.len() });
        } else {
            g.frames.push('\n');
        }
        g.frames.push_str(text);
        g.count += 1;
        if !quiet || g.frames.len() >= CHUNK_BYTES {
            self.hand_to_store(inner);
        }
    }

    /// Hands what was gathered to the store's writer.
    pub(super) fn hand_to_store(&self, inner: &mut Inner) {
        let gathered = std::mem::take(&mut inner.to_store);
        if let Some(store) = self.store.as_ref().filter(|_| !inner.unstored) {
            gathered.hand_to(store, &self.shared_id);
        }
    }
}

impl ToStore {
    pub(super) fn hand_to(self, store: &Store, id: &Arc<str>) {
        store.events(id, self.first, self.count, self.frames);
    }
}
