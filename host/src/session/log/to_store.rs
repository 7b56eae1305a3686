//! A session's events on their way to the store: gathered while a model read streams, handed
//! to the store's writer as one op ([`crate::store::Store::events`]) with the wake that sends
//! them to the client; any other event goes at once, as it is, after what was gathered before
//! it. Per streamed piece that saves a channel send and the reference counts the writer's
//! thread would touch. A read of one piece (a paced stream's) goes as the frame the session
//! holds; the pieces of a longer read are copied into one block (one a line — frames are
//! one-line JSON).

use tokio_tungstenite::tungstenite::Utf8Bytes;

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
}

impl ToStore {
    pub(super) fn gather(&mut self, seq: u64, frame: &Utf8Bytes) {
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
        Some((self.first, Frames::Lines(lines)))
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
    fn gathered_frames_go_one_a_line_with_the_first_seq() {
        let mut t = ToStore::default();
        assert_eq!(taken(&mut t), None);
        t.gather(7, &"{\"a\":1}".into());
        t.gather(8, &"{\"b\":2}".into());
        t.gather(9, &"{\"c\":3}".into());
        assert_eq!(
            taken(&mut t),
            Some((7, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}".to_owned()))
        );
        assert_eq!(taken(&mut t), None);
        // A lone piece goes as the frame itself, not a copy.
        t.gather(10, &"{}".into());
        assert!(matches!(t.take(), Some((10, Frames::One(f))) if f == "{}"));
        t.gather(11, &"{}".into());
        t.gather(12, &"{}".into());
        t.discard();
        assert_eq!(taken(&mut t), None);
        // The next block starts with the last one's room.
        t.gather(13, &"x".repeat(800).into());
        t.gather(14, &"y".into());
        t.take();
        t.gather(15, &"{}".into());
        t.gather(16, &"{}".into());
        assert!(t.lines.capacity() >= 900);
    }
}
