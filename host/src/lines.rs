//! Reading a child process's output a line at a time with each line bounded: a plugin worker or
//! an MCP server that writes megabytes without a newline costs the host [`MAX_LINE`] bytes, not
//! the whole line. What is cut is counted, and the kept part says it was cut.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Bytes of one output line kept (the rest of the line is dropped and counted).
pub const MAX_LINE: usize = 8 * 1024;

/// Lines of at most `max` bytes from `r`.
pub struct BoundedLines<R> {
    r: BufReader<R>,
    max: usize,
    buf: Vec<u8>,
}

/// One line as kept.
pub struct Line {
    /// The line's first `max` bytes (invalid UTF-8 replaced), with a note when it was cut.
    pub text: String,
    /// Bytes of the line that were not kept.
    pub dropped: usize,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    pub fn new(r: R, max: usize) -> BoundedLines<R> {
        BoundedLines {
            r: BufReader::with_capacity(8 * 1024, r),
            max,
            buf: Vec::new(),
        }
    }

    /// The next line; `None` at the end of the output (or on a read error).
    pub async fn next_line(&mut self) -> Option<Line> {
        self.buf.clear();
        let mut dropped = 0usize;
        let mut any = false;
        while let Ok(avail) = self.r.fill_buf().await {
            if avail.is_empty() {
                break;
            }
            any = true;
            let (part, used, end) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (&avail[..i], i + 1, true),
                None => (avail, avail.len(), false),
            };
            let room = self.max - self.buf.len();
            let keep = part.len().min(room);
            self.buf.extend_from_slice(&part[..keep]);
            dropped += part.len() - keep;
            self.r.consume(used);
            if end {
                break;
            }
        }
        if !any {
            return None;
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut text = String::from_utf8_lossy(&self.buf).into_owned();
        if dropped > 0 {
            text.push_str(&format!(" [… {dropped} more bytes of this line dropped]"));
        }
        Some(Line { text, dropped })
    }
}

/// Hands each bounded line of `r` to `f` until the output ends.
pub async fn each_line<R: AsyncRead + Unpin>(r: R, mut f: impl FnMut(Line)) {
    let mut lines = BoundedLines::new(r, MAX_LINE);
    while let Some(line) = lines.next_line().await {
        f(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_counted_and_short_ones_pass() {
        let mut input = b"short\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend(b"\nlast without newline");
        let mut lines = BoundedLines::new(&input[..], 16);
        let a = lines.next_line().await.unwrap();
        assert_eq!((a.text.as_str(), a.dropped), ("short", 0));
        let b = lines.next_line().await.unwrap();
        assert_eq!(b.dropped, 100_000 - 16);
        assert!(b.text.starts_with("xxxxxxxxxxxxxxxx [… 99984 more bytes"));
        let c = lines.next_line().await.unwrap();
        assert_eq!(
            c.text,
            "last without new [… 4 more bytes of this line dropped]"
        );
        assert!(lines.next_line().await.is_none());
    }
}
