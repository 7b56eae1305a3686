//! A gate on a WebSocket's incoming bytes until the client has authenticated.
//!
//! tungstenite reserves a frame's declared length as soon as it reads the frame header, and
//! keeps an unfinished fragmented message: with only its limits, a client that never sends a
//! token can make the host hold a full frame per connection. Before authentication this gate
//! reads the frame headers itself and fails the connection on a frame larger than
//! `frame_limit`, or once `total_limit` bytes have arrived — so an unauthenticated connection
//! holds a few KiB at most. Once [`GateKey::open`] is called, bytes pass untouched.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Opens a [`Gate`] (the connection authenticated).
#[derive(Clone)]
pub(crate) struct GateKey(Arc<AtomicBool>);

impl GateKey {
    pub(crate) fn open(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct Gate<S> {
    inner: S,
    open: Arc<AtomicBool>,
    frame_limit: u64,
    total_limit: u64,
    seen: u64,
    scan: Scan,
}

/// Where the byte stream is relative to frame boundaries.
enum Scan {
    /// Collecting a frame header (up to 14 bytes).
    Header { buf: [u8; 14], len: usize },
    /// Inside a payload: this many bytes to go.
    Payload(u64),
}

impl<S> Gate<S> {
    /// A gate that is already open (authenticated connections, the echo endpoint).
    pub(crate) fn open(inner: S) -> Gate<S> {
        Gate::closed(inner, 0, 0).0.opened()
    }

    /// A closed gate and its key.
    pub(crate) fn closed(inner: S, frame_limit: u64, total_limit: u64) -> (Gate<S>, GateKey) {
        let open = Arc::new(AtomicBool::new(false));
        let gate = Gate {
            inner,
            open: open.clone(),
            frame_limit,
            total_limit,
            seen: 0,
            scan: Scan::Header {
                buf: [0; 14],
                len: 0,
            },
        };
        (gate, GateKey(open))
    }

    fn opened(self) -> Gate<S> {
        self.open.store(true, Ordering::Relaxed);
        self
    }

    /// Follows frame boundaries through `bytes`; an error names the first limit broken.
    fn check(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.seen += bytes.len() as u64;
        if self.seen > self.total_limit {
            return Err(refused("more input than allowed before authentication"));
        }
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Payload(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.scan = Scan::Header {
                            buf: [0; 14],
                            len: 0,
                        };
                    }
                }
                Scan::Header { buf, len } => {
                    buf[*len] = bytes[0];
                    *len += 1;
                    bytes = &bytes[1..];
                    let (payload, need) = header_shape(&buf[..*len]);
                    // Refuse as soon as the length is known, before the mask arrives.
                    if payload.is_some_and(|p| p > self.frame_limit) {
                        return Err(refused("a frame larger than allowed before authentication"));
                    }
                    if let (Some(payload), true) = (payload, *len == need) {
                        self.scan = if payload == 0 {
                            Scan::Header {
                                buf: [0; 14],
                                len: 0,
                            }
                        } else {
                            Scan::Payload(payload)
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// For the first bytes `h` of a frame header: the payload length once known, and the header's
/// full size (2 until the second byte says more).
fn header_shape(h: &[u8]) -> (Option<u64>, usize) {
    if h.len() < 2 {
        return (None, 2);
    }
    let masked = h[1] & 0x80 != 0;
    let (ext, len7) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(n as u64)),
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    let len = match len7 {
        Some(n) => Some(n),
        None if h.len() >= 2 + ext => {
            Some(h[2..2 + ext].iter().fold(0u64, |a, b| a << 8 | *b as u64))
        }
        None => None,
    };
    (len, need)
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.open.load(Ordering::Relaxed) {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        // The flag may have flipped while this read waited: the bytes then belong to an
        // authenticated connection, but checking them as well is harmless.
        if !this.open.load(Ordering::Relaxed) {
            this.check(&buf.filled()[before..])?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate<()> {
        Gate::closed((), 1024, 4096).0
    }

    #[test]
    fn follows_frames_and_refuses_big_ones() {
        let mut g = gate();
        // A masked text frame of 5 bytes, split anywhere, then another header.
        let frame = [0x81, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'];
        for b in frame.chunks(3) {
            g.check(b).unwrap();
        }
        assert!(matches!(g.scan, Scan::Header { len: 0, .. }));
        // 16-bit length 2000 > 1024: refused as soon as the header is complete.
        assert!(g.check(&[0x81, 0xFE, 0x07]).is_ok());
        assert!(g.check(&[0xD0]).is_err());
        // 64-bit lengths are read too.
        let mut g = gate();
        let mut big = vec![0x82, 0xFF];
        big.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(g.check(&big).is_err());
    }

    #[test]
    fn total_input_is_bounded() {
        let mut g = gate();
        let ping = [0x89, 0x80, 0, 0, 0, 0];
        let mut sent = 0;
        while g.check(&ping).is_ok() {
            sent += ping.len();
            assert!(sent <= 4096);
        }
    }
}
