//! How the SQLite store keeps one event of a chunk: a frame's tail that its row already says —
//! `,"session_id":"…","seq":N,"timestamp":"…"}`, ~100 of a streamed piece's ~200 bytes — is
//! left out and written back on reading. A stored line is either the frame itself (it starts
//! with `{`, as every frame does) or `~`, the timestamp, and the frame up to its tail (the head
//! starts with `{`, which a timestamp never holds); a frame that would start with `~` is kept
//! behind one more (`~~`). Only a tail that is exactly what the row rebuilds is left out, so
//! reading gives back the same bytes for every frame.

use std::borrow::Cow;

const SESSION: &str = ",\"session_id\":\"";
const SEQ: &str = "\",\"seq\":";
const TIMESTAMP: &str = ",\"timestamp\":\"";
const END: &str = "\"}";
/// Marks a line whose tail was left out (no JSON text starts with it).
const SHORT: char = '~';

/// Appends `frame`, the event `seq` of session `id`, to `out` as a stored line.
pub(crate) fn push(out: &mut String, frame: &str, id: &str, seq: u64) {
    match split(frame, id, seq) {
        Some((head, ts)) => {
            out.push(SHORT);
            out.push_str(ts);
            out.push_str(head);
        }
        None => {
            if frame.starts_with(SHORT) {
                out.push(SHORT); // `~~`: a frame that itself starts with the mark
            }
            out.push_str(frame)
        }
    }
}

/// The frame's head and timestamp, when its tail is exactly what [`frame`] rebuilds.
fn split<'a>(frame: &'a str, id: &str, seq: u64) -> Option<(&'a str, &'a str)> {
    let body = frame.strip_suffix(END)?;
    // A timestamp holds no quote: the last one opens it.
    let at = memchr::memrchr(b'"', body.as_bytes())? + 1;
    let ts = &body[at..];
    // Read back, the timestamp ends at the head's first `{`; and `~~` marks a whole frame.
    if ts.is_empty() || ts.starts_with(SHORT) || memchr::memchr(b'{', ts.as_bytes()).is_some() {
        return None;
    }
    let mut digits = [0u8; 20];
    let head = body[..at]
        .strip_suffix(TIMESTAMP)?
        .strip_suffix(decimal(seq, &mut digits))?
        .strip_suffix(SEQ)?
        .strip_suffix(id)?
        .strip_suffix(SESSION)?;
    head.starts_with('{').then_some((head, ts))
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// The frame a stored line holds (event `seq` of session `id`).
pub(crate) fn frame<'a>(line: &'a str, id: &str, seq: u64) -> Cow<'a, str> {
    let Some(short) = line.strip_prefix(SHORT) else {
        return Cow::Borrowed(line);
    };
    if short.starts_with(SHORT) {
        return Cow::Borrowed(short);
    }
    let Some(at) = short.find('{') else {
        // Not written by `push`: given back as it is (the client sees what was stored).
        return Cow::Borrowed(line);
    };
    let (ts, head) = short.split_at(at);
    let mut digits = [0u8; 20];
    let seq = decimal(seq, &mut digits);
    let mut out = String::with_capacity(
        head.len()
            + SESSION.len()
            + id.len()
            + SEQ.len()
            + seq.len()
            + TIMESTAMP.len()
            + ts.len()
            + END.len(),
    );
    for part in [head, SESSION, id, SEQ, seq, TIMESTAMP, ts, END] {
        out.push_str(part);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "48cfe646-87b6-44d7-8e10-1d3adecb7c11";

    /// A streamed piece's frame as the session's encoder writes it.
    fn piece(content: &str, seq: u64) -> String {
        format!(
            "{{\"event\":\"agent.partial_answer\",\"content\":{content},\"metadata\":{{\"step\":1}},\
             \"session_id\":\"{ID}\",\"seq\":{seq},\"timestamp\":\"2026-12-03T11:24:31.650Z\"}}"
        )
    }

    fn stored(frame: &str, id: &str, seq: u64) -> String {
        let mut out = String::new();
        push(&mut out, frame, id, seq);
        out
    }

    #[test]
    fn a_session_frame_is_stored_without_its_tail_and_read_back_whole() {
        for seq in [0, 7, 10, 123_456, u64::MAX] {
            let f = piece(r#""Hel\"lo\n ~{""#, seq);
            let line = stored(&f, ID, seq);
            assert!(
                line.starts_with("~2026-12-03T11:24:31.650Z{\"event\""),
                "{line}"
            );
            assert!(!line.contains(ID), "{line}");
            assert!(line.len() + 74 < f.len(), "{line}");
            assert_eq!(frame(&line, ID, seq), f.as_str());
        }
    }

    #[test]
    fn any_other_frame_is_stored_as_it_is() {
        let ours = piece("\"x\"", 5);
        let cases = [
            // Another session's id, another seq: the tail is not what the row rebuilds.
            (ours.to_string(), "other", 5),
            (ours.to_string(), ID, 6),
            // A custom event (keys in another order), an older version's frame, odd tails.
            (
                format!(
                    "{{\"event\":\"x\",\"seq\":5,\"session_id\":\"{ID}\",\"timestamp\":\"t\"}}"
                ),
                ID,
                5,
            ),
            (
                format!("{{\"event\":\"a\",\"session_id\":\"{ID}\",\"seq\":5}}"),
                ID,
                5,
            ),
            (
                format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"\"}}"),
                ID,
                5,
            ),
            (
                format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"x{{y\"}}"),
                ID,
                5,
            ),
            (
                format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"~t\"}}"),
                ID,
                5,
            ),
            (
                format!(",\"session_id\":\"{ID}\",\"seq\":5,\"timestamp\":\"t\"}}"),
                ID,
                5,
            ),
            (
                format!("{{\"a\":1,\"session_id\":\"{ID}\",\"seq\":05,\"timestamp\":\"t\"}}"),
                ID,
                5,
            ),
            ("{}".to_owned(), ID, 5),
            (String::new(), ID, 5),
        ];
        for (f, id, seq) in cases {
            let line = stored(&f, id, seq);
            assert_eq!(line, f, "stored as it is");
            assert_eq!(frame(&line, id, seq), f.as_str());
        }
        // One that starts with the mark, with and without a tail that could be left out.
        for f in [format!("~{ours}"), "~x".to_owned(), "~".to_owned()] {
            let line = stored(&f, ID, 5);
            assert_eq!(line, format!("~{f}"));
            assert_eq!(frame(&line, ID, 5), f.as_str());
        }
    }

    /// Every one-byte change of a frame is read back as the same bytes (left out or not).
    #[test]
    fn every_one_byte_change_reads_back_the_same() {
        let f = piece("\"hi\"", 42);
        let (mut shortened, mut kept) = (0, 0);
        for i in 0..=f.len() {
            let mut variants = Vec::new();
            if i < f.len() {
                variants.push(format!("{}{}", &f[..i], &f[i + 1..]));
            }
            for c in ['~', '{', '}', '"', ',', '0', '9', 'a', ':'] {
                variants.push(format!("{}{c}{}", &f[..i], &f[i..]));
                if i < f.len() {
                    variants.push(format!("{}{c}{}", &f[..i], &f[i + 1..]));
                }
            }
            for v in variants {
                let line = stored(&v, ID, 42);
                if line.starts_with('~') {
                    shortened += 1;
                } else {
                    kept += 1;
                }
                assert_eq!(frame(&line, ID, 42), v.as_str(), "{v}");
            }
        }
        assert!(shortened > 100 && kept > 100, "{shortened} {kept}");
    }

    #[test]
    fn a_line_not_written_here_is_read_as_it_is() {
        assert_eq!(frame("~no brace", ID, 1), "~no brace");
        assert_eq!(frame("~~{\"a\":1}", ID, 1), "~{\"a\":1}");
        assert_eq!(frame("{\"a\":1}", ID, 1), "{\"a\":1}");
    }

    #[test]
    fn decimal_writes_every_width() {
        let mut buf = [0u8; 20];
        for n in [0, 9, 10, 99, 100, 4096, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
    }
}
