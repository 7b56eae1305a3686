//! One worker process: starting it (descriptors, limits, the hello), talking to it (requests
//! and their replies by id), and its death — what it was, and failing what was in flight.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::frame::{self, Reply, Request};
use super::output::{describe_death, forward_output, StderrTail};
use super::{lock, Worker, WorkerOptions, HELLO_TIMEOUT};
use crate::metrics::Metrics;
use crate::plugin::module::LoadError;

/// A started worker process, before its build's [`Worker`] exists (the first start).
pub struct Started {
    pub(super) conn: Arc<Conn>,
    pub(super) rd: Reader,
    pub(super) child: tokio::process::Child,
    pub(super) stderr: tokio::task::JoinHandle<()>,
    pub(super) ring: Arc<Mutex<StderrTail>>,
    pub manifest_json: String,
}

/// How long a dead worker's stderr may take to reach its end (EOF comes once the process is
/// gone; its last lines say what killed it — "has overflowed its stack", "memory allocation …
/// failed"): on a loaded machine the reader task can be well behind.
const STDERR_DRAIN: Duration = Duration::from_secs(3);

pub(super) type Reader = tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>;

/// One worker process.
pub(super) struct Conn {
    pub(super) epoch: u64,
    pub(super) pid: u32,
    pub(super) started: Instant,
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    dead: AtomicBool,
    /// Set when the host stops the process (hung call: the reason; retirement: expected).
    kill_reason: Mutex<Option<String>>,
    expected_exit: AtomicBool,
    metrics: Arc<Metrics>,
    /// Places for calls in the worker ([`MAX_IN_FLIGHT`]) and the calls waiting for one.
    slots: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
}

/// Calls one worker runs at once (each holds one of its threads); more wait, in order.
pub(super) const MAX_IN_FLIGHT: usize = 64;
/// Calls that may wait for one of those places; beyond, a call is refused at once.
pub(super) const MAX_WAITING: usize = 256;

/// Why a request was not sent.
pub(super) enum NotSent {
    /// The worker is gone or unreachable.
    Gone(String),
    /// The worker's places and its queue are full.
    Busy(String),
    /// The caller's deadline passed while it waited for a place.
    TimedOut,
}

/// One of the worker's waiting places, given back however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) struct Pending {
    pub(super) tx: oneshot::Sender<Result<Reply, String>>,
    /// The call's place in the worker, held until its reply (or the worker's end).
    _slot: tokio::sync::OwnedSemaphorePermit,
    pub(super) tool: Option<String>,
    /// Given up by its caller while running: counted in `tools_abandoned` until it ends.
    pub(super) abandoned: Option<Arc<Metrics>>,
}

impl Conn {
    pub(super) fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    /// Sends `req` (built with the call id) once the worker has a place for it (waiting at
    /// most until `deadline`), and returns the id and the reply's receiver.
    pub(super) async fn request(
        &self,
        make: impl FnOnce(u64) -> Request,
        tool: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, oneshot::Receiver<Result<Reply, String>>), NotSent> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = make(id);
        // A new session's agent waits for a place however many calls wait: sessions are bounded
        // by the session caps (`--max-sessions`, per address, per principal) and an agent is made
        // in microseconds, so a burst of new sessions (a thousand clients in a second) queues
        // for a moment instead of being refused. Tool calls and custom events, which may run
        // long, keep the bound.
        let bounded = !matches!(req, Request::Instantiate { .. });
        let slot = self.place(deadline, bounded).await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if !self.is_alive() {
                return Err(NotSent::Gone("the plugin worker has stopped".into()));
            }
            pending.insert(
                id,
                Pending {
                    tx,
                    _slot: slot,
                    tool: tool.map(str::to_owned),
                    abandoned: None,
                },
            );
        }
        let bytes = frame::encode(&req);
        if let Err(e) = self.wr.lock().await.write_all(&bytes).await {
            lock(&self.pending).remove(&id);
            return Err(NotSent::Gone(format!(
                "cannot reach the plugin worker: {e}"
            )));
        }
        Ok((id, rx))
    }

    /// A place for one call: at once, or after waiting in order — unless the wait is
    /// `bounded` and [`MAX_WAITING`] calls wait already (refused: the worker is flooded), or
    /// `deadline` passes.
    async fn place(
        &self,
        deadline: tokio::time::Instant,
        bounded: bool,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, NotSent> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if bounded && self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(NotSent::Busy(format!(
                "the plugin is busy: {MAX_IN_FLIGHT} calls are running in its worker and {MAX_WAITING} are waiting; this one was not run"
            )));
        }
        let _waiting = bounded.then(|| Waiting(&self.waiting));
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(NotSent::Gone("the plugin worker has stopped".into())),
            Err(_) => Err(NotSent::TimedOut),
        }
    }

    /// Sends a request whose reply nobody waits for.
    pub(super) async fn send_only(&self, req: Request) {
        let bytes = frame::encode(&req);
        let _ = self.wr.lock().await.write_all(&bytes).await;
    }

    pub(super) fn kill(&self, reason: Option<String>) {
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

/// Starts a worker process for the library open at `lib` and waits for its hello.
pub(super) async fn start(
    opts: &WorkerOptions,
    source: &Path,
    lib: &OwnedFd,
    epoch: u64,
) -> Result<Started, LoadError> {
    let (host_end, child_end) =
        std::os::unix::net::UnixStream::pair().map_err(|e| LoadError::Worker(e.to_string()))?;
    let mut child = command(opts, source, child_end.as_raw_fd(), lib.as_raw_fd())
        .spawn()
        .map_err(|e| LoadError::Worker(format!("cannot start {}: {e}", opts.exe.display())))?;
    drop(child_end);
    let metrics = opts.metrics.clone();
    metrics.plugin_worker_starts.inc();
    metrics.plugin_workers.inc();
    let pid = child.id().unwrap_or(0);
    let ring: Arc<Mutex<StderrTail>> = Arc::default();
    let stderr = forward_output(&mut child, source, pid, &ring, &metrics);
    host_end
        .set_nonblocking(true)
        .map_err(|e| LoadError::Worker(e.to_string()))?;
    let stream =
        tokio::net::UnixStream::from_std(host_end).map_err(|e| LoadError::Worker(e.to_string()))?;
    let (rd, wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let manifest_json = match hello(&mut rd).await {
        Ok(m) => m,
        Err(e) => {
            let e = match e {
                Hello::TimedOut => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    LoadError::Crashed(format!(
                        "the plugin worker did not load the build within {} s",
                        HELLO_TIMEOUT.as_secs()
                    ))
                }
                Hello::Refused(e) => {
                    let _ = child.wait().await;
                    e
                }
                Hello::Died => {
                    // Died while loading (a crashing constructor or factory, a bad library).
                    let status = child.wait().await.ok();
                    let _ = tokio::time::timeout(STDERR_DRAIN, stderr).await;
                    LoadError::Crashed(describe_death(status, &lock(&ring)))
                }
            };
            metrics.plugin_workers.dec();
            return Err(e);
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
        metrics,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        waiting: AtomicUsize::new(0),
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

/// The worker's command line: the hidden subcommand, the two descriptors it inherits, and its
/// limits (set between fork and exec).
fn command(
    opts: &WorkerOptions,
    source: &Path,
    sock_fd: i32,
    lib_fd: i32,
) -> tokio::process::Command {
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
    cmd
}

/// Why no manifest came in the worker's first frame.
enum Hello {
    TimedOut,
    /// The worker's own account of a failed load.
    Refused(LoadError),
    /// The socket closed (or said nothing readable): the worker died loading.
    Died,
}

/// The worker's first frame: the manifest's JSON, or why there is none.
async fn hello(
    rd: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<String, Hello> {
    let frame = tokio::time::timeout(HELLO_TIMEOUT, frame::read_frame_async(rd))
        .await
        .map_err(|_| Hello::TimedOut)?;
    let hello: Option<frame::Hello> = match frame {
        Ok(Some(buf)) => serde_json::from_slice(&buf).ok(),
        _ => None,
    };
    match hello {
        Some(frame::Hello { manifest }) => manifest.map_err(Hello::Refused),
        None => Err(Hello::Died),
    }
}

/// Reads a worker's replies until it dies, then fails what was in flight and reports why.
pub(super) async fn read_replies(
    conn: Arc<Conn>,
    mut rd: Reader,
    mut child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<()>,
    ring: Arc<Mutex<StderrTail>>,
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
    conn.metrics.plugin_workers.dec();
    let _ = tokio::time::timeout(STDERR_DRAIN, stderr).await;
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
