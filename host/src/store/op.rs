//! The writes sessions hand the store's writer: one [`Op`] each, and the [`Acker`] an
//! acknowledgement waits on.

use std::sync::{mpsc, Arc};

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One write, as the writer thread receives it.
pub(crate) enum Op {
    Create {
        id: String,
        token_hash: String,
        settings: String,
        /// The address of the client that made it (stored sessions are counted per address).
        client: String,
        /// The principal it belongs to (sessions are listed per owner).
        owner: Option<String>,
        /// The agent's name.
        agent: String,
        /// Unix milliseconds.
        at: i64,
    },
    Event {
        id: Arc<str>,
        seq: u64,
        frame: Utf8Bytes,
    },
    TurnStart {
        id: String,
        input: String,
        /// The session's title, on its first turn (kept once set).
        title: Option<String>,
        owner: Option<String>,
        /// Unix milliseconds.
        at: i64,
    },
    TurnEnd {
        id: String,
        memory: String,
        /// The session's usage totals (JSON), listed without reading the memory.
        usage: String,
        /// The agent the session talks to now (a handoff in the turn may have moved it).
        agent: String,
        owner: Option<String>,
        /// Unix milliseconds.
        at: i64,
    },
    Delete {
        id: String,
        owner: Option<String>,
    },
    /// This host now serves the session (Redis: the session's `host`).
    Claim {
        id: String,
    },
    /// Answered once every write before it is applied.
    Ack(Acker),
}

/// Who waits for an [`Op::Ack`].
pub(crate) enum Acker {
    Async(tokio::sync::oneshot::Sender<()>),
    Blocking(mpsc::Sender<()>),
}

impl Acker {
    pub(super) fn done(self) {
        match self {
            Acker::Async(tx) => {
                let _ = tx.send(());
            }
            Acker::Blocking(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

impl Op {
    pub(super) fn session(&self) -> Option<&str> {
        match self {
            Op::Create { id, .. }
            | Op::TurnStart { id, .. }
            | Op::TurnEnd { id, .. }
            | Op::Delete { id, .. }
            | Op::Claim { id } => Some(id),
            Op::Event { id, .. } => Some(id),
            Op::Ack(_) => None,
        }
    }

    /// What the op holds in memory while it waits, about.
    pub(super) fn size(&self) -> usize {
        64 + match self {
            Op::Create {
                id,
                token_hash,
                settings,
                ..
            } => id.len() + token_hash.len() + settings.len(),
            Op::Event { frame, .. } => frame.len(),
            Op::TurnStart {
                id, input, title, ..
            } => id.len() + input.len() + title.as_ref().map_or(0, String::len),
            Op::TurnEnd {
                id, memory, usage, ..
            } => id.len() + memory.len() + usage.len(),
            Op::Delete { id, .. } | Op::Claim { id } => id.len(),
            Op::Ack(_) => 0,
        }
    }
}
