//! A model read's streamed pieces, gathered as the store's stored lines (`store::line`, ~20
//! bytes a piece) by the session that makes them, while the frames are in this core's cache.
//! At the wake that sends them to the client (or before any other event) the block is settled:
//! the session's replay buffer keeps it and the store's writer appends it to the row as it is
//! (a store that keeps frames whole, Redis, reads it back into frames once). Per piece that
//! saves a channel send, a reference count the writer's thread would touch, and the frame's
//! ~200 bytes in the replay buffer.

use std::sync::Arc;

use crate::store::line::Encoder;

/// Pieces not yet settled.
#[derive(Default)]
pub(super) struct Pieces {
    /// Their stored lines, one a line (the buffer is kept for the next read until the run ends).
    lines: String,
    /// The first and the last piece's seq.
    first: u64,
    last: u64,
    encoder: Encoder,
}

impl Pieces {
    /// Gathers `frame`, the event `seq` of session `id`.
    pub(super) fn gather(&mut self, id: &str, seq: u64, frame: &str) {
        if self.lines.is_empty() {
            self.first = seq;
            self.encoder.restart();
        } else {
            self.lines.push('\n');
        }
        self.last = seq;
        self.encoder.push(&mut self.lines, frame, id, seq);
    }

    /// What was gathered — the first and last seq and their stored lines — if anything.
    pub(super) fn take(&mut self) -> Option<(u64, u64, Arc<str>)> {
        if self.lines.is_empty() {
            return None;
        }
        let block = Arc::from(self.lines.as_str());
        self.lines.clear();
        Some((self.first, self.last, block))
    }

    /// The run ended: the gathering buffer and the encoder's copy of the last line go (an idle
    /// session holds no spare room; the next run's first read allocates it again).
    pub(super) fn idle(&mut self) {
        debug_assert!(self.lines.is_empty(), "pieces settled before the run's end");
        *self = Pieces::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{batch::whole, line::piece};

    #[test]
    fn a_read_goes_as_its_stored_lines_and_reads_back_whole() {
        let id = "6f1c2c3e-0000-4000-8000-000000000001";
        let frames: Vec<String> = (3..9)
            .map(|seq| {
                piece(
                    id,
                    seq,
                    &format!("tok {seq}"),
                    &format!("2026-12-03T19:00:0{seq}.123Z"),
                )
            })
            .collect();
        let mut t = Pieces::default();
        assert!(t.take().is_none());
        for (i, f) in frames[..4].iter().enumerate() {
            t.gather(id, 3 + i as u64, f);
        }
        let Some((3, 6, block)) = t.take() else {
            panic!("a block of stored lines from seq 3 to 6");
        };
        assert!(
            block.len() * 3 < frames[..4].iter().map(String::len).sum::<usize>(),
            "{block}"
        );
        assert_eq!(whole(&block, id, 3), frames[..4].join("\n"));
        assert!(t.take().is_none());
        // The next read's block stands alone: its first line is not said against this one's.
        for (i, f) in frames[4..].iter().enumerate() {
            t.gather(id, 7 + i as u64, f);
        }
        let Some((7, 8, block)) = t.take() else {
            panic!("a second block from seq 7");
        };
        assert_eq!(whole(&block, id, 7), frames[4..].join("\n"));
        // Any frame, not only a streamed piece's, reads back as it was.
        t.gather(id, 9, "~{\"odd\":1}");
        t.gather(id, 10, "{\"plain\":2}");
        let Some((9, 10, block)) = t.take() else {
            panic!("a third block");
        };
        assert_eq!(whole(&block, id, 9), "~{\"odd\":1}\n{\"plain\":2}");
        t.idle();
    }
}
