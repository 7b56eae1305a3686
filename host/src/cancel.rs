//! Watching a cancellation token from a loop that wakes often. `CancellationToken::cancelled()`
//! polled at every wake of a `select!` takes the token's mutex and its `Notify`'s — for the
//! host's shutdown token, the same two mutexes for every connection on every core, and for a
//! run's token twice per model read. A [`Watch`] polls the token's future with a waker of its
//! own once, and again only after that waker fired: any other wake of the task costs one atomic
//! load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A token being watched; see the module.
pub(crate) struct Watch {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    flag: Arc<Flag>,
    /// `flag` as a waker: the token's future wakes this one.
    waker: Waker,
    /// The task's waker last handed to `flag` (compared without a lock).
    task: Option<Waker>,
    armed: bool,
}

#[derive(Default)]
struct Flag {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl Watch {
    pub(crate) fn new(token: &CancellationToken) -> Watch {
        let flag = Arc::new(Flag::default());
        Watch {
            cancelled: Box::pin(token.clone().cancelled_owned()),
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
            armed: false,
        }
    }

    /// Ready once the token is cancelled; the task is woken when it is.
    pub(crate) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            self.task = Some(w);
        }
        if self.armed && !self.flag.fired.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        self.armed = true;
        self.cancelled
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }

    /// Completes once the token is cancelled (for a `select!` branch).
    pub(crate) async fn cancelled(&mut self) {
        std::future::poll_fn(|cx| self.poll_cancelled(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_cancelled_token_is_seen_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let (_, w) = counting();
        let mut watch = Watch::new(&token);
        assert!(watch
            .poll_cancelled(&mut Context::from_waker(&w))
            .is_ready());
    }

    #[test]
    fn a_cancel_wakes_the_task_that_polled_last_and_is_then_seen() {
        let token = CancellationToken::new();
        let mut watch = Watch::new(&token);
        let (first, w1) = counting();
        let (second, w2) = counting();
        assert!(watch
            .poll_cancelled(&mut Context::from_waker(&w1))
            .is_pending());
        // Woken for something else, many times: still pending, nobody woken.
        for _ in 0..100 {
            assert!(watch
                .poll_cancelled(&mut Context::from_waker(&w1))
                .is_pending());
        }
        // The task moved to another waker: that one is woken.
        assert!(watch
            .poll_cancelled(&mut Context::from_waker(&w2))
            .is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(watch
            .poll_cancelled(&mut Context::from_waker(&w2))
            .is_ready());
    }

    #[tokio::test]
    async fn a_select_on_it_ends_when_another_task_cancels() {
        let token = CancellationToken::new();
        let mut watch = Watch::new(&token);
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            t.cancel();
        });
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(1));
            loop {
                tokio::select! {
                    biased;
                    _ = watch.cancelled() => return true,
                    _ = tick.tick() => {}
                }
            }
        })
        .await;
        assert_eq!(ended, Ok(true));
    }
}
