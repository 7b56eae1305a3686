//! The one writer loop both stores share: gather writes, apply them through a [`Backend`] in one
//! batch, and — when the store fails — keep them, in order, within a bound, retrying with
//! back-off until it takes them.
//!
//! The loop sleeps through a [`FLUSH_EVERY`] interval after the first write of a batch (so the
//! runs, sending an event per token, never have to wake it), unless an acknowledgement is
//! waiting: [`State::wake_writer`] unparks it and it commits at once (group commit).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::batch::coalesce;
use super::health::State;
use super::{Backend, Op, StoreError, FLUSH_EVERY};
use crate::backoff::Backoff;

/// A batch (write and periodic work) slower than this is logged.
const SLOW: Duration = Duration::from_millis(500);
/// First retry after a failed write, and the longest wait between retries.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Ops whose room the writer keeps between batches (64 bytes each).
const PENDING_KEPT: usize = 8192;
/// While the store stays away, a summary is logged at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Starts the writer thread.
pub(crate) fn spawn(
    backend: impl Backend,
    rx: mpsc::Receiver<Op>,
    state: std::sync::Arc<State>,
) -> Result<(), StoreError> {
    spawn_every(backend, rx, state, FLUSH_EVERY)
}

/// [`spawn`] with another interval (tests that must not race the interval's end).
fn spawn_every(
    backend: impl Backend,
    rx: mpsc::Receiver<Op>,
    state: std::sync::Arc<State>,
    interval: Duration,
) -> Result<(), StoreError> {
    let st = state.clone();
    let handle = std::thread::Builder::new()
        .name("session-store".into())
        .spawn(move || {
            Writer {
                backend,
                rx,
                state: st,
                pending: Vec::new(),
                pending_bytes: 0,
                retry_at: None,
                backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
                outage: None,
                slow_logged: None,
                due: None,
                interval,
            }
            .run()
        })
        .map_err(|e| StoreError::Start(e.to_string()))?;
    let _ = state.writer.set(handle.thread().clone());
    Ok(())
}

/// A stretch of time the store refused writes.
struct Outage {
    since: Instant,
    last_summary: Instant,
    error: String,
}

struct Writer<B: Backend> {
    backend: B,
    rx: mpsc::Receiver<Op>,
    state: std::sync::Arc<State>,
    /// Writes taken from the channel and not yet in the store, in order.
    pending: Vec<Op>,
    pending_bytes: usize,
    /// After a failure: not before this.
    retry_at: Option<Instant>,
    backoff: Backoff,
    outage: Option<Outage>,
    /// When a slow batch was last logged (at most one line per [`SUMMARY_EVERY`]).
    slow_logged: Option<Instant>,
    /// When the buffer is committed whole: one interval after its first write.
    due: Option<Instant>,
    /// [`FLUSH_EVERY`] (tests: longer).
    interval: Duration,
}

impl<B: Backend> Writer<B> {
    fn run(mut self) {
        loop {
            let wait = match (self.retry_at, self.due) {
                (Some(at), _) | (None, Some(at)) => at.saturating_duration_since(Instant::now()),
                (None, None) => self.backend.idle_wait(),
            };
            match self.rx.recv_timeout(wait) {
                Ok(op) => {
                    let urgent = matches!(op, Op::Ack(_));
                    self.take(op);
                    if !urgent {
                        self.gather_window();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.drain();
                    self.attempt(Vec::new());
                    return;
                }
            }
            self.drain();
            self.state.urgent.store(false, Ordering::Release);
            let t0 = Instant::now();
            let ops = self.pending.len();
            if self.retry_at.is_none_or(|at| Instant::now() >= at) {
                // Before the interval's end, only what acknowledgements wait for.
                let early = self.retry_at.is_none() && self.due.is_some_and(|d| Instant::now() < d);
                if !(early && self.attempt_acknowledged()) {
                    self.attempt(Vec::new());
                }
            }
            let t1 = Instant::now();
            if self.outage.is_none() {
                if let Err(e) = self.backend.tick() {
                    tracing::debug!(error = %e, "session store: periodic work failed");
                }
            }
            // A slow store is said (an acknowledgement waits on it), with where the time went;
            // at most once per SUMMARY_EVERY.
            if t0.elapsed() >= SLOW
                && self
                    .slow_logged
                    .is_none_or(|at| at.elapsed() >= SUMMARY_EVERY)
            {
                self.slow_logged = Some(Instant::now());
                tracing::warn!(
                    store = %self.state.name,
                    ops,
                    write_ms = (t1 - t0).as_millis() as u64,
                    periodic_ms = t1.elapsed().as_millis() as u64,
                    "session store: a batch took long"
                );
            }
        }
    }

    /// Lets writes gather until the interval's end, unless an acknowledgement asks to commit now.
    fn gather_window(&self) {
        let Some(deadline) = self.due else { return };
        while !self.state.urgent.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    fn take(&mut self, op: Op) {
        let size = op.size();
        self.state.unqueued(size);
        if self.pending.is_empty() {
            self.due = Some(Instant::now() + self.interval);
            self.state.oldest_ms.store(
                (self.state.epoch.elapsed().as_millis() as u64).max(1),
                Ordering::Relaxed,
            );
        }
        self.pending_bytes += size;
        self.pending.push(op);
    }

    fn drain(&mut self) {
        while let Ok(op) = self.rx.try_recv() {
            self.take(op);
        }
        coalesce(&mut self.pending);
        self.pending_bytes = self.pending.iter().map(Op::size).sum();
        self.bound();
        self.state
            .buffered_bytes
            .store(self.pending_bytes, Ordering::Relaxed);
    }

    /// Past the bound: the oldest streamed events go first, then the oldest records.
    fn bound(&mut self) {
        let limit = self.state.limit;
        if self.pending_bytes <= limit {
            return;
        }
        for events_only in [true, false] {
            let mut excess = self.pending_bytes.saturating_sub(limit);
            let (mut events, mut records) = (0u64, 0u64);
            self.pending.retain(|op| {
                if excess == 0 || matches!(op, Op::Ack(_)) {
                    return true;
                }
                let is_event = matches!(op, Op::Events { .. });
                if events_only && !is_event {
                    return true;
                }
                excess = excess.saturating_sub(op.size());
                if is_event {
                    events += op.events();
                } else {
                    records += 1;
                }
                false
            });
            self.state
                .dropped_events
                .fetch_add(events, Ordering::Relaxed);
            self.state
                .dropped_records
                .fetch_add(records, Ordering::Relaxed);
            self.pending_bytes = self.pending.iter().map(Op::size).sum();
            if self.pending_bytes <= limit {
                return;
            }
        }
    }

    /// Applies the buffer — `rest`, the writes left for the interval's commit, waits behind
    /// it; on failure keeps both, in order, and schedules a retry.
    fn attempt(&mut self, rest: Vec<Op>) {
        let has_writes = self.pending.iter().any(|op| !matches!(op, Op::Ack(_)));
        let result = if has_writes {
            self.backend.apply(&self.pending)
        } else {
            Ok(())
        };
        match result {
            Ok(()) => self.written(rest),
            Err(e) => {
                // The byte count and the oldest write's age already cover both.
                self.pending.extend(rest);
                self.failed(e);
            }
        }
    }

    /// Before the interval's end: applies the writes of the sessions whose acknowledgements
    /// wait, and those acknowledgements; the rest stays for the interval's commit (a session's
    /// writes all go, or all stay: their order holds). False when an acknowledgement waits for
    /// every write (then the whole buffer goes).
    fn attempt_acknowledged(&mut self) -> bool {
        let mut sessions = std::collections::HashSet::new();
        for op in &self.pending {
            if let Op::Ack(a) = op {
                match &a.session {
                    Some(id) => sessions.insert(id.clone()),
                    None => return false,
                };
            }
        }
        if sessions.is_empty() {
            return true; // woken with nothing acknowledged: the interval goes on
        }
        let (now, later): (Vec<Op>, Vec<Op>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|op| {
                matches!(op, Op::Ack(_)) || op.session().is_some_and(|id| sessions.contains(id))
            });
        self.pending = now;
        self.attempt(later);
        true
    }

    /// The buffer is in the store: what stays (`rest`) becomes the buffer, and the
    /// acknowledgements are answered.
    fn written(&mut self, mut rest: Vec<Op>) {
        let count = self.pending.len();
        // The state first, then the acknowledgements: whoever they wake sees it up to date.
        // With writes left, the interval's clock goes on.
        self.pending_bytes = rest.iter().map(Op::size).sum();
        self.state
            .buffered_bytes
            .store(self.pending_bytes, Ordering::Relaxed);
        if rest.is_empty() {
            self.due = None;
            self.state.oldest_ms.store(0, Ordering::Relaxed);
        }
        self.retry_at = None;
        self.backoff.reset();
        let was_out = self.outage.is_some();
        if was_out {
            self.state.up.store(true, Ordering::Relaxed);
        }
        for op in self.pending.drain(..) {
            if let Op::Ack(a) = op {
                a.done();
            }
        }
        // The next batch reuses the room (a stream's batch is thousands of ops), up to a bound
        // (what an outage left buffered is given back).
        self.pending.shrink_to(PENDING_KEPT);
        self.pending.append(&mut rest);
        if let Some(o) = self.outage.take() {
            tracing::warn!(
                store = %self.state.name,
                after_secs = o.since.elapsed().as_secs(),
                written = count,
                dropped_events = self.state.dropped_events.load(Ordering::Relaxed),
                dropped_records = self.state.dropped_records.load(Ordering::Relaxed),
                "session store is back: the writes buffered meanwhile are written"
            );
        }
    }

    fn failed(&mut self, e: StoreError) {
        self.state.write_errors.fetch_add(1, Ordering::Relaxed);
        self.state.up.store(false, Ordering::Relaxed);
        let now = Instant::now();
        match &mut self.outage {
            None => {
                tracing::error!(
                    store = %self.state.name, error = %e,
                    buffer_limit_mib = self.state.limit >> 20,
                    "session store unavailable: writes are buffered and retried"
                );
                self.outage = Some(Outage {
                    since: now,
                    last_summary: now,
                    error: e.to_string(),
                });
            }
            Some(o) => {
                o.error = e.to_string();
                if o.last_summary.elapsed() >= SUMMARY_EVERY {
                    o.last_summary = now;
                    tracing::warn!(
                        store = %self.state.name, error = %o.error,
                        for_secs = o.since.elapsed().as_secs(),
                        buffered_bytes = self.pending_bytes,
                        dropped_events = self.state.dropped_events.load(Ordering::Relaxed),
                        dropped_records = self.state.dropped_records.load(Ordering::Relaxed),
                        "session store still unavailable"
                    );
                }
            }
        }
        self.retry_at = Some(now + self.backoff.failed());
    }
}

#[cfg(test)]
mod tests;
