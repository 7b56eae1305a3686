//! Shaping a batch of writes before a backend applies it: writes its own deletes undo are
//! dropped, and a session's consecutive events become one stored unit (an SQLite row, a Redis
//! stream entry) — a token stream writes a few of these a second, not one per token.

use std::collections::HashMap;
use std::sync::Arc;

use super::{line, Op};

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
/// frames, one a line (frames are one-line JSON).
pub(crate) struct Chunk {
    pub id: Arc<str>,
    pub first: u64,
    pub last: u64,
    pub frames: String,
}

impl Chunk {
    /// The events of a stored chunk, with their `seq`s (the lines found by `memchr`'s SIMD
    /// search: `str::split` was the writer's most sampled function).
    pub(super) fn events(first: u64, frames: &str) -> impl Iterator<Item = (u64, &str)> {
        let mut rest = Some(frames);
        let mut seq = first;
        std::iter::from_fn(move || {
            let r = rest?;
            let (line, after) = match memchr::memchr(b'\n', r.as_bytes()) {
                Some(at) => (&r[..at], Some(&r[at + 1..])),
                None => (r, None),
            };
            rest = after;
            seq += 1;
            Some((seq - 1, line))
        })
    }
}

/// The frames of `block` — stored lines of events `first`.. of session `id`, its first standing
/// alone — whole, one a line (what a store that keeps frames whole gets, one by one, from
/// [`each_frame`]).
#[cfg(test)]
pub(crate) fn whole(block: &str, id: &str, first: u64) -> String {
    let mut out = String::with_capacity(block.len() * 8);
    each_frame(block, id, first, |seq, frame| {
        if seq > first {
            out.push('\n');
        }
        out.push_str(frame);
    });
    out
}

/// Calls `f` with each frame of `block` (as [`whole`] reads it) and its seq, in order.
pub(crate) fn each_frame(block: &str, id: &str, first: u64, mut f: impl FnMut(u64, &str)) {
    let (mut reader, mut frame) = (line::Reader::default(), String::new());
    for (seq, line) in Chunk::events(first, block) {
        frame.clear();
        reader.frame_into(&mut frame, line, id, seq);
        f(seq, &frame);
    }
}

/// A stored chunk grows to about this many bytes, then the next event starts another: the
/// store drops old events a whole chunk at a time.
pub(crate) const CHUNK_BYTES: usize = 8 * 1024;

/// A batch's events gathered per session, in the order sessions first appear.
#[derive(Default)]
pub(crate) struct Chunks<'a> {
    list: Vec<Chunk>,
    /// Each chunk's line before, as [`super::line`] writes the next one against it.
    prev: Vec<line::Prev<'a>>,
    /// Every event of a batch looks its session up here: a fast hash (the keys are the host's
    /// own session ids; SipHash was ~3 % of the writer's time).
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
}

impl<'a> Chunks<'a> {
    /// Adds an event to its session's chunk as a [`super::line`] stored line (the SQLite
    /// store's rows). If it does not follow the chunk's last `seq` (an event dropped by the
    /// buffer bound), or the chunk holds [`CHUNK_BYTES`] already, the chunk gathered so far is
    /// returned, to be written first.
    pub(super) fn add(&mut self, id: &Arc<str>, seq: u64, frame: &'a str) -> Option<Chunk> {
        self.append(id, seq, frame.len(), |out, prev| {
            line::push(out, frame, id, seq, prev)
        })
    }

    /// As [`Chunks::add`], the frame kept whole (a store that keeps frames whole: Redis); it
    /// need not outlive the call.
    pub(super) fn add_whole(&mut self, id: &Arc<str>, seq: u64, frame: &str) -> Option<Chunk> {
        self.append(id, seq, frame.len(), |out, _| out.push_str(frame))
    }

    /// Appends an event, written by `write` (given the chunk's line before), to its session's
    /// chunk; see [`Chunks::add`].
    fn append(
        &mut self,
        id: &Arc<str>,
        seq: u64,
        len: usize,
        mut write: impl FnMut(&mut String, &mut line::Prev<'a>),
    ) -> Option<Chunk> {
        let mut start = |prev: &mut line::Prev<'a>| {
            // Room for a few frames: a chunk grows to CHUNK_BYTES by doubling from here.
            let mut frames = String::with_capacity(len.max(1024));
            write(&mut frames, prev);
            Chunk {
                id: id.clone(),
                first: seq,
                last: seq,
                frames,
            }
        };
        match self.index.get(id).copied() {
            Some(i) if self.list[i].last + 1 == seq && self.list[i].frames.len() < CHUNK_BYTES => {
                let c = &mut self.list[i];
                c.frames.push('\n');
                write(&mut c.frames, &mut self.prev[i]);
                c.last = seq;
                None
            }
            Some(i) => {
                let mut prev = None;
                let fresh = start(&mut prev);
                self.prev[i] = prev;
                Some(std::mem::replace(&mut self.list[i], fresh))
            }
            None => {
                let mut prev = None;
                let fresh = start(&mut prev);
                self.index.insert(id.clone(), self.list.len());
                self.list.push(fresh);
                self.prev.push(prev);
                None
            }
        }
    }

    /// Adds `block` — events `first`.. of session `id` as stored lines ([`super::Frames::Short`],
    /// its first line standing alone) — to the session's chunk, whole (a chunk may pass
    /// [`CHUNK_BYTES`] by a block). As [`Chunks::add`], returns the chunk gathered so far when
    /// the block does not follow it or it is full.
    pub(super) fn add_block(&mut self, id: &Arc<str>, first: u64, block: &str) -> Option<Chunk> {
        let last = first + memchr::memchr_iter(b'\n', block.as_bytes()).count() as u64;
        let start = || {
            let mut frames = String::with_capacity(block.len().max(1024));
            frames.push_str(block);
            Chunk {
                id: id.clone(),
                first,
                last,
                frames,
            }
        };
        match self.index.get(id).copied() {
            Some(i)
                if self.list[i].last + 1 == first && self.list[i].frames.len() < CHUNK_BYTES =>
            {
                let c = &mut self.list[i];
                if c.frames.is_empty() {
                    c.first = first; // its events were discarded
                } else {
                    c.frames.push('\n');
                }
                c.frames.push_str(block);
                c.last = last;
                // What follows is said against nothing before.
                self.prev[i] = None;
                None
            }
            Some(i) => {
                self.prev[i] = None;
                Some(std::mem::replace(&mut self.list[i], start()))
            }
            None => {
                self.index.insert(id.clone(), self.list.len());
                self.list.push(start());
                self.prev.push(None);
                None
            }
        }
    }

    /// A deleted session's gathered events are not written.
    pub(super) fn discard(&mut self, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.list[i].frames.clear();
            self.prev[i] = None;
        }
    }

    /// The chunks to write.
    pub(super) fn into_chunks(self) -> impl Iterator<Item = Chunk> {
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
    use super::super::Created;
    use super::*;

    #[test]
    fn a_chunks_events_are_its_lines_as_split_gives_them() {
        for frames in ["", "a", "a\n", "\n", "{\"x\":1}\n{\"y\":\"é\"}\n\nz"] {
            let ours: Vec<(u64, &str)> = Chunk::events(5, frames).collect();
            let split: Vec<(u64, &str)> = (5..).zip(frames.split('\n')).collect();
            assert_eq!(ours, split, "{frames:?}");
        }
    }

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
    fn a_session_made_and_closed_within_one_batch_costs_one_delete() {
        let ev = |id: &str, seq| Op::Events {
            id: Arc::from(id),
            first: seq,
            frames: super::super::Frames::One("{}".into()),
        };
        let mut batch = vec![
            Op::Create(Box::new(Created {
                id: "a".into(),
                token_hash: String::new(),
                settings: String::new(),
                client: String::new(),
                owner: None,
                agent: String::new(),
                at: 0,
            })),
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
