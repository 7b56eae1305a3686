//! A session's events on their way to the store: gathered while a model read streams, handed
//! to the store's writer as one op ([`crate::store::Store::events`]) with the wake that sends
//! them to the client; any other event goes at once, as it is, after what was gathered before
//! it. Per streamed piece that saves a channel send and the reference counts the writer's
//! thread would touch. For the SQLite store the pieces are written as its stored lines here
//! (`store::line::Encoder`), while they are in this core's cache: ~20 bytes a piece, appended by
//! the writer as they are. For a store that keeps frames whole (Redis), a read of one piece (a
//! paced stream's) goes as the frame the session holds, and the pieces of a longer read are
//! copied into one block (one a line — frames are one-line JSON).

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::store::line::Encoder;
use crate::store::Frames;

/// Events not yet handed to the store.
#[derive(Default)]
pub(super) struct ToStore {
    /// The read's first piece, until a second one comes.
    one: Option<Utf8Bytes>,
    /// The read's pieces, from the second on.
    lines: String,
    /// The first gathered event's seq.
    first: u64,
    /// The size of the last block handed over: the next one starts with that much room (a
    /// model read is about as long as the one before), so it is not grown piece by piece.
    room: usize,
    /// Set when the store keeps stored lines: `lines` holds them, not frames.
    encoder: Option<Box<Encoder>>,
}

impl ToStore {
    /// For a store that takes events as stored lines when `lines` (see the module).
    pub(super) fn new(lines: bool) -> ToStore {
        ToStore {
            encoder: lines.then(Box::default),
            ..ToStore::default()
        }
    }

    /// Gathers `frame`, the event `seq` of session `id`.
    pub(super) fn gather(&mut self, id: &str, seq: u64, frame: &Utf8Bytes) {
        if let Some(encoder) = &mut self.encoder {
            if self.lines.is_empty() {
                self.first = seq;
                self.lines.reserve(self.room);
                encoder.restart();
            } else {
                self.lines.push('\n');
            }
            encoder.push(&mut self.lines, frame, id, seq);
            return;
        }
        if let Some(one) = self.one.take() {
            self.lines
                .reserve((one.len() + 1 + frame.len()).max(self.room));
            self.lines.push_str(&one);
        } else if self.lines.is_empty() {
            self.first = seq;
            self.one = Some(frame.clone());
            return;
        }
        self.lines.push('\n');
        self.lines.push_str(frame);
    }

    /// What was gathered, with the first event's seq; None when nothing was.
    pub(super) fn take(&mut self) -> Option<(u64, Frames)> {
        if let Some(one) = self.one.take() {
            return Some((self.first, Frames::One(one)));
        }
        if self.lines.is_empty() {
            return None;
        }
        let lines = std::mem::take(&mut self.lines);
        self.room = lines.len() + lines.len() / 8;
        if self.encoder.is_some() {
            return Some((self.first, Frames::Short(lines)));
        }
        Some((self.first, Frames::Lines(lines)))
    }

    /// The run ended: the encoder's copy of the last line goes (an idle session holds no spare
    /// room; the next run's first read allocates it again).
    pub(super) fn idle(&mut self) {
        if let Some(encoder) = &mut self.encoder {
            **encoder = Encoder::default();
        }
    }

    /// The session was deleted from the store: what was gathered is not written.
    pub(super) fn discard(&mut self) {
        self.one = None;
        self.lines = String::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(t: &mut ToStore) -> Option<(u64, String)> {
        t.take().map(|(first, f)| (first, f.as_str().to_owned()))
    }

    #[test]
    fn for_a_store_of_stored_lines_a_read_goes_as_its_lines_and_reads_back_whole() {
        use crate::store::{batch::whole, line::piece};
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
        let mut t = ToStore::new(true);
        for (i, f) in frames[..4].iter().enumerate() {
            t.gather(id, 3 + i as u64, &f.as_str().into());
        }
        let Some((3, Frames::Short(block))) = t.take() else {
            panic!("a block of stored lines from seq 3");
        };
        assert!(
            block.len() * 3 < frames[..4].iter().map(String::len).sum::<usize>(),
            "{block}"
        );
        assert_eq!(whole(&block, id, 3), frames[..4].join("\n"));
        // The next read's block stands alone: its first line is not said against this one's.
        for (i, f) in frames[4..].iter().enumerate() {
            t.gather(id, 7 + i as u64, &f.as_str().into());
        }
        let Some((7, Frames::Short(block))) = t.take() else {
            panic!("a second block from seq 7");
        };
        assert_eq!(whole(&block, id, 7), frames[4..].join("\n"));
    }

    #[test]
    fn gathered_frames_go_one_a_line_with_the_first_seq() {
        let mut t = ToStore::new(false);
        assert_eq!(taken(&mut t), None);
        t.gather("s", 7, &"{\"a\":1}".into());
        t.gather("s", 8, &"{\"b\":2}".into());
        t.gather("s", 9, &"{\"c\":3}".into());
        assert_eq!(
            taken(&mut t),
            Some((7, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}".to_owned()))
        );
        assert_eq!(taken(&mut t), None);
        // A lone piece goes as the frame itself, not a copy.
        t.gather("s", 10, &"{}".into());
        assert!(matches!(t.take(), Some((10, Frames::One(f))) if f == "{}"));
        t.gather("s", 11, &"{}".into());
        t.gather("s", 12, &"{}".into());
        t.discard();
        assert_eq!(taken(&mut t), None);
        // The next block starts with the last one's room.
        t.gather("s", 13, &"x".repeat(800).into());
        t.gather("s", 14, &"y".into());
        t.take();
        t.gather("s", 15, &"{}".into());
        t.gather("s", 16, &"{}".into());
        assert!(t.lines.capacity() >= 900);
    }
}
