//! Server-Sent Events on the HTTP port: a response body fed frame by frame from a channel
//! (each frame flushed as it comes), for the doors that stream over HTTP (A2A).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::Response;
use tokio::sync::mpsc;

use super::reply::Body;

/// A comment line at least this often keeps proxies and clients from timing the stream out.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Frames waiting for a slow reader, at most (the producer then waits).
pub(crate) const QUEUED: usize = 64;

/// The body: frames from the channel until its sender is dropped.
struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }
}

/// An SSE response and the sender its frames go through ([`data`] makes one).
pub(crate) fn stream() -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel(QUEUED);
    let mut r = Response::new(SseBody { rx }.boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx: pass each frame on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (tx, r)
}

/// One `data:` frame (the JSON is one line).
pub(crate) fn data(json: &serde_json::Value) -> Bytes {
    let mut out = Vec::new();
    write_event::<u64>(&mut out, None, json);
    Bytes::from(out)
}

/// Appends one frame to `out`: `id:` (when given), then `data:` with `event` as one line of JSON.
pub(crate) fn write_event<I: std::fmt::Display>(
    out: &mut Vec<u8>,
    id: Option<I>,
    event: &impl serde::Serialize,
) {
    use std::io::Write;
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    out.extend_from_slice(b"data: ");
    // Serializing into a Vec cannot fail for these types.
    let _ = serde_json::to_writer(&mut *out, event);
    out.extend_from_slice(b"\n\n");
}

/// The keep-alive comment.
pub(crate) fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}
