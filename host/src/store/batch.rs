//! Shaping a batch of writes before a backend applies it: writes its own deletes undo are
//! dropped, and a session's consecutive events become one stored unit (an SQLite row, a Redis
//! stream entry) — a token stream writes a few of these a second, not one per token.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::Op;

/// Drops the writes of a batch that its own deletes undo: a session made, used and closed
/// within one batch (a short conversation, a churning client) costs the store one delete.
pub(crate) fn coalesce(batch: &mut Vec<Op>) {
    let mut last_delete: HashMap<String, usize> = HashMap::new();
    for (i, op) in batch.iter().enumerate() {
        if let Op::Delete { id, .. } = op {
            last_delete.insert(id.clone(), i);
        }
    }
    if last_delete.is_empty() {
        return;
    }
    let mut i = 0;
    batch.retain(|op| {
        let keep = match op.session().and_then(|id| last_delete.get(id)) {
            Some(&d) => i >= d,
            None => true,
        };
        i += 1;
        keep
    });
}

/// A session's consecutive events of one batch, stored as one unit: the first `seq` and the
/// frames, one a line (frames are one-line JSON). Borrowed from the batch's op while it is one
/// block, copied once a second block joins it.
pub(crate) struct Chunk<'a> {
    pub id: Arc<str>,
    pub first: u64,
    pub last: u64,
    pub frames: Cow<'a, str>,
}

impl Chunk<'_> {
    /// The events of a stored chunk, with their `seq`s.
    pub(super) fn events(first: u64, frames: &str) -> impl Iterator<Item = (u64, &str)> {
        frames
            .split('\n')
            .enumerate()
            .map(move |(i, f)| (first + i as u64, f))
    }
}

/// A stored chunk grows to about this many bytes, then the next block starts another: the
/// store drops old events a whole chunk at a time.
pub(crate) const CHUNK_BYTES: usize = 8 * 1024;

/// A batch's events gathered per session, in the order sessions first appear.
#[derive(Default)]
pub(crate) struct Chunks<'a> {
    list: Vec<Chunk<'a>>,
    index: HashMap<Arc<str>, usize>,
}

impl<'a> Chunks<'a> {
    /// Adds a block of `count` events from `first` on to its session's chunk. If it does not
    /// follow the chunk's last `seq` (a block dropped by the buffer bound), or the chunk holds
    /// [`CHUNK_BYTES`] already, the chunk gathered so far is returned, to be written first.
    pub(super) fn add(
        &mut self,
        id: &Arc<str>,
        first: u64,
        count: u64,
        frames: &'a str,
    ) -> Option<Chunk<'a>> {
        let last = first + count.saturating_sub(1);
        let start = || Chunk {
            id: id.clone(),
            first,
            last,
            frames: Cow::Borrowed(frames),
        };
        match self.index.get(id).copied() {
            Some(i)
                if self.list[i].last + 1 == first && self.list[i].frames.len() < CHUNK_BYTES =>
            {
                let c = &mut self.list[i];
                let text = c.frames.to_mut();
                text.reserve(frames.len() + 1);
                text.push('\n');
                text.push_str(frames);
                c.last = last;
                None
            }
            Some(i) => Some(std::mem::replace(&mut self.list[i], start())),
            None => {
                self.index.insert(id.clone(), self.list.len());
                self.list.push(start());
                None
            }
        }
    }

    /// A deleted session's gathered events are not written.
    pub(super) fn discard(&mut self, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.list[i].frames = Cow::Borrowed("");
        }
    }

    /// The chunks to write.
    pub(super) fn into_chunks(self) -> impl Iterator<Item = Chunk<'a>> {
        self.list.into_iter().filter(|c| !c.frames.is_empty())
    }
}

/// `frames` without any `"resume_token":"…"` member (stores written before the token was kept
/// out of the log held it in `agent.session_created`); None when there is none.
pub(crate) fn strip_resume_tokens(frames: &str) -> Option<String> {
    const KEY: &str = "\"resume_token\":\"";
    if !frames.contains(KEY) {
        return None;
    }
    let mut out = String::with_capacity(frames.len());
    let mut rest = frames;
    while let Some(at) = rest.find(KEY) {
        let value = &rest[at + KEY.len()..];
        let Some(end) = value.find('"') else { break };
        let mut after = &value[end + 1..];
        let mut before = &rest[..at];
        // Take one comma with the member: the one after it, else the one before it.
        if let Some(a) = after.strip_prefix(',') {
            after = a;
        } else if let Some(b) = before.strip_suffix(',') {
            before = b;
        }
        out.push_str(before);
        rest = after;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_are_stripped_from_stored_frames() {
        let f = "{\"event\":\"agent.session_created\",\"resume_token\":\"abc\",\"agent\":{}}\n{\"x\":1,\"resume_token\":\"d\"}";
        assert_eq!(
            strip_resume_tokens(f).unwrap(),
            "{\"event\":\"agent.session_created\",\"agent\":{}}\n{\"x\":1}"
        );
        assert_eq!(strip_resume_tokens("{\"a\":1}"), None);
    }

    #[test]
    fn consecutive_blocks_join_one_chunk_until_it_is_full_or_a_block_is_missing() {
        let id: Arc<str> = Arc::from("s");
        let frame = "x".repeat(1000);
        let block = |n: usize| vec![frame.as_str(); n].join("\n");
        let (a, b, c) = (block(4), block(3), block(5));
        let mut chunks = Chunks::default();
        assert!(chunks.add(&id, 1, 4, &a).is_none());
        assert!(chunks.add(&id, 5, 3, &b).is_none(), "follows: joins");
        // 7 frames (~7 KiB) held: still below CHUNK_BYTES, so the next block joins too.
        assert!(chunks.add(&id, 8, 5, &c).is_none());
        // Now over CHUNK_BYTES: the next block starts a chunk and the full one is returned.
        let full = chunks.add(&id, 13, 4, &a).expect("full");
        assert_eq!((full.first, full.last), (1, 12));
        assert_eq!(Chunk::events(full.first, &full.frames).count(), 12);
        // A block that does not follow (one dropped by the bound) starts a chunk too.
        let before_gap = chunks.add(&id, 20, 3, &b).expect("gap");
        assert_eq!((before_gap.first, before_gap.last), (13, 16));
        let rest: Vec<_> = chunks.into_chunks().collect();
        assert_eq!((rest[0].first, rest[0].last), (20, 22));
        assert!(
            matches!(rest[0].frames, Cow::Borrowed(_)),
            "one block: not copied"
        );
    }

    #[test]
    fn a_session_made_and_closed_within_one_batch_costs_one_delete() {
        let ev = |id: &str, seq| Op::Events {
            id: Arc::from(id),
            first: seq,
            count: 1,
            frames: "{}".into(),
        };
        let mut batch = vec![
            Op::Create {
                id: "a".into(),
                token_hash: String::new(),
                settings: String::new(),
                client: String::new(),
                owner: None,
                agent: String::new(),
                at: 0,
            },
            ev("a", 1),
            ev("b", 7),
            Op::Delete {
                id: "a".into(),
                owner: None,
            },
            ev("b", 8),
        ];
        coalesce(&mut batch);
        let kinds: Vec<String> = batch
            .iter()
            .map(|op| match op {
                Op::Delete { id, .. } => format!("delete {id}"),
                Op::Events { id, first, .. } => format!("event {id} {first}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(kinds, ["event b 7", "delete a", "event b 8"]);
    }
}
