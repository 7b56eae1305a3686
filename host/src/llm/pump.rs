//! A streamed model answer's body, read on a task of its own.
//!
//! The HTTP client's connection task hands a response body over one chunk at a time (hyper's
//! body channel holds one), so reading it takes one wake of the reader per chunk. Read in the
//! session's run, each of those wakes would poll the whole run — the session's turn, the
//! agent's step, the model call and its timers — for one chunk of a few dozen bytes. The
//! [`Pump`] reads it instead, on a small task whose every poll is just this loop, and wakes the
//! run only at a pause: when no chunk is ready even after one yield to the connection task (the
//! model is slower than we are), or after [`PAUSE_EVERY`] chunks. The run then takes every chunk
//! waiting, parses them and sends their pieces in one go.
//!
//! Bounded: at most [`HELD`] chunks or [`HELD_BYTES`] (and one chunk) wait for the run; past
//! that the pump stops reading (and the connection task stops too, so TCP holds the model back),
//! as it would without the pump.
//! Dropping the [`Pump`] (a cancelled or finished call) aborts its task and with it the body.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};

/// The run is woken at least this often, in chunks: enough to write a burst of pieces in a few
/// system calls, few enough that no client waits on a long one.
const PAUSE_EVERY: usize = 16;

/// Chunks, or bytes, waiting for the run before the pump stops reading (a chunk is as long as
/// the model's server made it, up to the HTTP client's read buffer).
const HELD: usize = 4 * PAUSE_EVERY;
const HELD_BYTES: usize = 256 * 1024;

/// How the body ended.
pub(super) type End = Result<(), reqwest::Error>;

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    /// The chunks' bytes.
    bytes: usize,
    end: Option<End>,
    /// The run, waiting for a pause.
    run: Option<Waker>,
    /// The pump, waiting for room.
    pump: Option<Waker>,
}

impl State {
    fn full(&self) -> bool {
        self.chunks.len() >= HELD || self.bytes >= HELD_BYTES
    }
}

#[derive(Default)]
struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reading side: see the module.
pub(super) struct Pump {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Pump {
    /// Starts reading `body` on a task of its own.
    pub(super) fn spawn<S>(body: S) -> Pump
    where
        S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(pump(body, shared.clone()));
        Pump { shared, task }
    }

    /// Waits for a pause, then moves every chunk waiting into `into` (which must be empty);
    /// `Some` once the body has ended (its last chunks are in `into`).
    pub(super) async fn take(&mut self, into: &mut VecDeque<Bytes>) -> Option<End> {
        std::future::poll_fn(|cx| self.poll_take(cx, into)).await
    }

    fn poll_take(&mut self, cx: &mut Context<'_>, into: &mut VecDeque<Bytes>) -> Poll<Option<End>> {
        debug_assert!(into.is_empty(), "the last pause's chunks were not all read");
        let mut state = self.shared.lock();
        if state.chunks.is_empty() && state.end.is_none() {
            if !state.run.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.run = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        // The emptied buffer goes back to the pump: no allocation per pause.
        std::mem::swap(&mut state.chunks, into);
        state.bytes = 0;
        let end = state.end.take();
        let pump = state.pump.take();
        drop(state);
        if let Some(w) = pump {
            w.wake();
        }
        Poll::Ready(end)
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Adds a chunk (or the end: the run is woken for it, as when the chunks fill the room).
/// Returns whether the pump must wait for room.
fn push(shared: &Shared, item: Option<Result<Bytes, reqwest::Error>>) -> bool {
    let mut state = shared.lock();
    let ended = match item {
        Some(Ok(chunk)) => {
            state.bytes += chunk.len();
            state.chunks.push_back(chunk);
            false
        }
        Some(Err(e)) => {
            state.end = Some(Err(e));
            true
        }
        None => {
            state.end = Some(Ok(()));
            true
        }
    };
    let full = state.full();
    let run = if ended || full {
        state.run.take()
    } else {
        None
    };
    drop(state);
    if let Some(w) = run {
        w.wake();
    }
    full
}

fn wake_run(shared: &Shared) {
    let run = shared.lock().run.take();
    if let Some(w) = run {
        w.wake();
    }
}

/// Waits until the run has taken the waiting chunks.
async fn room(shared: &Shared) {
    std::future::poll_fn(|cx| {
        let mut state = shared.lock();
        if !state.full() {
            return Poll::Ready(());
        }
        state.pump = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

async fn pump<S>(body: S, shared: Arc<Shared>)
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send,
{
    let mut body = std::pin::pin!(body);
    // Chunks added since the run was last woken.
    let mut unsent = 0;
    loop {
        let mut ready = body.next().now_or_never();
        if ready.is_none() && unsent > 0 && unsent < PAUSE_EVERY {
            tokio::task::yield_now().await;
            ready = body.next().now_or_never();
        }
        if unsent > 0 && (ready.is_none() || unsent >= PAUSE_EVERY) {
            wake_run(&shared);
            unsent = 0;
        }
        let next = match ready {
            Some(next) => next,
            None => body.next().await,
        };
        let last = !matches!(next, Some(Ok(_)));
        unsent += 1;
        if push(&shared, next) {
            room(&shared).await;
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize) -> Vec<Result<Bytes, reqwest::Error>> {
        (0..n).map(|i| Ok(Bytes::from(format!("{i};")))).collect()
    }

    /// A body whose chunks the test sends.
    fn receiving(
        rx: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, reqwest::Error>>,
    ) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Send {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    async fn read_all(pump: &mut Pump) -> (String, usize, End) {
        let mut text = String::new();
        let mut takes = 0;
        let mut batch = VecDeque::new();
        loop {
            let end = pump.take(&mut batch).await;
            takes += 1;
            for c in batch.drain(..) {
                text.push_str(std::str::from_utf8(&c).unwrap());
            }
            if let Some(end) = end {
                return (text, takes, end);
            }
        }
    }

    #[tokio::test]
    async fn every_chunk_arrives_in_order_then_the_end() {
        let mut pump = Pump::spawn(futures_util::stream::iter(chunks(1000)));
        let (text, takes, end) = read_all(&mut pump).await;
        let want: String = (0..1000).map(|i| format!("{i};")).collect();
        assert_eq!(text, want);
        assert!(end.is_ok());
        // Ready chunks are handed over in batches, not one wake each.
        assert!(takes < 1000 / 4, "{takes} takes");
    }

    #[tokio::test]
    async fn a_slow_body_is_handed_over_as_it_comes() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut pump = Pump::spawn(receiving(rx));
        let mut batch = VecDeque::new();
        for i in 0..5 {
            tx.send(Ok(Bytes::from(format!("{i}")))).unwrap();
            let end = pump.take(&mut batch).await;
            assert!(end.is_none());
            assert_eq!(
                batch.drain(..).collect::<Vec<_>>(),
                [Bytes::from(format!("{i}"))]
            );
        }
        drop(tx);
        assert!(matches!(pump.take(&mut batch).await, Some(Ok(()))));
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn the_pump_stops_reading_while_the_run_holds_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pulled = Arc::new(AtomicUsize::new(0));
        let counted = pulled.clone();
        let body = futures_util::stream::iter(chunks(10_000)).inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut pump = Pump::spawn(body);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let held = pulled.load(Ordering::SeqCst);
        assert!(held <= HELD + 1, "{held} chunks read ahead");
        let (text, _, end) = read_all(&mut pump).await;
        assert!(end.is_ok());
        assert_eq!(text.matches(';').count(), 10_000);
    }

    #[tokio::test]
    async fn long_chunks_are_held_back_by_their_bytes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pulled = Arc::new(AtomicUsize::new(0));
        let counted = pulled.clone();
        let long = (0..40).map(|_| Ok(Bytes::from(vec![b'x'; 64 * 1024])));
        let body = futures_util::stream::iter(long).inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut pump = Pump::spawn(body);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let held = pulled.load(Ordering::SeqCst);
        assert!(
            held <= HELD_BYTES / (64 * 1024) + 1,
            "{held} long chunks read ahead"
        );
        let (text, _, end) = read_all(&mut pump).await;
        assert!(end.is_ok());
        assert_eq!(text.len(), 40 * 64 * 1024);
    }

    #[tokio::test]
    async fn dropping_the_pump_drops_the_body() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, reqwest::Error>>();
        let pump = Pump::spawn(receiving(rx));
        tokio::task::yield_now().await;
        drop(pump);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            tx.is_closed(),
            "the body is still read after the pump was dropped"
        );
    }
}
