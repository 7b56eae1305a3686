//! Plugin builds in worker processes — the host side. A [`Worker`] is one build: it starts a
//! child process (`myagent-host __plugin-worker`, see [`child`]) that loads the build's copy,
//! and talks to it over a socket pair with the framed protocol of [`frame`]. The host never
//! maps the library itself.
//!
//! Failure model: a worker that dies (signal, abort, exit, a broken socket) or is stopped
//! because a call did not return within its timeout plus [`HANG_GRACE`] fails the calls in
//! flight on it — each with a text naming what happened — and is started again on the next
//! call, after a back-off when crashes repeat. Agent instances are re-created on the new
//! process as they are next used (their in-memory state is lost, as after a reload). Each
//! crash is reported (`ReloadNotice::Crashed` via `WorkerOptions::on_crash` → `system.plugin_crashed`, /metrics).
//!
//! Here: a build's supervision (restarts, back-off, retirement after a reload, run guards);
//! `process.rs`: one process (start, requests and their places, death); `output.rs`: its
//! stdout/stderr (forwarded, bounded; the tail that explains a death); `remote.rs`: instances
//! and one request's life (timeout, cancel, hang watchdog); `child.rs`: the worker's own side.

pub mod child;
pub(crate) mod frame;
mod output;
mod process;
mod remote;

pub use process::Started;
pub use remote::RemoteInstance;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use self::process::{read_replies, start, Conn};
use super::error::{HostErrorKind, PluginTag};
use super::module::LoadError;
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// How long a call may overrun its timeout before its worker is considered hung and stopped
/// (a cooperative tool has been told to stop at the timeout; this is for one that cannot).
pub const HANG_GRACE: Duration = Duration::from_secs(2);
/// How long a new worker may take to load the build and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off between restarts of a build's worker when it keeps crashing.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that lived this long before crashing restarts without delay.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Lines of a worker's stderr kept to explain its death.
const STDERR_KEPT: usize = 20;

/// How workers are started (`--isolation worker` and its limits).
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The `myagent-host` binary (the worker is its hidden `__plugin-worker` subcommand).
    pub exe: PathBuf,
    /// `RLIMIT_AS` for each worker, in bytes.
    pub memory_limit: Option<u64>,
    /// `RLIMIT_CPU` for each worker, in seconds of CPU time over its life.
    pub cpu_limit: Option<u64>,
    /// After a reload, how long the old build's worker waits for its runs to end.
    pub drain_timeout: Duration,
    /// Where crashes are reported (the serving binary passes them on as plugin notices).
    pub on_crash: Option<CrashSink>,
    /// Where processes, starts and crashes are counted (`myagent_plugin_worker*`).
    pub metrics: Arc<Metrics>,
}

/// Receives each [`CrashReport`].
#[derive(Clone)]
pub struct CrashSink(Arc<dyn Fn(CrashReport) + Send + Sync>);

impl CrashSink {
    pub fn new(f: impl Fn(CrashReport) + Send + Sync + 'static) -> CrashSink {
        CrashSink(Arc::new(f))
    }
}

impl std::fmt::Debug for CrashSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CrashSink")
    }
}

/// A crash, as told to clients.
#[derive(Clone, Debug)]
pub struct CrashReport {
    pub plugin: Arc<PluginTag>,
    pub generation: u64,
    pub reason: String,
    /// Crashes of this build so far.
    pub crashes: u64,
    /// When the next start is allowed (0: at once).
    pub restart_in: Duration,
}

struct Restarts {
    next_start: Instant,
    backoff: Backoff,
    /// Crashes logged in the current minute, when that minute began, and those not logged.
    logged: u32,
    minute_from: Option<Instant>,
    unlogged: u64,
}

/// Crashes logged in full per minute; past that a crash loop is summarised (the next logged
/// line says how many were not), while clients and /metrics still hear of every one.
const CRASHES_LOGGED_PER_MINUTE: u32 = 3;

impl Restarts {
    /// Whether this crash is logged; if so, how many went unlogged before it.
    fn log_crash(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .minute_from
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            self.minute_from = Some(now);
            self.logged = 0;
        }
        if self.logged >= CRASHES_LOGGED_PER_MINUTE {
            self.unlogged += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// One plugin build served by worker processes (one at a time).
pub struct Worker {
    opts: WorkerOptions,
    source: PathBuf,
    /// The build's private copy: passed to each process, removed when the build is retired.
    lib: Mutex<Option<OwnedFd>>,
    copy_path: PathBuf,
    tag: Arc<PluginTag>,
    generation: u64,
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while a process is being started, so only one is.
    starting: tokio::sync::Mutex<()>,
    backoff: Mutex<Restarts>,
    crashes: AtomicU64,
    epochs: AtomicU64,
    retired: AtomicBool,
    runs: AtomicUsize,
    idle: Notify,
}

impl Worker {
    /// Starts the first worker for a build whose copy is open at `lib`: the process (its hello
    /// carries the manifest) and what makes the build's [`Worker`] once the manifest is read.
    pub async fn start_build(
        opts: WorkerOptions,
        source: &Path,
        lib: OwnedFd,
        copy_path: PathBuf,
        generation: u64,
    ) -> Result<(Started, WorkerSeed), (LoadError, WorkerSeed)> {
        let started = start(&opts, source, &lib, 1).await;
        let seed = WorkerSeed {
            opts,
            source: source.to_owned(),
            lib,
            copy_path,
            generation,
        };
        match started {
            Ok(s) => Ok((s, seed)),
            Err(e) => Err((e, seed)),
        }
    }

    /// The running process's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.current)
            .as_ref()
            .filter(|c| c.is_alive())
            .map(|c| c.pid)
    }

    /// Marks a run as started on this build; the build's worker is not retired before the
    /// guard drops.
    pub fn begin_run(self: &Arc<Self>) -> RunGuard {
        self.runs.fetch_add(1, Ordering::AcqRel);
        RunGuard(self.clone())
    }

    /// After a reload: once no run is on this build (or after the drain timeout), stop its
    /// worker and remove its copy. Sessions that stayed idle move to the new build when next
    /// used.
    pub fn retire_when_idle(self: &Arc<Self>) {
        let w = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + w.opts.drain_timeout;
            loop {
                let notified = w.idle.notified();
                if w.runs.load(Ordering::Acquire) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    tracing::warn!(plugin = %w.tag, generation = w.generation,
                        runs = w.runs.load(Ordering::Acquire),
                        "old build still running after the drain timeout; stopping its worker");
                    break;
                }
            }
            w.retire();
        });
    }

    /// Whether this build's worker was stopped for good (a newer build replaced it).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if let Some(c) = lock(&self.current).take() {
            c.kill(None);
        }
        lock(&self.lib).take();
        let _ = std::fs::remove_file(&self.copy_path);
        tracing::info!(plugin = %self.tag, generation = self.generation, "old build's worker stopped");
    }

    /// The live process, starting one (after the back-off) if none runs.
    async fn conn(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Conn>, HostErrorKind> {
        if let Some(c) = lock(&self.current).as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let _one = self.starting.lock().await;
        if let Some(c) = lock(&self.current).as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        if self.is_retired() {
            return Err(HostErrorKind::Crashed(
                "this build of the plugin was unloaded after a reload".into(),
            ));
        }
        let next = lock(&self.backoff).next_start;
        if next > Instant::now() {
            let at = tokio::time::Instant::from_std(next);
            if at > deadline {
                return Err(HostErrorKind::Crashed(format!(
                    "the plugin keeps crashing; its worker restarts in {} ms",
                    next.saturating_duration_since(Instant::now()).as_millis()
                )));
            }
            tokio::time::sleep_until(at).await;
        }
        let Some(lib) = lock(&self.lib).as_ref().and_then(|f| f.try_clone().ok()) else {
            return Err(HostErrorKind::Crashed("the build's copy is gone".into()));
        };
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        match start(&self.opts, &self.source, &lib, epoch).await {
            Ok(started) => {
                tracing::info!(plugin = %self.tag, worker_pid = started.conn.pid, "plugin worker restarted");
                Ok(self.adopt(started))
            }
            Err(e) => {
                let why = e.to_string();
                self.crashed(format!("it could not be restarted: {why}"), Duration::ZERO);
                Err(HostErrorKind::Crashed(format!(
                    "the plugin worker could not be restarted: {why}"
                )))
            }
        }
    }

    /// Makes `started` this build's live process and starts reading its replies.
    fn adopt(self: &Arc<Self>, started: Started) -> Arc<Conn> {
        let Started {
            conn,
            rd,
            child,
            stderr,
            ring,
            ..
        } = started;
        *lock(&self.current) = Some(conn.clone());
        tokio::spawn(read_replies(
            conn.clone(),
            rd,
            child,
            stderr,
            ring,
            Arc::downgrade(self),
        ));
        conn
    }

    /// Counts a crash, sets the back-off, tells clients.
    fn crashed(&self, reason: String, lived: Duration) {
        self.opts.metrics.plugin_worker_crashes.inc();
        let crashes = self.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        let (restart_in, log) = {
            let mut b = lock(&self.backoff);
            let wait = b.backoff.failed_after(lived, STABLE_AFTER);
            b.next_start = Instant::now() + wait;
            (wait, b.log_crash())
        };
        match log {
            Some(0) => {
                tracing::error!(plugin = %self.tag, generation = self.generation, crashes, %reason,
                restart_in_ms = restart_in.as_millis() as u64, "plugin worker crashed; other sessions are unaffected")
            }
            Some(unlogged) => {
                tracing::error!(plugin = %self.tag, generation = self.generation, crashes, unlogged, %reason,
                restart_in_ms = restart_in.as_millis() as u64, "plugin worker crashed; other sessions are unaffected (it kept crashing: {unlogged} crashes since the last one logged)")
            }
            None if lock(&self.backoff).unlogged == 1 => tracing::error!(plugin = %self.tag,
                generation = self.generation, "plugin worker keeps crashing; further crashes this minute are counted (/metrics, system.plugin_crashed), not logged"),
            None => {}
        }
        if let Some(sink) = &self.opts.on_crash {
            (sink.0)(CrashReport {
                plugin: self.tag.clone(),
                generation: self.generation,
                reason,
                crashes,
                restart_in,
            });
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.current).take() {
            c.kill(None);
        }
        let _ = std::fs::remove_file(&self.copy_path);
    }
}

/// What a build's first start leaves for [`WorkerSeed::into_worker`] once the manifest is known.
pub struct WorkerSeed {
    opts: WorkerOptions,
    source: PathBuf,
    lib: OwnedFd,
    copy_path: PathBuf,
    generation: u64,
}

impl WorkerSeed {
    pub fn into_worker(self, tag: Arc<PluginTag>, first: Started) -> Arc<Worker> {
        let w = Arc::new(Worker {
            opts: self.opts,
            source: self.source,
            lib: Mutex::new(Some(self.lib)),
            copy_path: self.copy_path,
            tag,
            generation: self.generation,
            current: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            backoff: Mutex::new(Restarts {
                next_start: Instant::now(),
                logged: 0,
                minute_from: None,
                unlogged: 0,
                backoff: Backoff::immediate_then(BACKOFF_FIRST, BACKOFF_MAX),
            }),
            crashes: AtomicU64::new(0),
            epochs: AtomicU64::new(1),
            retired: AtomicBool::new(false),
            runs: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        w.adopt(first);
        w
    }

    /// The copy is not needed after a failed load.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.copy_path);
    }
}

/// Held by a run on a worker-served build (see [`Worker::begin_run`]).
pub struct RunGuard(Arc<Worker>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.0.runs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
