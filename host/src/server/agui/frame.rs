//! Where a frame stands: every AG-UI frame's SSE `id` is the `seq` of the session event it
//! comes from (`seq.k` for all but the last of several frames one event makes), so that a
//! `Last-Event-ID` says exactly which frames a client has.

use serde_json::Value;

/// Where a frame stands in the session's log: the event's `seq`, and which of its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FrameId {
    pub seq: u64,
    /// The frame's place among its event's frames; [`LAST`] for the last one.
    pub part: u32,
}

/// The `part` of an event's last frame (its id is the bare `seq`).
pub(crate) const LAST: u32 = u32::MAX;

impl FrameId {
    /// `12` or `12.3` (a `Last-Event-ID`); None if it is neither.
    pub(crate) fn parse(s: &str) -> Option<FrameId> {
        let (seq, part) = match s.trim().split_once('.') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => (s.trim().parse().ok()?, LAST),
        };
        Some(FrameId { seq, part })
    }
}

impl std::fmt::Display for FrameId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.part == LAST {
            write!(f, "{}", self.seq)
        } else {
            write!(f, "{}.{}", self.seq, self.part)
        }
    }
}

/// One AG-UI event and its frame id.
pub(crate) struct Frame {
    pub id: FrameId,
    pub event: Value,
}
