//! How an event becomes a frame: its JSON object, then what its context adds — `session_id`,
//! `seq`, `timestamp` — written straight after the event's own fields.

use bytes::BytesMut;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{AnswerMeta, ServerEvent, ARENA_BLOCK, ARENA_MIN_ROOM};
use crate::time::Timestamp;

impl ServerEvent {
    /// A connection-level frame (no session).
    pub fn frame(&self) -> Utf8Bytes {
        self.encode(None, None)
    }

    /// A frame about `session_id` outside the session's numbered log (an error answering a
    /// client message, a resume header, a close); `None` for an error about no session.
    pub fn frame_about(&self, session_id: Option<&str>) -> Utf8Bytes {
        self.encode(Some(session_id), None)
    }

    /// A frame in a session's numbered log.
    pub fn frame_in_session(&self, session_id: &str, seq: u64) -> Utf8Bytes {
        self.encode(Some(Some(session_id)), Some(seq))
    }

    /// The event's JSON object with what its context adds appended — `session_id` (absent for
    /// connection events, `null` for an error about no particular session), `seq`, `timestamp`
    /// — in that order, written straight after the event's own fields (a `#[serde(flatten)]`
    /// wrapper would produce the same bytes through serde's slower map path).
    pub(super) fn encode(&self, session_id: Option<Option<&str>>, seq: Option<u64>) -> Utf8Bytes {
        let mut out = BytesMut::with_capacity(192);
        self.encode_into(&mut out, session_id, seq);
        // SAFETY: `encode_into` writes JSON text only — serde_json's output of valid strings,
        // and ASCII — so the bytes are UTF-8.
        unsafe { Utf8Bytes::from_bytes_unchecked(out.freeze()) }
    }

    /// [`ServerEvent::frame_in_session`] written at the end of `arena` and split off it: frames
    /// encoded one after another share the arena's block (one allocation for many frames, and
    /// clones — replay, the client's queue, the store — count references, with no allocation).
    pub fn frame_in_arena(&self, arena: &mut BytesMut, session_id: &str, seq: u64) -> Utf8Bytes {
        // Every frame is split off, so what the arena holds is all room.
        if arena.capacity() < ARENA_MIN_ROOM {
            arena.reserve(ARENA_BLOCK);
        }
        self.encode_into(arena, Some(Some(session_id)), Some(seq));
        // SAFETY: as in `encode`: only JSON text was written after the arena's (empty) start.
        unsafe { Utf8Bytes::from_bytes_unchecked(arena.split().freeze()) }
    }

    /// Appends the event's JSON object to `out` (see [`ServerEvent::encode`]).
    fn encode_into(&self, out: &mut BytesMut, session_id: Option<Option<&str>>, seq: Option<u64>) {
        self.open_into(out);
        if let Some(sid) = session_id {
            out.extend_from_slice(b",\"session_id\":");
            match sid {
                Some(s) => string_into(out, s),
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(seq) = seq {
            out.extend_from_slice(b",\"seq\":");
            out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(Timestamp::now().as_str().as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

impl ServerEvent {
    /// Appends the event's own fields as a JSON object without its closing brace. A streamed
    /// answer piece — most of what a host sends — is written by hand, in the bytes serde
    /// writes for it (`tests::a_hand_written_piece_is_what_serde_writes`); every other event
    /// through serde.
    fn open_into(&self, out: &mut BytesMut) {
        if let ServerEvent::PartialAnswer {
            content,
            metadata: AnswerMeta { step, reset: false },
        } = self
        {
            out.extend_from_slice(b"{\"event\":\"agent.partial_answer\",\"content\":");
            string_into(out, content);
            out.extend_from_slice(b",\"metadata\":{\"step\":");
            out.extend_from_slice(itoa::Buffer::new().format(*step).as_bytes());
            out.extend_from_slice(b"}");
            return;
        }
        let start = out.len();
        // Serializing strings, numbers and `Value`s into memory cannot fail.
        let _ = serde_json::to_writer(Append(out), self);
        debug_assert_eq!(out.last(), Some(&b'}'));
        if out.len() > start {
            out.truncate(out.len() - 1);
        }
    }
}

/// Appends `s` as a JSON string.
fn string_into(out: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(Append(out), s);
}

/// Writes append to the buffer (serde_json writes a frame in many small pieces: straight
/// `extend_from_slice`s, without `BufMut`'s generic writer in between).
struct Append<'a>(&'a mut BytesMut);

impl std::io::Write for Append<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_piece_is_what_serde_writes() {
        for content in [
            "",
            "plain",
            "a \"quote\" \\ and\nnew\tline \u{1} é 🙂 </script>",
        ] {
            for step in [0, 1, 7, u32::MAX] {
                let piece = ServerEvent::PartialAnswer {
                    content: content.to_owned(),
                    metadata: AnswerMeta { step, reset: false },
                };
                let mut by_hand = BytesMut::new();
                piece.open_into(&mut by_hand);
                let mut by_serde = serde_json::to_vec(&piece).unwrap();
                by_serde.pop();
                assert_eq!(by_hand.as_ref(), by_serde.as_slice(), "{content:?} {step}");
            }
        }
        // A reset goes through serde, with its flag.
        let reset = ServerEvent::PartialAnswer {
            content: String::new(),
            metadata: AnswerMeta {
                step: 2,
                reset: true,
            },
        };
        let frame = reset.frame_in_session("s", 3);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["metadata"]["reset"], true);
        assert_eq!(
            (v["session_id"].as_str(), v["seq"].as_u64()),
            (Some("s"), Some(3))
        );
    }
}
