//! A session's replay buffer: the events a client that resumes may have missed. A model read's
//! streamed pieces are kept as one block of the store's stored lines (`store::line`, ~20 bytes
//! a piece instead of its ~200-byte frame: the frames themselves are freed once sent, so the
//! session's frame arena is reused rather than grown), read back into frames only when a
//! client resumes; every other event is kept as its frame.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::EVENT_OVERHEAD;
use crate::store::batch::each_frame;

/// What one kept block costs beyond its lines: the queue slot, the shared block's header and
/// allocator rounding.
const BLOCK_OVERHEAD: usize = 64;

/// One kept entry: an event's frame, or a model read's pieces.
pub(super) enum Kept {
    Frame(u64, Utf8Bytes),
    /// Events `first..=last`, stored lines (the first standing alone).
    Pieces {
        first: u64,
        last: u64,
        lines: Arc<str>,
    },
}

impl Kept {
    /// The bytes it counts for against the session's cap and the host's budget.
    pub(super) fn cost(&self) -> usize {
        match self {
            Kept::Frame(_, text) => text.len() + EVENT_OVERHEAD,
            Kept::Pieces { lines, .. } => lines.len() + BLOCK_OVERHEAD,
        }
    }

    fn first(&self) -> u64 {
        match self {
            Kept::Frame(seq, _) => *seq,
            Kept::Pieces { first, .. } => *first,
        }
    }
}

/// The kept events, oldest first, and their cost.
#[derive(Default)]
pub(super) struct Replay {
    kept: VecDeque<Kept>,
    bytes: usize,
}

impl Replay {
    /// Their cost ([`Kept::cost`]) together.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `kept` (newer than everything kept); returns its cost.
    pub(super) fn push(&mut self, kept: Kept) -> usize {
        let cost = kept.cost();
        self.bytes += cost;
        self.kept.push_back(kept);
        cost
    }

    /// Drops the oldest entry unless it is the only one; returns what it cost.
    pub(super) fn drop_oldest(&mut self) -> Option<usize> {
        if self.kept.len() < 2 {
            return None;
        }
        let cost = self.kept.pop_front()?.cost();
        self.bytes -= cost;
        Some(cost)
    }

    /// The oldest event kept.
    pub(super) fn first_seq(&self) -> Option<u64> {
        self.kept.front().map(Kept::first)
    }

    /// The frames of the events after `after` up to `upto`, in order, of session `id`; `live`
    /// is sent in place of the kept frame with its seq.
    pub(super) fn frames(
        &self,
        id: &str,
        after: u64,
        upto: u64,
        live: Option<&(u64, Utf8Bytes)>,
    ) -> Vec<Utf8Bytes> {
        let mut out = Vec::new();
        for kept in &self.kept {
            match kept {
                Kept::Frame(seq, _) | Kept::Pieces { last: seq, .. } if *seq <= after => {}
                Kept::Frame(seq, _) | Kept::Pieces { first: seq, .. } if *seq > upto => {}
                Kept::Frame(seq, text) => out.push(match live {
                    Some((at, frame)) if at == seq => frame.clone(),
                    _ => text.clone(),
                }),
                Kept::Pieces { first, lines, .. } => each_frame(lines, id, *first, |seq, f| {
                    if seq > after && seq <= upto {
                        out.push(Utf8Bytes::from(f.to_owned()));
                    }
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::line::{block, piece};

    #[test]
    fn pieces_kept_as_stored_lines_are_replayed_as_the_frames_they_were() {
        let id = "6f1c2c3e-0000-4000-8000-000000000002";
        let stamp = |seq: u64| format!("2026-12-04T01:00:{seq:02}.123Z");
        let pieces: Vec<String> = (2..7)
            .map(|seq| piece(id, seq, &format!("tok {seq} \"q\""), &stamp(seq)))
            .collect();
        let mut r = Replay::default();
        r.push(Kept::Frame(1, Utf8Bytes::from_static("{\"first\":1}")));
        let lines: Arc<str> = block(&pieces, id, 2).into();
        let cost = r.push(Kept::Pieces {
            first: 2,
            last: 6,
            lines: lines.clone(),
        });
        assert_eq!(cost, lines.len() + BLOCK_OVERHEAD);
        assert!(lines.len() * 3 < pieces.iter().map(String::len).sum::<usize>());
        r.push(Kept::Frame(7, Utf8Bytes::from_static("{\"last\":7}")));
        let all: Vec<String> = r
            .frames(id, 0, u64::MAX, None)
            .iter()
            .map(|f| f.to_string())
            .collect();
        let mut want = vec!["{\"first\":1}".to_owned()];
        want.extend(pieces.iter().cloned());
        want.push("{\"last\":7}".to_owned());
        assert_eq!(all, want);
        // From the middle of a block, up to a bound, and a live frame in place of a kept one.
        let some: Vec<String> = r
            .frames(id, 3, 5, None)
            .iter()
            .map(|f| f.to_string())
            .collect();
        assert_eq!(some, pieces[2..4]);
        let live = (7, Utf8Bytes::from_static("{\"live\":7}"));
        let end = r.frames(id, 6, u64::MAX, Some(&live));
        assert_eq!(end, vec![live.1.clone()]);
        // The oldest go first, never the last one; the cost follows.
        assert_eq!(r.first_seq(), Some(1));
        let before = r.bytes();
        assert!(r.drop_oldest().is_some());
        assert_eq!(r.first_seq(), Some(2));
        assert_eq!(r.drop_oldest(), Some(cost));
        assert_eq!(r.first_seq(), Some(7));
        assert_eq!(r.drop_oldest(), None);
        assert!(r.bytes() < before);
    }
}
