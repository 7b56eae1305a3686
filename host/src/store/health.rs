//! What the store's writer and its handle share: the buffer's accounting, the wake-up for a
//! waiting acknowledgement, and the store's health and counters (`/health`, `/metrics`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::metrics::Histogram;

/// What the writer and the handle share.
pub(crate) struct State {
    pub name: String,
    pub(super) limit: usize,
    /// Set by a waiting acknowledgement: commit now.
    pub(super) urgent: AtomicBool,
    pub(super) writer: OnceLock<std::thread::Thread>,
    /// Bytes sent to the writer and not yet taken into its buffer, and bytes in its buffer.
    pub(super) queued_bytes: AtomicUsize,
    pub(super) buffered_bytes: AtomicUsize,
    /// When the oldest unwritten write in the buffer arrived (ms since `epoch`; 0: none).
    pub(super) oldest_ms: AtomicU64,
    pub(super) epoch: Instant,
    pub(super) up: AtomicBool,
    pub dropped_events: AtomicU64,
    pub dropped_records: AtomicU64,
    pub write_errors: AtomicU64,
    pub ack_timeouts: AtomicU64,
    pub bad_entries: AtomicU64,
    /// Seconds acknowledgements waited.
    pub ack_wait: Histogram,
}

/// The store as `/health` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreHealth {
    /// "ok", or "degraded" while writes fail (they are buffered and retried).
    pub state: &'static str,
    pub buffered_bytes: usize,
    /// Age of the oldest write not yet in the store.
    pub oldest_unwritten_ms: u64,
    pub dropped_events: u64,
    pub dropped_records: u64,
}

impl State {
    pub(super) fn new(name: String, limit: usize) -> State {
        State {
            name,
            limit: limit.max(1 << 20),
            urgent: AtomicBool::new(false),
            writer: OnceLock::new(),
            queued_bytes: AtomicUsize::new(0),
            buffered_bytes: AtomicUsize::new(0),
            oldest_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            up: AtomicBool::new(true),
            dropped_events: AtomicU64::new(0),
            dropped_records: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            ack_timeouts: AtomicU64::new(0),
            bad_entries: AtomicU64::new(0),
            ack_wait: Histogram::default(),
        }
    }

    /// Whether `size` more bytes would pass the buffer bound.
    pub(super) fn over_bound(&self, size: usize) -> bool {
        self.queued_bytes.load(Ordering::Relaxed)
            + self.buffered_bytes.load(Ordering::Relaxed)
            + size
            > self.limit
    }

    pub(super) fn queued(&self, size: usize) {
        self.queued_bytes.fetch_add(size, Ordering::Relaxed);
    }

    pub(super) fn unqueued(&self, size: usize) {
        self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// An acknowledgement waits: the writer commits now instead of at its next tick.
    pub(super) fn wake_writer(&self) {
        self.urgent.store(true, Ordering::Release);
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    pub(super) fn oldest_age(&self) -> Duration {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => self
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(ms)),
        }
    }

    pub(super) fn health(&self) -> StoreHealth {
        StoreHealth {
            state: if self.up.load(Ordering::Relaxed) {
                "ok"
            } else {
                "degraded"
            },
            buffered_bytes: self.queued_bytes.load(Ordering::Relaxed)
                + self.buffered_bytes.load(Ordering::Relaxed),
            oldest_unwritten_ms: self.oldest_age().as_millis() as u64,
            dropped_events: self.dropped_events.load(Ordering::Relaxed),
            dropped_records: self.dropped_records.load(Ordering::Relaxed),
        }
    }

    /// The store's lines of `/metrics`.
    pub(super) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let h = self.health();
        let counters: [(&str, &str, &str, f64); 8] = [
            (
                "myagent_store_up",
                "gauge",
                "1 while the session store takes writes, 0 while they fail (buffered and retried)",
                u8::from(h.state == "ok") as f64,
            ),
            (
                "myagent_store_buffered_bytes",
                "gauge",
                "bytes of writes not yet in the session store",
                h.buffered_bytes as f64,
            ),
            (
                "myagent_store_oldest_unwritten_seconds",
                "gauge",
                "age of the oldest write not yet in the session store",
                h.oldest_unwritten_ms as f64 / 1000.0,
            ),
            (
                "myagent_store_dropped_events_total",
                "counter",
                "streamed events dropped by the --store-buffer bound",
                h.dropped_events as f64,
            ),
            (
                "myagent_store_dropped_records_total",
                "counter",
                "session and turn records dropped by the --store-buffer bound",
                h.dropped_records as f64,
            ),
            (
                "myagent_store_write_errors_total",
                "counter",
                "failed write attempts (each retried)",
                self.write_errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "myagent_store_ack_timeouts_total",
                "counter",
                "acknowledgements sent after --store-ack-timeout without their write confirmed",
                self.ack_timeouts.load(Ordering::Relaxed) as f64,
            ),
            (
                "myagent_store_bad_entries_total",
                "counter",
                "stored entries that could not be read (logged, skipped)",
                self.bad_entries.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.ack_wait.render(
            out,
            "myagent_store_ack_wait_seconds",
            "time an acknowledgement (session created, turn done) waited for its commit",
        );
    }
}
