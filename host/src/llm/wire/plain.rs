//! The shape nearly every streamed token arrives in — one choice, `index` 0, whose `delta` holds
//! `content` as a plain string and nothing else that means anything — read by hand: keys are
//! compared as bytes and ignored values are stepped over, with no field matching per struct and
//! no `Vec` of choices. Every provider recorded so far sends its text tokens this way (in its own
//! key order, with its own extra scalar fields: `id`, `model`, `role`, `logprobs: null`,
//! `token_ids: null`, ...).
//!
//! Anything else is left to the full reader (`Chunk`): escapes in any string, tool calls,
//! reasoning, usage, an error, a `finish_reason`, several choices, a nested value under an
//! unknown key, a duplicate key, anything malformed. So a line this reader accepts means the same
//! as it does to `Chunk`; `sse::tests` checks that on provider-shaped lines and on every
//! one-byte change of them.

/// What a chunk of the plain shape says: `Some(text)` when its delta has `content` as a string,
/// `None` when it says nothing (`content` absent or `null`). The outer `None`: not this shape.
pub(in crate::llm) fn plain_text(data: &str) -> Option<Option<&str>> {
    let mut s = Scan { text: data, i: 0 };
    let (mut choices, mut seen) = (None, Seen::default());
    s.object(|s, key| match key {
        b"choices" => {
            seen.once(0)?;
            choices = Some(s.choices()?);
            Some(())
        }
        // Meaningful when present: only `null` (absent) is plain.
        b"usage" => seen.once(1).and_then(|_| s.null()),
        b"error" => seen.once(2).and_then(|_| s.null()),
        b"x_groq" => seen.once(3).and_then(|_| s.null()),
        _ => s.scalar(),
    })?;
    s.end()?;
    choices // a chunk without `choices` is an error: the full reader says so
}

/// The keys already read in one object (the full reader refuses a repeated field).
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn once(&mut self, bit: u8) -> Option<()> {
        let b = 1 << bit;
        (self.0 & b == 0).then(|| self.0 |= b)
    }
}

/// How many bytes come before the first `"`, `\\` or control character (all of `b` if none):
/// eight bytes a step, as serde_json's own reader does.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // The high bit of each byte that is zero; the lowest flagged byte is the first zero byte
    // (a borrow only runs upwards, so bytes below it are exact).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let found =
            zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below_space;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(b.len() - i)
}

struct Scan<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// `{"key": value, ...}`: `member` reads each key's value (and says no to a key or value
    /// that is not plain). An empty object is not plain.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.open(b'{')?;
        loop {
            let key = self.key()?;
            member(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.ws();
        let c = *self.bytes().get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn open(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// After a member: `true` at a comma, `false` at the closing byte.
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.next()? {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// Only whitespace may follow the object.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.bytes().len()).then_some(())
    }

    /// A string without escapes or control characters, as a slice of the line.
    fn string(&mut self) -> Option<&'a str> {
        self.open(b'"')?;
        let start = self.i;
        let len = plain_run(&self.bytes()[start..]);
        self.i = start + len;
        if self.bytes().get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        // The line is UTF-8 and `"` is ASCII: both ends are character boundaries.
        self.text.get(start..start + len)
    }

    /// An object key and its colon. An object's first key is read at its `{`: an empty object
    /// is not plain.
    fn key(&mut self) -> Option<&'a [u8]> {
        let k = self.string()?;
        self.open(b':')?;
        Some(k.as_bytes())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        let end = self.i + word.len();
        (self.bytes().get(self.i..end)? == word).then(|| self.i = end)
    }

    fn null(&mut self) -> Option<()> {
        self.literal(b"null")
    }

    /// A number by JSON's grammar, as its bytes.
    fn number(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        let digits = |s: &mut Self| {
            let n = s.bytes()[s.i..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            s.i += n;
            n
        };
        if self.bytes().get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.bytes().get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.bytes().get(self.i) == Some(&b'.') {
            self.i += 1;
            (digits(self) > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.bytes().get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.bytes().get(self.i) {
                self.i += 1;
            }
            (digits(self) > 0).then_some(())?;
        }
        Some(&self.bytes()[start..self.i])
    }

    /// A string, number, `true`, `false` or `null`, stepped over (an unknown field's value).
    fn scalar(&mut self) -> Option<()> {
        self.ws();
        match self.bytes().get(self.i)? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.null(),
            _ => self.number().map(drop),
        }
    }

    /// `[` one plain choice `]`.
    fn choices(&mut self) -> Option<Option<&'a str>> {
        self.open(b'[')?;
        let text = self.choice()?;
        self.open(b']')?;
        Some(text)
    }

    /// `{"index": 0, "delta": {...}, "finish_reason": null, ...}`.
    fn choice(&mut self) -> Option<Option<&'a str>> {
        let (mut text, mut delta, mut seen) = (None, false, Seen::default());
        self.object(|s, key| match key {
            b"index" => {
                seen.once(0)?;
                (s.number()? == b"0").then_some(())
            }
            b"delta" => {
                seen.once(1)?;
                text = s.delta()?;
                delta = true;
                Some(())
            }
            b"finish_reason" => seen.once(2).and_then(|_| s.null()),
            b"message" => None,
            _ => s.scalar(),
        })?;
        delta.then_some(text)
    }

    /// `{"content": "text", "role": "assistant", ...}`.
    fn delta(&mut self) -> Option<Option<&'a str>> {
        let (mut text, mut seen) = (None, Seen::default());
        self.object(|s, key| match key {
            b"content" => {
                seen.once(0)?;
                s.ws();
                text = match s.bytes().get(s.i)? {
                    b'n' => s.null().map(|_| None)?,
                    _ => Some(s.string()?),
                };
                Some(())
            }
            b"reasoning_content" => seen.once(1).and_then(|_| s.null()),
            b"reasoning" => seen.once(2).and_then(|_| s.null()),
            b"reasoning_details" => seen.once(3).and_then(|_| s.null()),
            b"tool_calls" => seen.once(4).and_then(|_| s.null()),
            _ => s.scalar(),
        })?;
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::plain_run;

    #[test]
    fn the_word_at_a_time_scan_stops_where_the_byte_scan_does() {
        let naive = |b: &[u8]| {
            b.iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(b.len())
        };
        let base = "abcdefghijklmnopqrstuvwxyz ☀é~!#".as_bytes();
        for len in 0..base.len() {
            let b = &base[..len];
            assert_eq!(plain_run(b), naive(b));
            for at in 0..len {
                for c in [
                    b'"', b'\\', 0, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xe2, b'!', b'#', b']',
                ] {
                    let mut v = b.to_vec();
                    v[at] = c;
                    assert_eq!(plain_run(&v), naive(&v), "{v:?}");
                }
            }
        }
    }
}
