//! Server-Sent Events on the HTTP port: a response body fed frame by frame from a channel
//! (each frame flushed as it comes), or polled from a stream, for the doors that stream over
//! HTTP (A2A, AG-UI).

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
    (
        tx,
        with_headers(Response::new(SseBody { rx }.boxed_unsync())),
    )
}

fn with_headers(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx: pass each frame on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// An SSE response whose body is `frames`, each written (and flushed) as the stream yields it:
/// hyper polls the stream from the connection's task when it can write, so a slow reader holds
/// the producer back without a queue in between.
pub(crate) fn from_stream(
    frames: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> Response<Body> {
    use futures_util::StreamExt;
    let body = http_body_util::StreamBody::new(frames.map(|b| Ok(Frame::data(b))));
    with_headers(Response::new(body.boxed_unsync()))
}

/// One `data:` frame (the JSON is one line).
pub(crate) fn data(json: &serde_json::Value) -> Bytes {
    let mut out = Vec::new();
    write_event::<u64>(&mut out, None, json);
    Bytes::from(out)
}

/// Appends one frame to `out`: `id:` (when given), then `data:` with `event` as one line of JSON.
pub(crate) fn write_event<I: std::fmt::Display>(
    out: &mut impl bytes::BufMut,
    id: Option<I>,
    event: &impl serde::Serialize,
) {
    use std::io::Write;
    if let Some(id) = id {
        let _ = writeln!(bytes::BufMut::writer(&mut *out), "id: {id}");
    }
    out.put_slice(b"data: ");
    // Writing into memory cannot fail for these types.
    let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), event);
    out.put_slice(b"\n\n");
}

/// The keep-alive comment.
pub(crate) fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}
