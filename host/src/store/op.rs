//! The writes sessions hand the store's writer: one [`Op`] each, and the [`Ack`] an
//! acknowledgement is.

use std::sync::{mpsc, Arc};

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One write, as the writer thread receives it. Events are the ones sent thousands of times a
/// second: a session hands over a model read's events as one op (see [`Op::Events`]). An op is
/// small (at most 64 bytes): the records that carry many strings are boxed, so the channel's
/// slots and the writer's batch move 64 bytes an op, not 160.
pub(crate) enum Op {
    Create(Box<Created>),
    /// Consecutive events of a session's log, the first numbered `first`.
    Events {
        id: Arc<str>,
        first: u64,
        frames: Frames,
    },
    TurnStart(Box<TurnStarted>),
    TurnEnd(Box<TurnEnded>),
    Delete {
        id: String,
        owner: Option<String>,
    },
    /// This host now serves the session (Redis: the session's `host`).
    Claim {
        id: String,
    },
    /// Answered once the writes it waits for are applied (see [`Ack`]).
    Ack(Ack),
}

/// The frames of an [`Op::Events`], one a line (frames are one-line JSON).
pub(crate) enum Frames {
    /// One event, the frame the session holds (no copy for a lone event).
    One(Utf8Bytes),
    /// A model read's events as the SQLite store keeps them ([`super::line`]'s stored lines,
    /// written by the session's [`super::line::Encoder`]; the first stands alone): appended to
    /// the row as they are. A store that keeps frames whole (Redis) reads them back on its
    /// writer's thread. Shared with the session's replay buffer, which keeps the same block.
    Short(std::sync::Arc<str>),
}

impl Frames {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Frames::Short(s) => s,
            Frames::One(f) => f.as_str(),
        }
    }
}

/// A new session.
pub(crate) struct Created {
    pub(crate) id: String,
    pub(crate) token_hash: String,
    pub(crate) settings: String,
    /// The address of the client that made it (stored sessions are counted per address).
    pub(crate) client: String,
    /// The principal it belongs to (sessions are listed per owner).
    pub(crate) owner: Option<String>,
    /// The agent's name.
    pub(crate) agent: String,
    /// Unix milliseconds.
    pub(crate) at: i64,
}

/// A turn began.
pub(crate) struct TurnStarted {
    pub(crate) id: String,
    pub(crate) input: String,
    /// The session's title, on its first turn (kept once set).
    pub(crate) title: Option<String>,
    pub(crate) owner: Option<String>,
    /// Unix milliseconds.
    pub(crate) at: i64,
}

/// A turn ended.
pub(crate) struct TurnEnded {
    pub(crate) id: String,
    pub(crate) memory: String,
    /// The session's usage totals (JSON), listed without reading the memory.
    pub(crate) usage: String,
    /// The agent the session talks to now (a handoff in the turn may have moved it).
    pub(crate) agent: String,
    pub(crate) owner: Option<String>,
    /// Unix milliseconds.
    pub(crate) at: i64,
}

/// An acknowledgement: who waits, and for which writes — every write sent before it
/// (`session: None`), or only those of one session. A session's own acknowledgement (its
/// creation or its turn's end stored) lets the writer commit that session's writes at once and
/// leave every other session's to the interval's commit: an urgent commit then writes a few
/// pages, not a page of every session streaming.
pub(crate) struct Ack {
    pub(crate) waiter: Acker,
    pub(crate) session: Option<Arc<str>>,
}

impl Ack {
    pub(super) fn done(self) {
        self.waiter.done();
    }
}

impl From<Acker> for Ack {
    /// An acknowledgement of every write sent before it.
    fn from(waiter: Acker) -> Ack {
        Ack {
            waiter,
            session: None,
        }
    }
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
            Op::Create(c) => Some(&c.id),
            Op::TurnStart(t) => Some(&t.id),
            Op::TurnEnd(t) => Some(&t.id),
            Op::Delete { id, .. } | Op::Claim { id } => Some(id),
            Op::Events { id, .. } => Some(id),
            Op::Ack(_) => None,
        }
    }

    /// How many events the op holds (a dropped op is counted by its events).
    pub(super) fn events(&self) -> u64 {
        match self {
            Op::Events { frames, .. } => frames.as_str().split('\n').count() as u64,
            _ => 0,
        }
    }

    /// What the op holds in memory while it waits, about.
    pub(super) fn size(&self) -> usize {
        64 + match self {
            Op::Create(c) => c.id.len() + c.token_hash.len() + c.settings.len(),
            Op::Events {
                frames: Frames::Short(s),
                ..
            } => s.len(),
            Op::Events {
                frames: Frames::One(f),
                ..
            } => f.len(),
            Op::TurnStart(t) => {
                t.id.len() + t.input.len() + t.title.as_ref().map_or(0, String::len)
            }
            Op::TurnEnd(t) => t.id.len() + t.memory.len() + t.usage.len(),
            Op::Delete { id, .. } | Op::Claim { id } => id.len(),
            Op::Ack(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_op_is_at_most_64_bytes() {
        assert!(std::mem::size_of::<super::Op>() <= 64);
    }
}
