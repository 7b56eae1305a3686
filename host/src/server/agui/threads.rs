//! The threads this host is streaming a run of: a session has one attached client at a time,
//! so a second request on a thread either waits its turn without attaching (HTTP 409 under
//! `on_busy` reject or enqueue) or takes the thread over — the stream it replaces is told to
//! stop (an interrupting message, a reconnect).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Threads {
    live: Mutex<HashMap<String, Live>>,
    next: AtomicU64,
}

struct Live {
    id: u64,
    stop: Arc<Notify>,
}

/// One request's hold on its thread, released when dropped.
pub(crate) struct Hold {
    threads: Arc<Threads>,
    thread: String,
    id: u64,
    /// Notified when another request takes the thread over.
    pub stop: Arc<Notify>,
}

impl Threads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a run of `thread` is being streamed here now.
    pub(crate) fn streaming(&self, thread: &str) -> bool {
        self.lock().contains_key(thread)
    }

    /// Takes `thread` over (the stream holding it is told to stop).
    pub(crate) fn hold(self: &Arc<Self>, thread: &str) -> Hold {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        let live = Live {
            id,
            stop: stop.clone(),
        };
        if let Some(old) = self.lock().insert(thread.to_owned(), live) {
            old.stop.notify_one();
        }
        Hold {
            threads: self.clone(),
            thread: thread.to_owned(),
            id,
            stop,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut live = self.threads.lock();
        if live.get(&self.thread).is_some_and(|l| l.id == self.id) {
            live.remove(&self.thread);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_hold_takes_over_and_only_the_holder_releases() {
        let t = Arc::new(Threads::default());
        let a = t.hold("x");
        assert!(t.streaming("x"));
        let b = t.hold("x");
        assert!(t.streaming("x"));
        drop(a); // stopped, and no longer the holder
        assert!(t.streaming("x"));
        drop(b);
        assert!(!t.streaming("x"));
    }
}
