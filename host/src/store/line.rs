//! How the SQLite store keeps the events of a chunk (a session's consecutive events, one row):
//! one line each, in one of four forms.
//!
//! - `~` + timestamp + head: a frame whose tail is exactly what the row rebuilds —
//!   `,"session_id":"…","seq":N,"timestamp":"…"}`, ~100 of a streamed piece's ~200 bytes — is
//!   kept without it (the head starts with `{`, which a timestamp never holds).
//! - `^P,S,T,L|` + timestamp rest + head middle: the same, said against the line before (a
//!   streamed piece differs from the one before in its content and the end of its timestamp):
//!   the head is the previous head's first P bytes, the middle, and its last S bytes; the
//!   timestamp the previous one's first T bytes and the next L bytes of the line. Written only
//!   when shorter, only after a line of these two forms in the same chunk.
//! - `~~` + frame: a frame that itself starts with `~` or `^`.
//! - the frame itself, as every other frame (they start with `{`).
//!
//! Only what the row or the line before says exactly is left out, so reading (in order, with a
//! [`Reader`]) gives back the same bytes for every frame.

use std::borrow::Cow;

const SESSION: &str = ",\"session_id\":\"";
const SEQ: &str = "\",\"seq\":";
const TIMESTAMP: &str = ",\"timestamp\":\"";
const END: &str = "\"}";
/// Marks a line whose tail was left out (no JSON text starts with it).
const SHORT: char = '~';
/// Marks a line said against the one before.
const DITTO: char = '^';
/// Marks a whole frame that starts with one of the marks.
const ESCAPED: &str = "~~";

/// What the chunk's line before said — its frame's head and timestamp — when it was left
/// short; None at a chunk's start and after a whole frame.
pub(crate) type Prev<'a> = Option<(&'a str, &'a str)>;

/// Appends `frame`, the event `seq` of session `id`, to `out` as a stored line; `prev` is the
/// chunk's line before (and becomes this one).
pub(crate) fn push<'a>(out: &mut String, frame: &'a str, id: &str, seq: u64, prev: &mut Prev<'a>) {
    *prev = put(out, frame, id, seq, *prev);
}

/// Appends `frame`'s stored line to `out`, said against `prev` when that is shorter; returns
/// what the next line may be said against.
fn put<'a>(out: &mut String, frame: &'a str, id: &str, seq: u64, prev: Prev<'_>) -> Prev<'a> {
    let Some((head, ts)) = split(frame, id, seq) else {
        if frame.starts_with([SHORT, DITTO]) {
            out.push_str(ESCAPED);
        }
        out.push_str(frame);
        return None;
    };
    if !prev.is_some_and(|(h0, t0)| ditto(out, h0, t0, head, ts)) {
        out.push(SHORT);
        out.push_str(ts);
        out.push_str(head);
    }
    Some((head, ts))
}

/// Stored lines written where the frames are made — a session's model read, on the session's
/// own thread, while its frames are in that core's cache — rather than by the store's writer:
/// the writer receives a tenth of the bytes and appends them. The line before is kept as a copy,
/// so no frame need outlive the call.
#[derive(Default)]
pub(crate) struct Encoder {
    head: String,
    ts: String,
    /// `head` and `ts` are the line before's (else the next line stands alone).
    held: bool,
}

impl Encoder {
    /// Appends `frame`, the event `seq` of session `id`, to `out` as a stored line.
    pub(crate) fn push(&mut self, out: &mut String, frame: &str, id: &str, seq: u64) {
        let prev = self.held.then_some((self.head.as_str(), self.ts.as_str()));
        let next = put(out, frame, id, seq, prev);
        self.held = next.is_some_and(|(head, ts)| {
            self.head.clear();
            self.head.push_str(head);
            self.ts.clear();
            self.ts.push_str(ts);
            true
        });
    }

    /// The next line stands alone (it starts a block: a block may start a stored row).
    pub(crate) fn restart(&mut self) {
        self.held = false;
    }
}

/// The frame's head and timestamp, when its tail is exactly what [`Reader`] writes back.
fn split<'a>(frame: &'a str, id: &str, seq: u64) -> Option<(&'a str, &'a str)> {
    let body = frame.strip_suffix(END)?;
    // A timestamp holds no quote: the last one opens it.
    let at = memchr::memrchr(b'"', body.as_bytes())? + 1;
    let ts = &body[at..];
    // Read back, the timestamp ends at the head's first `{`; and `~~` marks a whole frame.
    if ts.is_empty() || ts.starts_with(SHORT) || memchr::memchr(b'{', ts.as_bytes()).is_some() {
        return None;
    }
    let mut digits = itoa::Buffer::new();
    let head = body[..at]
        .strip_suffix(TIMESTAMP)?
        .strip_suffix(digits.format(seq))?
        .strip_suffix(SEQ)?
        .strip_suffix(id)?
        .strip_suffix(SESSION)?;
    head.starts_with('{').then_some((head, ts))
}

/// Writes `head` and `ts` against the line before's (`h0`, `t0`) when that is shorter than
/// the `~` form; says whether it did.
fn ditto(out: &mut String, h0: &str, t0: &str, head: &str, ts: &str) -> bool {
    let p = shared_prefix(h0, head);
    let s = shared_suffix(&h0[p..], &head[p..]);
    let t = shared_prefix(t0, ts);
    let (rest, middle) = (&ts[t..], &head[p..head.len() - s]);
    // `^P,S,T,L|` assembled on the stack, written with one copy.
    let mut header = [0u8; 1 + 4 * 21];
    header[0] = DITTO as u8;
    let mut at = 1;
    for (i, n) in [p, s, t, rest.len()].into_iter().enumerate() {
        let mut digits = itoa::Buffer::new();
        let d = digits.format(n).as_bytes();
        header[at..at + d.len()].copy_from_slice(d);
        header[at + d.len()] = if i == 3 { b'|' } else { b',' };
        at += d.len() + 1;
    }
    if at + rest.len() + middle.len() >= 1 + ts.len() + head.len() {
        return false;
    }
    // SAFETY: only the ASCII mark, digits, `,` and `|` were written.
    out.push_str(unsafe { std::str::from_utf8_unchecked(&header[..at]) });
    out.push_str(rest);
    out.push_str(middle);
    true
}

/// Bytes `a` and `b` start with alike, at a character boundary of both.
fn shared_prefix(a: &str, b: &str) -> usize {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let len = x.len().min(y.len());
    let mut n = 0;
    // Eight bytes at a time: the first differing byte is the lowest set byte of the XOR.
    while n + 8 <= len {
        let diff = word(&x[n..]) ^ word(&y[n..]);
        if diff != 0 {
            n += diff.trailing_zeros() as usize / 8;
            break;
        }
        n += 8;
    }
    if n + 8 > len {
        while n < len && x[n] == y[n] {
            n += 1;
        }
    }
    while !(a.is_char_boundary(n) && b.is_char_boundary(n)) {
        n -= 1;
    }
    n
}

/// Bytes `a` and `b` end with alike, at a character boundary of both.
fn shared_suffix(a: &str, b: &str) -> usize {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let len = x.len().min(y.len());
    let mut n = 0;
    // Eight bytes at a time from the end: the last differing byte is the highest of the XOR.
    while n + 8 <= len {
        let diff = word(&x[x.len() - n - 8..]) ^ word(&y[y.len() - n - 8..]);
        if diff != 0 {
            n += diff.leading_zeros() as usize / 8;
            break;
        }
        n += 8;
    }
    if n + 8 > len {
        while n < len && x[x.len() - n - 1] == y[y.len() - n - 1] {
            n += 1;
        }
    }
    while !(a.is_char_boundary(a.len() - n) && b.is_char_boundary(b.len() - n)) {
        n -= 1;
    }
    n
}

/// The first eight bytes of `b` as a little-endian word.
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Reads a chunk's lines, in order (a line may be said against the one before).
#[derive(Default)]
pub(crate) struct Reader {
    head: String,
    ts: String,
    /// `head` and `ts` are the line before's.
    held: bool,
}

impl Reader {
    /// The frame a stored line holds (event `seq` of session `id`). A line `push` did not
    /// write is given back as it is (the client sees what was stored).
    pub(crate) fn frame<'a>(&mut self, line: &'a str, id: &str, seq: u64) -> Cow<'a, str> {
        match self.read(line) {
            Some(whole) => Cow::Borrowed(whole),
            None => {
                let mut out = String::new();
                self.rebuild_into(&mut out, id, seq);
                Cow::Owned(out)
            }
        }
    }

    /// [`Reader::frame`], appended to `out` (no allocation of its own).
    pub(crate) fn frame_into(&mut self, out: &mut String, line: &str, id: &str, seq: u64) {
        match self.read(line) {
            Some(whole) => out.push_str(whole),
            None => self.rebuild_into(out, id, seq),
        }
    }

    /// Reads `line`: the frame it holds when that is written whole, else None (the line's head
    /// and timestamp are then this reader's).
    fn read<'a>(&mut self, line: &'a str) -> Option<&'a str> {
        let held = if let Some(whole) = line.strip_prefix(ESCAPED) {
            self.held = false;
            return Some(whole);
        } else if let Some(short) = line.strip_prefix(SHORT) {
            short.find('{').is_some_and(|at| {
                let (ts, head) = short.split_at(at);
                self.head.clear();
                self.head.push_str(head);
                self.ts.clear();
                self.ts.push_str(ts);
                true
            })
        } else if let Some(d) = line.strip_prefix(DITTO) {
            self.held && self.follow(d)
        } else {
            false
        };
        self.held = held;
        (!held).then_some(line)
    }

    /// Appends the frame of the head and timestamp held.
    fn rebuild_into(&self, out: &mut String, id: &str, seq: u64) {
        let mut digits = itoa::Buffer::new();
        let seq = digits.format(seq);
        let parts = [
            self.head.as_str(),
            SESSION,
            id,
            SEQ,
            seq,
            TIMESTAMP,
            &self.ts,
            END,
        ];
        out.reserve(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            out.push_str(part);
        }
    }

    /// Applies a `^` line's body to the line before's head and timestamp (in place).
    fn follow(&mut self, d: &str) -> bool {
        let Some((nums, rest)) = d.split_once('|') else {
            return false;
        };
        let mut n = nums.split(',').map(|x| x.parse::<usize>().ok());
        let (Some(Some(p)), Some(Some(s)), Some(Some(t)), Some(Some(l)), None) =
            (n.next(), n.next(), n.next(), n.next(), n.next())
        else {
            return false;
        };
        let cut = self.head.len().checked_sub(s).filter(|&at| at >= p);
        let (Some(cut), Some(ts_rest), Some(middle)) = (cut, rest.get(..l), rest.get(l..)) else {
            return false;
        };
        // `is_char_boundary` is false past the end, as `get` would be None.
        let fits = self.head.is_char_boundary(p)
            && self.head.is_char_boundary(cut)
            && self.ts.is_char_boundary(t);
        if !fits {
            return false;
        }
        self.head.replace_range(p..cut, middle);
        self.ts.truncate(t);
        self.ts.push_str(ts_rest);
        true
    }
}

/// The block a session hands over for `frames`, events `first`.. of session `id` (a model
/// read's, as the session's `Pieces` gathers them: the first line stands alone), for the tests and the
/// store's benchmark.
#[cfg(test)]
pub(crate) fn block<S: AsRef<str>>(frames: &[S], id: &str, first: u64) -> String {
    let (mut encoder, mut out) = (Encoder::default(), String::new());
    for (seq, frame) in (first..).zip(frames) {
        if seq > first {
            out.push('\n');
        }
        encoder.push(&mut out, frame.as_ref(), id, seq);
    }
    out
}

/// A streamed piece's frame as the session's encoder writes it (its fields in its order), for
/// the tests and the store's benchmark.
#[cfg(test)]
pub(crate) fn piece(id: &str, seq: u64, content: &str, timestamp: &str) -> String {
    #[derive(serde::Serialize)]
    struct Step {
        step: u32,
    }
    #[derive(serde::Serialize)]
    struct Piece<'a> {
        event: &'a str,
        content: &'a str,
        metadata: Step,
        session_id: &'a str,
        seq: u64,
        timestamp: &'a str,
    }
    let p = Piece {
        event: "agent.partial_answer",
        content,
        metadata: Step { step: 1 },
        session_id: id,
        seq,
        timestamp,
    };
    serde_json::to_string(&p).unwrap_or_default()
}

#[cfg(test)]
mod tests;
