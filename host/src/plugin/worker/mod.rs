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
//! crash is reported (`ReloadNotice::Crashed` → `system.plugin_crashed`, /metrics).

pub mod child;
pub mod frame;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot, Notify};

use self::frame::{Reply, Request};
use super::instance::{HostError, HostErrorKind, PluginTag};
use super::reload::ReloadNotice;
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
    /// Where crashes are reported (the plugin slot's notice channel).
    pub notices: Option<broadcast::Sender<ReloadNotice>>,
}

/// Processes, crashes and restarts, over all builds (for /metrics).
static LIVE: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static CRASHES: AtomicU64 = AtomicU64::new(0);

/// The worker lines of /metrics.
pub fn render_metrics() -> String {
    let mut out = String::new();
    for (name, kind, help, v) in [
        ("myagent_plugin_workers", "gauge", "Plugin worker processes running.", LIVE.load(Ordering::Relaxed)),
        ("myagent_plugin_worker_starts_total", "counter", "Plugin worker processes started (first starts, reloads and restarts).", STARTED.load(Ordering::Relaxed)),
        ("myagent_plugin_worker_crashes_total", "counter", "Plugin worker processes that died unasked (crash, exit, or stopped because a call hung).", CRASHES.load(Ordering::Relaxed)),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    out
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

struct Backoff {
    next_start: Instant,
    delay: Duration,
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
    backoff: Mutex<Backoff>,
    crashes: AtomicU64,
    epochs: AtomicU64,
    retired: AtomicBool,
    runs: AtomicUsize,
    idle: Notify,
}

/// A started worker process, before its build's [`Worker`] exists (the first start).
pub struct Started {
    conn: Arc<Conn>,
    rd: Reader,
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<()>,
    ring: Arc<Mutex<VecDeque<String>>>,
    pub manifest_json: String,
}

type Reader = tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>;

/// Why a worker could not be started or did not load the build.
#[derive(Debug)]
pub enum StartError {
    /// The process could not be started at all.
    Spawn(String),
    /// The build did not load; the worker's own message (a `LoadError`'s text).
    Load(String),
    /// The worker died or went silent while loading.
    Crashed(String),
}

/// One worker process.
struct Conn {
    epoch: u64,
    pid: u32,
    started: Instant,
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    dead: AtomicBool,
    /// Set when the host stops the process (hung call: the reason; retirement: expected).
    kill_reason: Mutex<Option<String>>,
    expected_exit: AtomicBool,
}

struct Pending {
    tx: oneshot::Sender<Result<Reply, String>>,
    tool: Option<String>,
    /// Given up by its caller while running: counted in `tools_abandoned` until it ends.
    abandoned: Option<Arc<Metrics>>,
}

impl Conn {
    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    /// Sends `req` (built with the call id) and returns the id and the reply's receiver.
    async fn request(
        &self,
        make: impl FnOnce(u64) -> Request,
        tool: Option<&str>,
    ) -> Result<(u64, oneshot::Receiver<Result<Reply, String>>), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if !self.is_alive() {
                return Err("the plugin worker has stopped".into());
            }
            pending.insert(
                id,
                Pending {
                    tx,
                    tool: tool.map(str::to_owned),
                    abandoned: None,
                },
            );
        }
        let bytes = frame::encode(&make(id));
        if let Err(e) = self.wr.lock().await.write_all(&bytes).await {
            lock(&self.pending).remove(&id);
            return Err(format!("cannot reach the plugin worker: {e}"));
        }
        Ok((id, rx))
    }

    /// Sends a request whose reply nobody waits for.
    async fn send_only(&self, req: Request) {
        let bytes = frame::encode(&req);
        let _ = self.wr.lock().await.write_all(&bytes).await;
    }

    fn kill(&self, reason: Option<String>) {
        if !self.is_alive() {
            return;
        }
        match reason {
            Some(r) => *lock(&self.kill_reason) = Some(r),
            None => self.expected_exit.store(true, Ordering::Release),
        }
        // The pid is ours until the reader task reaps it, which happens only after `dead`.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a worker process for the library open at `lib` and waits for its hello.
pub async fn start(
    opts: &WorkerOptions,
    source: &Path,
    lib: &OwnedFd,
    epoch: u64,
) -> Result<Started, StartError> {
    let (host_end, child_end) =
        std::os::unix::net::UnixStream::pair().map_err(|e| StartError::Spawn(e.to_string()))?;
    let (sock_fd, lib_fd) = (child_end.as_raw_fd(), lib.as_raw_fd());
    let mut cmd = tokio::process::Command::new(&opts.exe);
    cmd.arg("__plugin-worker")
        .arg("--source")
        .arg(source)
        .arg("--socket-fd")
        .arg(sock_fd.to_string())
        .arg("--lib-fd")
        .arg(lib_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (mem, cpu) = (opts.memory_limit, opts.cpu_limit);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The two descriptors the worker needs survive exec (they are close-on-exec here).
            for fd in [sock_fd, lib_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The worker never outlives the host (even a SIGKILLed one).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if let Some(bytes) = mem {
                let l = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                libc::setrlimit(libc::RLIMIT_AS, &l);
            }
            if let Some(secs) = cpu {
                // SIGXCPU at the soft limit; SIGKILL a second later if it is ignored.
                let l = libc::rlimit {
                    rlim_cur: secs,
                    rlim_max: secs + 1,
                };
                libc::setrlimit(libc::RLIMIT_CPU, &l);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| StartError::Spawn(format!("cannot start {}: {e}", opts.exe.display())))?;
    drop(child_end);
    STARTED.fetch_add(1, Ordering::Relaxed);
    LIVE.fetch_add(1, Ordering::Relaxed);
    let pid = child.id().unwrap_or(0);
    let label = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ring: Arc<Mutex<VecDeque<String>>> = Arc::default();
    if let Some(out) = child.stdout.take() {
        let label = label.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(plugin = %label, worker_pid = pid, "stdout: {line}");
            }
        });
    }
    let stderr = match child.stderr.take() {
        Some(err) => {
            let ring = ring.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(plugin = %label, worker_pid = pid, "stderr: {line}");
                    let mut r = lock(&ring);
                    if r.len() == STDERR_KEPT {
                        r.pop_front();
                    }
                    r.push_back(line);
                }
            })
        }
        None => tokio::spawn(async {}),
    };
    host_end
        .set_nonblocking(true)
        .map_err(|e| StartError::Spawn(e.to_string()))?;
    let stream =
        tokio::net::UnixStream::from_std(host_end).map_err(|e| StartError::Spawn(e.to_string()))?;
    let (rd, wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, frame::read_frame_async(&mut rd)).await;
    let hello: Option<Reply> = match hello {
        Ok(Ok(Some(buf))) => serde_json::from_slice(&buf).ok(),
        Ok(_) => None,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return Err(StartError::Crashed(format!(
                "the plugin worker did not load the build within {} s",
                HELLO_TIMEOUT.as_secs()
            )));
        }
    };
    let manifest_json = match hello {
        Some(Reply { ok: Some(m), .. }) => m,
        Some(Reply { err: Some(e), .. }) => {
            let _ = child.wait().await;
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return Err(StartError::Load(e));
        }
        _ => {
            // Died while loading (a crashing constructor or factory, a bad library).
            let status = child.wait().await.ok();
            let _ = tokio::time::timeout(Duration::from_millis(500), stderr).await;
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return Err(StartError::Crashed(describe_death(status, &lock(&ring))));
        }
    };
    let conn = Arc::new(Conn {
        epoch,
        pid,
        started: Instant::now(),
        wr: tokio::sync::Mutex::new(wr),
        pending: Mutex::default(),
        next_id: AtomicU64::new(1),
        dead: AtomicBool::new(false),
        kill_reason: Mutex::default(),
        expected_exit: AtomicBool::new(false),
    });
    Ok(Started {
        conn,
        rd,
        child,
        stderr,
        ring,
        manifest_json,
    })
}

/// What a dead worker's exit status and last stderr lines say happened: "stack overflow",
/// "segmentation fault (SIGSEGV) (last output: …)".
fn describe_death(status: Option<std::process::ExitStatus>, stderr: &VecDeque<String>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let said = |needle: &str| stderr.iter().any(|l| l.contains(needle));
    // Rust's runtime names these on stderr before it aborts: that says more than SIGABRT.
    if said("has overflowed its stack") {
        return "stack overflow".into();
    }
    if said("memory allocation of") {
        return "out of memory".into();
    }
    let what = match status.map(|s| (s.signal(), s.code())) {
        Some((Some(libc::SIGSEGV), _)) => "segmentation fault (SIGSEGV)".into(),
        Some((Some(libc::SIGBUS), _)) => "bus error (SIGBUS)".into(),
        Some((Some(libc::SIGABRT), _)) => "abort (SIGABRT)".into(),
        Some((Some(libc::SIGILL), _)) => "illegal instruction (SIGILL)".into(),
        Some((Some(libc::SIGFPE), _)) => "arithmetic error (SIGFPE)".into(),
        Some((Some(libc::SIGXCPU), _)) => "CPU time limit reached (SIGXCPU)".into(),
        Some((Some(libc::SIGKILL), _)) => "killed (SIGKILL)".into(),
        Some((Some(sig), _)) => format!("killed by signal {sig}"),
        Some((None, Some(code))) => format!("exit({code}) called"),
        _ => "the worker ended".into(),
    };
    match stderr.back() {
        Some(last) if !last.trim().is_empty() => {
            let last: String = last.chars().take(200).collect();
            format!("{what} (last output: {last})")
        }
        _ => what,
    }
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
    ) -> Result<(Started, WorkerSeed), (StartError, WorkerSeed)> {
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

    pub fn tag(&self) -> &Arc<PluginTag> {
        &self.tag
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
                let why = match e {
                    StartError::Spawn(s) | StartError::Load(s) | StartError::Crashed(s) => s,
                };
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
        CRASHES.fetch_add(1, Ordering::Relaxed);
        let crashes = self.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        let restart_in = {
            let mut b = lock(&self.backoff);
            if lived >= STABLE_AFTER {
                b.delay = Duration::ZERO;
            }
            let wait = b.delay;
            b.next_start = Instant::now() + wait;
            b.delay = (wait * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
            wait
        };
        tracing::error!(plugin = %self.tag, generation = self.generation, crashes, %reason,
            restart_in_ms = restart_in.as_millis() as u64, "plugin worker crashed; other sessions are unaffected");
        if let Some(n) = &self.opts.notices {
            let _ = n.send(ReloadNotice::Crashed(CrashReport {
                plugin: self.tag.clone(),
                generation: self.generation,
                reason,
                crashes,
                restart_in,
            }));
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
            backoff: Mutex::new(Backoff {
                next_start: Instant::now(),
                delay: Duration::ZERO,
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

/// Reads a worker's replies until it dies, then fails what was in flight and reports why.
async fn read_replies(
    conn: Arc<Conn>,
    mut rd: Reader,
    mut child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<()>,
    ring: Arc<Mutex<VecDeque<String>>>,
    worker: Weak<Worker>,
) {
    let broken = loop {
        match frame::read_frame_async(&mut rd).await {
            Ok(Some(buf)) => match serde_json::from_slice::<Reply>(&buf) {
                Ok(reply) => {
                    let p = lock(&conn.pending).remove(&reply.id);
                    if let Some(p) = p {
                        if let Some(m) = &p.abandoned {
                            m.tools_abandoned.dec();
                            tracing::info!(tool = ?p.tool, "abandoned call returned");
                        }
                        let _ = p.tx.send(Ok(reply));
                    }
                }
                Err(e) => break Some(format!("it sent an unreadable reply: {e}")),
            },
            Ok(None) => break None,
            Err(e) => break Some(format!("its socket failed: {e}")),
        }
    };
    conn.dead.store(true, Ordering::Release);
    if broken.is_some() {
        let _ = child.start_kill();
    }
    // The socket closed: the process is exiting (or closed fd 3 and lives on — stop it).
    let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    LIVE.fetch_sub(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_millis(500), stderr).await;
    let expected = conn.expected_exit.load(Ordering::Acquire);
    // A hung call's reason names its tool already.
    let hung = lock(&conn.kill_reason).take();
    let names_tool = hung.is_some();
    let reason = hung
        .or(broken)
        .unwrap_or_else(|| describe_death(status, &lock(&ring)));
    let in_flight: Vec<Pending> = lock(&conn.pending).drain().map(|(_, p)| p).collect();
    let tools: Vec<String> = in_flight.iter().filter_map(|p| p.tool.clone()).collect();
    let text = |tool: Option<&str>| {
        match (tool, tools.len()) {
        _ if expected => "this build of the plugin was unloaded after a reload".to_owned(),
        (Some(t), 1) => format!("the plugin crashed: {reason} in tool `{t}`; its worker is restarted for the next call"),
        (Some(t), _) => format!("the plugin crashed: {reason} while tool `{t}` and {} other call(s) were running; its worker is restarted for the next call", tools.len() - 1),
        (None, _) => format!("the plugin crashed: {reason}; its worker is restarted for the next call"),
    }
    };
    for p in in_flight {
        if let Some(m) = &p.abandoned {
            m.tools_abandoned.dec();
        }
        let _ = p.tx.send(Err(text(p.tool.as_deref())));
    }
    if expected {
        return;
    }
    let reason = match tools.as_slice() {
        [t] if !names_tool => format!("{reason} in tool `{t}`"),
        _ => reason,
    };
    if let Some(w) = worker.upgrade() {
        if !w.is_retired() {
            w.crashed(reason, conn.started.elapsed());
        }
    }
}

/// An agent instance living in a worker; re-created on a restarted process when next used.
pub struct RemoteInstance {
    worker: Arc<Worker>,
    /// (process epoch, instance id in that process).
    bound: tokio::sync::Mutex<Option<(u64, u64)>>,
    last: Mutex<Option<(Weak<Conn>, u64)>>,
}

impl RemoteInstance {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// A new instance from the build's factory. `Ok(Err(message))`: the factory said no.
    pub async fn create(
        worker: &Arc<Worker>,
        timeout: Duration,
    ) -> Result<Result<RemoteInstance, String>, HostError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let fail = |kind| HostError {
            plugin: worker.tag.clone(),
            kind,
        };
        let conn = worker.conn(deadline).await.map_err(fail)?;
        match instantiate(&conn, deadline, timeout).await.map_err(fail)? {
            Ok(id) => Ok(Ok(RemoteInstance {
                worker: worker.clone(),
                bound: tokio::sync::Mutex::new(Some((conn.epoch, id))),
                last: Mutex::new(Some((Arc::downgrade(&conn), id))),
            })),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The process and this instance's id in it, re-creating the instance on a new process.
    async fn bind(
        &self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(Arc<Conn>, u64), HostErrorKind> {
        let conn = self.worker.conn(deadline).await?;
        let mut bound = self.bound.lock().await;
        if let Some((epoch, id)) = *bound {
            if epoch == conn.epoch {
                return Ok((conn, id));
            }
        }
        match instantiate(&conn, deadline, timeout).await? {
            Ok(id) => {
                *bound = Some((conn.epoch, id));
                *lock(&self.last) = Some((Arc::downgrade(&conn), id));
                Ok((conn, id))
            }
            Err(e) => Err(HostErrorKind::Crashed(format!(
                "the plugin's factory failed on its restarted worker: {e}"
            ))),
        }
    }

    /// Runs tool `name` with `payload` (what crosses the ABI). `cancel`: the event that asks a
    /// cooperative tool to stop, sent when the call is given up.
    pub async fn call_tool(
        &self,
        name: &str,
        payload: String,
        timeout: Duration,
        metrics: &Arc<Metrics>,
        cancel: Option<String>,
    ) -> Result<String, HostErrorKind> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (conn, inst) = self.bind(deadline, timeout).await?;
        let tool = name.to_owned();
        let reply = exchange(
            &conn,
            |id| Request::Call {
                id,
                inst,
                tool,
                args: payload,
            },
            Some(name),
            deadline,
            timeout,
            Some(metrics),
            cancel.map(|event| (inst, event)),
        )
        .await?;
        match reply {
            Reply { ok: Some(out), .. } => Ok(out),
            Reply { err, .. } => Err(HostErrorKind::Crashed(err.unwrap_or_default())),
        }
    }

    /// A custom event for the plugin's hook: `Ok(Ok(json))` the events it returned.
    pub async fn handle_event(
        &self,
        session_id: &str,
        event_json: String,
        timeout: Duration,
    ) -> Result<Result<String, String>, HostErrorKind> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (conn, inst) = self.bind(deadline, timeout).await?;
        let session = session_id.to_owned();
        let reply = exchange(
            &conn,
            |id| Request::Event {
                id,
                inst,
                session,
                event: event_json,
            },
            None,
            deadline,
            timeout,
            None,
            None,
        )
        .await?;
        Ok(match reply {
            Reply { ok: Some(out), .. } => Ok(out),
            Reply { err, .. } => Err(err.unwrap_or_default()),
        })
    }

    /// Whether the build this instance came from was unloaded (a reload replaced it).
    pub fn is_retired(&self) -> bool {
        self.worker.is_retired()
    }
}

impl Drop for RemoteInstance {
    fn drop(&mut self) {
        let Some((conn, inst)) = lock(&self.last).take() else {
            return;
        };
        let Some(conn) = conn.upgrade().filter(|c| c.is_alive()) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { conn.send_only(Request::Drop { inst }).await });
        }
    }
}

async fn instantiate(
    conn: &Arc<Conn>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Result<u64, String>, HostErrorKind> {
    let reply = exchange(
        conn,
        |id| Request::Instantiate { id },
        None,
        deadline,
        timeout,
        None,
        None,
    )
    .await?;
    Ok(match reply {
        Reply { ok: Some(id), .. } => id
            .parse()
            .map_err(|_| format!("the worker returned a bad instance id {id:?}")),
        Reply { err, .. } => Err(err.unwrap_or_default()),
    })
}

/// One request and its reply, at most until `deadline`. A request given up (timeout, or this
/// future dropped because the run was cancelled) is left to finish; if it has not by
/// `deadline` + [`HANG_GRACE`], the worker is stopped as hung.
async fn exchange(
    conn: &Arc<Conn>,
    make: impl FnOnce(u64) -> Request,
    tool: Option<&str>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    metrics: Option<&Arc<Metrics>>,
    cancel: Option<(u64, String)>,
) -> Result<Reply, HostErrorKind> {
    let (id, rx) = conn
        .request(make, tool)
        .await
        .map_err(HostErrorKind::Crashed)?;
    let mut guard = GiveUp {
        conn: conn.clone(),
        id,
        done: false,
        deadline,
        timeout,
        what: match tool {
            Some(t) => format!("tool `{t}`"),
            None => "a call into the plugin".into(),
        },
        metrics: metrics.cloned(),
        cancel,
    };
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(reply))) => {
            guard.done = true;
            Ok(reply)
        }
        Ok(Ok(Err(crash))) => {
            guard.done = true;
            Err(HostErrorKind::WorkerDied(crash))
        }
        Ok(Err(_)) => {
            guard.done = true;
            Err(HostErrorKind::WorkerDied(
                "the plugin worker went away".into(),
            ))
        }
        Err(_) => Err(HostErrorKind::TimedOut(timeout)),
    }
}

/// Dropped before its reply came: the call was given up.
struct GiveUp {
    conn: Arc<Conn>,
    id: u64,
    done: bool,
    deadline: tokio::time::Instant,
    timeout: Duration,
    what: String,
    metrics: Option<Arc<Metrics>>,
    cancel: Option<(u64, String)>,
}

impl Drop for GiveUp {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        {
            let mut pending = lock(&self.conn.pending);
            let Some(p) = pending.get_mut(&self.id) else {
                return; // answered meanwhile
            };
            if let Some(m) = &self.metrics {
                m.tools_abandoned.inc();
                m.tools_abandoned_total.inc();
                p.abandoned = Some(m.clone());
            }
        }
        tracing::info!(call = %self.what, "call given up while running; asked to stop");
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (conn, id, at) = (
            self.conn.clone(),
            self.id,
            self.deadline.max(tokio::time::Instant::now()) + HANG_GRACE,
        );
        let cancel = self.cancel.take();
        let why = format!(
            "{} did not return within its {} ms timeout (+{} s grace), so its worker was stopped",
            self.what,
            self.timeout.as_millis(),
            HANG_GRACE.as_secs()
        );
        rt.spawn(async move {
            if let Some((inst, event)) = cancel {
                let cid = conn.next_id.fetch_add(1, Ordering::Relaxed);
                conn.send_only(Request::Event {
                    id: cid,
                    inst,
                    session: String::new(),
                    event,
                })
                .await;
            }
            tokio::time::sleep_until(at).await;
            if lock(&conn.pending).contains_key(&id) {
                conn.kill(Some(why));
            }
        });
    }
}
