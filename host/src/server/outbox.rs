//! The outbound side of one connection: a queue of encoded frames that sessions and broadcasts
//! fill and the connection's writer drains. A plain locked deque instead of a channel: it
//! allocates nothing while empty (most connections are idle most of the time), and the "slow
//! client" flag lives beside it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::protocol::ServerEvent;

/// Frames waiting to be written to one connection.
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Frames queued at most (replay batches excepted) before the client is marked slow.
    cap: usize,
    /// Wakes the connection task: something was queued, or the client was marked slow.
    pub wake: Notify,
    slow: AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Utf8Bytes>,
    /// Replayed frames still queued: they do not count against the cap.
    replay: usize,
}

impl Outbox {
    /// A new connection's queue and the handle that sessions and broadcasts send through.
    pub fn new(conn_id: u64, cap: usize) -> (ConnHandle, Arc<Outbox>) {
        let out = Arc::new(Outbox {
            queue: Mutex::new(Queue::default()),
            cap,
            wake: Notify::new(),
            slow: AtomicBool::new(false),
        });
        (
            ConnHandle {
                id: conn_id,
                out: out.clone(),
            },
            out,
        )
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut q = self.lock();
        let t = q.items.pop_front();
        q.replay = q.replay.saturating_sub(1);
        if q.items.is_empty() && q.items.capacity() > 64 {
            // A burst is over: give its memory back.
            q.items = VecDeque::new();
        }
        t
    }

    /// Takes up to `n` queued frames under one lock (the connection's writer takes a batch at a
    /// time: one lock round trip with the sessions' pushes instead of one a frame), and whether
    /// more are left.
    pub fn take(&self, n: usize) -> (Vec<Utf8Bytes>, bool) {
        let mut q = self.lock();
        let k = n.min(q.items.len());
        let batch: Vec<Utf8Bytes> = q.items.drain(..k).collect();
        q.replay = q.replay.saturating_sub(k);
        let more = !q.items.is_empty();
        if !more && q.items.capacity() > 64 {
            // A burst is over: give its memory back.
            q.items = VecDeque::new();
        }
        (batch, more)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// True once the queue overflowed: the connection closes with 4008.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }
}

/// The sending side of a connection, held by its sessions and the connection registry.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    out: Arc<Outbox>,
}

impl ConnHandle {
    /// Queues a frame; never blocks. A full queue marks the client slow.
    pub fn send(&self, frame: Utf8Bytes) {
        self.queue(std::iter::once(frame));
    }

    /// Queues a model read's frames (taken from `frames`) under one lock and wakes the writer.
    pub fn send_pieces(&self, frames: &mut Vec<Utf8Bytes>) {
        self.queue(frames.drain(..));
    }

    /// Queues what fits of `frames` under one lock and wakes the writer; past the queue's cap
    /// the client is marked slow and the rest is dropped.
    fn queue(&self, frames: impl ExactSizeIterator<Item = Utf8Bytes>) {
        {
            let mut q = self.out.lock();
            let room = (self.out.cap + q.replay).saturating_sub(q.items.len());
            if frames.len() > room {
                self.out.slow.store(true, Ordering::Relaxed);
            }
            q.items.extend(frames.take(room));
        }
        self.out.wake.notify_one();
    }

    /// Queues a connection-level event.
    pub fn send_event(&self, event: &ServerEvent) {
        self.send(event.frame());
    }

    /// Queues an event about `session_id` outside its numbered log (answers to client messages).
    pub fn send_about(&self, session_id: Option<&str>, event: &ServerEvent) {
        self.send(event.frame_about(session_id));
    }

    /// Queues a replay: accepted whole (its size is bounded by the session's replay buffer).
    pub fn send_batch(&self, frames: Vec<Utf8Bytes>) {
        if frames.is_empty() {
            return;
        }
        {
            let mut q = self.out.lock();
            q.replay += frames.len();
            q.items.extend(frames);
        }
        self.out.wake.notify_one();
    }
}

impl crate::session::Subscriber for ConnHandle {
    fn id(&self) -> u64 {
        self.id
    }
    fn send(&self, frame: Utf8Bytes) {
        ConnHandle::send(self, frame)
    }
    fn send_pieces(&self, frames: &mut Vec<Utf8Bytes>) {
        ConnHandle::send_pieces(self, frames)
    }
    fn send_batch(&self, frames: Vec<Utf8Bytes>) {
        ConnHandle::send_batch(self, frames)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn a_read_s_pieces_go_in_one_step_and_past_the_cap_the_client_is_slow() {
        let (handle, out) = Outbox::new(1, 8);
        let mut read = vec!["a".into(), "b".into()];
        handle.send_pieces(&mut read);
        assert!(read.is_empty());
        assert!(out.wake.notified().now_or_never().is_some());
        handle.send("c".into());
        assert!(out.wake.notified().now_or_never().is_some());
        assert_eq!(out.take(2), (vec!["a".into(), "b".into()], true));
        assert_eq!(out.take(64), (vec!["c".into()], false));
        assert_eq!(out.take(64), (vec![], false));
        // Replayed frames do not count against the cap while queued, and stop counting once
        // taken.
        handle.send_batch(vec!["r1".into(), "r2".into(), "r3".into()]);
        assert_eq!(out.take(3).0.len(), 3);
        assert!(!out.is_slow());
        // Past the cap, the writer is woken at once to close a slow client; what fits is queued.
        let mut read = vec!["x".into(); 9];
        handle.send_pieces(&mut read);
        assert!(out.is_slow());
        assert!(out.wake.notified().now_or_never().is_some());
        assert_eq!(out.take(64).0.len(), 8);
    }
}
