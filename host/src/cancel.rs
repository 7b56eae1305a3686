//! Watching a cancellation token — or a timer — from a loop that wakes often.
//! `CancellationToken::cancelled()` polled at every wake of a `select!` takes the token's mutex
//! and its `Notify`'s — for the host's shutdown token, the same two mutexes for every connection
//! on every core, and for a run's token twice per model read; a `tokio::time::Sleep` (a model
//! call's deadline, its stall timer) re-registers the task's waker with two atomic exchanges. A
//! [`Watch`] polls the future with a waker of its own once, and again only after that waker
//! fired: any other wake of the task costs one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A token (or any future of `()`, such as a timer) being watched; see the module.
pub(crate) struct Watch<F = WaitForCancellationFutureOwned> {
    watched: Pin<Box<F>>,
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
    /// Watches `token`: done once it is cancelled.
    pub(crate) fn new(token: &CancellationToken) -> Watch {
        Watch::on(token.clone().cancelled_owned())
    }
}

impl<F: Future<Output = ()>> Watch<F> {
    /// Watches `watched`: done once it is.
    pub(crate) fn on(watched: F) -> Watch<F> {
        let flag = Arc::new(Flag::default());
        Watch {
            watched: Box::pin(watched),
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
            armed: false,
        }
    }

    /// Ready once the watched future is; the task is woken when it is.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            self.task = Some(w);
        }
        // A load first: the exchange (a locked instruction) only once the flag is up.
        let fired = || {
            self.flag.fired.load(Ordering::Acquire)
                && self.flag.fired.swap(false, Ordering::Acquire)
        };
        if self.armed && !fired() {
            return Poll::Pending;
        }
        self.armed = true;
        self.watched
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }

    /// Completes once the watched future does (for a `select!` branch).
    pub(crate) async fn done(&mut self) {
        std::future::poll_fn(|cx| self.poll_done(cx)).await
    }

    /// The watched future, to change (a timer's deadline): it is polled again at the next poll.
    pub(crate) fn rearm(&mut self) -> Pin<&mut F> {
        self.armed = false;
        self.watched.as_mut()
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
        assert!(watch.poll_done(&mut Context::from_waker(&w)).is_ready());
    }

    #[test]
    fn a_cancel_wakes_the_task_that_polled_last_and_is_then_seen() {
        let token = CancellationToken::new();
        let mut watch = Watch::new(&token);
        let (first, w1) = counting();
        let (second, w2) = counting();
        assert!(watch.poll_done(&mut Context::from_waker(&w1)).is_pending());
        // Woken for something else, many times: still pending, nobody woken.
        for _ in 0..100 {
            assert!(watch.poll_done(&mut Context::from_waker(&w1)).is_pending());
        }
        // The task moved to another waker: that one is woken.
        assert!(watch.poll_done(&mut Context::from_waker(&w2)).is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(watch.poll_done(&mut Context::from_waker(&w2)).is_ready());
    }

    #[tokio::test]
    async fn a_watched_timer_fires_at_the_deadline_it_was_moved_to() {
        use std::time::Duration;
        let start = tokio::time::Instant::now();
        let mut timer = Watch::on(tokio::time::sleep(Duration::from_millis(30)));
        std::future::poll_fn(|cx| {
            assert!(timer.poll_done(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        timer.rearm().reset(start + Duration::from_millis(150));
        tokio::time::timeout(Duration::from_secs(5), timer.done())
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150));
        // Moved again after it fired: it waits again.
        let again = tokio::time::Instant::now();
        timer.rearm().reset(again + Duration::from_millis(50));
        timer.done().await;
        assert!(again.elapsed() >= Duration::from_millis(50));
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
                    _ = watch.done() => return true,
                    _ = tick.tick() => {}
                }
            }
        })
        .await;
        assert_eq!(ended, Ok(true));
    }
}
