//! The fast path for the bulk of a run: a piece of the answer while its text message is open
//! becomes its TEXT_MESSAGE_CONTENT frame straight from the session's encoded event — a typed,
//! borrowing parse and a typed write instead of a `Value` round trip — with the very bytes the
//! general path ([`Run::on`]) makes for it (serde writes these fields in the sorted order a
//! `Value` map has), so a reconnect's replay, whichever path it takes, sends the same frames.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{FrameId, Run, LAST};
use crate::server::sse;
use crate::time::{unix_millis, Timestamp};

#[derive(Deserialize)]
struct Piece<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    metadata: PieceMeta,
    seq: u64,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PieceMeta {
    #[serde(default)]
    reset: bool,
}

/// TEXT_MESSAGE_CONTENT, its fields in the order a `serde_json::Value` map writes them.
#[derive(Serialize)]
struct Delta<'a> {
    delta: &'a str,
    #[serde(rename = "messageId")]
    message_id: &'a str,
    timestamp: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl Run {
    /// Writes `frame`'s TEXT_MESSAGE_CONTENT (unless its id is not after `after`) when it is a
    /// piece of the answer continuing the open text message; false (nothing done) otherwise.
    pub(crate) fn answer_piece(
        &mut self,
        frame: &str,
        batch: &mut impl bytes::BufMut,
        after: Option<FrameId>,
    ) -> bool {
        // The engine writes an event's name first: a cheap, exact test of the kind.
        if self.ended
            || self.reasoning.is_some()
            || !frame.starts_with("{\"event\":\"agent.partial_answer\"")
        {
            return false;
        }
        let Some(id) = self.text.as_deref() else {
            return false;
        };
        let Ok(p) = serde_json::from_str::<Piece>(frame) else {
            return false;
        };
        if p.event != "agent.partial_answer" || p.metadata.reset || p.content.is_empty() {
            return false;
        }
        let ts = Timestamp::parse_millis(&p.timestamp).unwrap_or_else(unix_millis);
        self.unsettled.push_str(&p.content);
        let fid = FrameId {
            seq: p.seq,
            part: LAST,
        };
        if after.is_none_or(|a| fid > a) {
            let delta = Delta {
                delta: &p.content,
                message_id: id,
                timestamp: ts,
                kind: "TEXT_MESSAGE_CONTENT",
            };
            sse::write_event(batch, Some(fid), &delta);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{encoded, framed, piece};
    use super::*;

    #[test]
    fn the_fast_path_writes_what_the_general_path_writes() {
        let mut general = Run::new("t", "r", vec![], 300);
        let mut fast = Run::new("t", "r", vec![], 300);
        let open = framed(3, &piece("Hel", false));
        general.on(&open);
        fast.on(&open);
        let next = encoded(4, &piece("lo \"world\"\n", false));
        let mut want = Vec::new();
        for f in general.on(&serde_json::from_str(&next).unwrap()) {
            want.extend_from_slice(format!("id: {}\ndata: {}\n\n", f.id, f.event).as_bytes());
        }
        let mut got = Vec::new();
        assert!(fast.answer_piece(&next, &mut got, None));
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
        // Not a continuing piece: the general path's.
        let reset = encoded(5, &piece("", true));
        assert!(!fast.answer_piece(&reset, &mut Vec::new(), None));
        let fresh = &mut Run::new("t", "r", vec![], 300);
        assert!(!fresh.answer_piece(&next, &mut Vec::new(), None));
    }

    #[test]
    fn pieces_taken_by_the_fast_path_are_part_of_the_message() {
        let mut r = Run::new("t", "r", vec![], 300);
        r.on(&framed(3, &piece("Hel", false)));
        assert!(r.answer_piece(&encoded(4, &piece("lo", false)), &mut Vec::new(), None));
        // The final answer is what was streamed: nothing more to send for it.
        let end = r.on(&framed(5, &super::super::tests::answer("Hello")));
        let kinds: Vec<&str> = end
            .iter()
            .filter_map(|f| f.event["type"].as_str())
            .collect();
        assert_eq!(kinds, ["TEXT_MESSAGE_END"]);
        assert_eq!(r.made[0]["content"], "Hello");
    }
}
