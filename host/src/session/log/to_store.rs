//! A session's events on their way to the store: gathered while a model read streams, handed
//! to the store's writer as one op ([`crate::store::Store::events`]) with the wake that sends
//! them to the client; any other event goes at once, as it is, after what was gathered before
//! it. Per streamed piece that saves a channel send and the reference counts the writer's
//! thread would touch; the pieces are copied (one a line — frames are one-line JSON).

/// Events not yet handed to the store.
#[derive(Default)]
pub(super) struct ToStore {
    frames: String,
    /// The first gathered event's seq.
    first: u64,
    /// The size of the last hand-over: the next one starts with that much room (a model read
    /// is about as long as the one before), so it is not grown piece by piece — and a paced
    /// stream's one-piece reads, thousands a second waiting for the writer's tick, do not each
    /// hold a fixed block.
    room: usize,
}

impl ToStore {
    pub(super) fn gather(&mut self, seq: u64, frame: &str) {
        if self.frames.is_empty() {
            self.first = seq;
            self.frames.reserve(frame.len().max(self.room));
        } else {
            self.frames.push('\n');
        }
        self.frames.push_str(frame);
    }

    /// What was gathered, with the first event's seq; None when nothing was.
    pub(super) fn take(&mut self) -> Option<(u64, String)> {
        if self.frames.is_empty() {
            return None;
        }
        let frames = std::mem::take(&mut self.frames);
        self.room = frames.len() + frames.len() / 8;
        Some((self.first, frames))
    }

    /// The session was deleted from the store: what was gathered is not written.
    pub(super) fn discard(&mut self) {
        self.frames = String::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_frames_go_one_a_line_with_the_first_seq() {
        let mut t = ToStore::default();
        assert_eq!(t.take(), None);
        t.gather(7, "{\"a\":1}");
        t.gather(8, "{\"b\":2}");
        assert_eq!(t.take(), Some((7, "{\"a\":1}\n{\"b\":2}".to_owned())));
        assert_eq!(t.take(), None);
        t.gather(9, "{}");
        t.discard();
        assert_eq!(t.take(), None);
        // The next hand-over starts with the last one's room.
        t.gather(10, &"x".repeat(800));
        t.take();
        t.gather(11, "{}");
        assert!(t.frames.capacity() >= 900);
    }
}
