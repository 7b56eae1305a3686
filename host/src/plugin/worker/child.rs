//! The worker process: `myagent-host __plugin-worker` loads one plugin build and runs its
//! factory, tools and event hooks for the host, which talks to it over the socket it passed
//! (see [`super::frame`]). Requests run concurrently (as on the host's blocking pool), each on
//! the thread that read it, which writes its own reply. The worker exits when the host closes
//! the socket — or dies with the host (`PR_SET_PDEATHSIG`).
//!
//! Whatever plugin code does here — overflow its stack, `abort()`, segfault, `exit()` — ends
//! this process only; the host sees the socket close and reports the calls in flight failed.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::std_types::{RErr, ROk, RStr};
use myagent_plugin_api::abi::{AgentInstanceBox, PluginModule_Ref};

use super::frame::{self, Answer, Hello, InstanceId, Reply, Request};
use crate::plugin::module::LoadError;

/// Stack of the threads that run plugin code (the host's blocking pool gives 2 MiB; a worker
/// can afford the main thread's 8 MiB, only what is touched is committed).
const STACK: usize = 8 * 1024 * 1024;
/// Threads kept waiting for the next request once a burst is over.
const KEEP_READY: usize = 2;

type Instances = Mutex<HashMap<InstanceId, Arc<AgentInstanceBox>>>;

/// What the worker's threads share. Threads take turns as the *reader* (leader/followers): the
/// one that reads a request runs it itself, while the next waiting thread takes over reading —
/// no hand-off between a reading thread and a running one on a call's path.
struct Shared {
    module: PluginModule_Ref,
    reader: Mutex<std::io::BufReader<UnixStream>>,
    writer: Mutex<UnixStream>,
    instances: Instances,
    next_instance: AtomicU64,
    /// Threads reading or waiting to read.
    ready: AtomicUsize,
}

impl Shared {
    fn send(&self, reply: Reply) {
        let frame = reply.bounded();
        let mut w = lock(&self.writer);
        if std::io::Write::write_all(&mut *w, &frame).is_err() {
            // The host is gone.
            std::process::exit(0);
        }
    }
}

/// Starts another reader thread; false if the system refused (out of threads or memory).
fn spawn_thread(shared: &Arc<Shared>) -> bool {
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("plugin-call".into())
        .stack_size(STACK)
        .spawn(move || thread_main(sh, true));
    if let Err(e) = spawned {
        shared.ready.fetch_sub(1, Ordering::AcqRel);
        eprintln!("myagent worker: cannot start a thread: {e}");
        return false;
    }
    true
}

/// Read a request, make sure another thread reads the next, run it, reply; again. A thread
/// that may leave does so when enough others are ready (the main thread never leaves: its
/// return would end the process).
fn thread_main(sh: Arc<Shared>, may_leave: bool) {
    loop {
        let frame = frame::read_frame(&mut *lock(&sh.reader));
        let frame = match frame {
            Ok(Some(f)) => f,
            // The host closed the socket (it dropped this build, or is exiting).
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("myagent worker: reading from the host: {e}");
                std::process::exit(0);
            }
        };
        let request = match serde_json::from_slice::<Request>(&frame) {
            Ok(request) => request,
            Err(e) => {
                eprintln!("myagent worker: unreadable request: {e}");
                std::process::exit(65);
            }
        };
        if sh.ready.fetch_sub(1, Ordering::AcqRel) == 1 && !spawn_thread(&sh) {
            // Nobody else would read while this runs: refuse it (the worker goes on for the
            // calls already running) and stay the reader.
            refuse(&sh, request);
            sh.ready.fetch_add(1, Ordering::AcqRel);
            continue;
        }
        handle(&sh, request);
        if may_leave && sh.ready.load(Ordering::Acquire) >= KEEP_READY {
            return;
        }
        sh.ready.fetch_add(1, Ordering::AcqRel);
    }
}

/// Answers a request with an error instead of running it (no thread can be spared for it).
fn refuse(sh: &Shared, request: Request) {
    let id = match request {
        Request::Instantiate { id } | Request::Call { id, .. } | Request::Event { id, .. } => id,
        // Quick, and nothing waits for their answer.
        other @ (Request::Cancel { .. } | Request::Drop { .. }) => return handle(sh, other),
    };
    sh.send(Reply {
        id,
        result: Err("the plugin's worker cannot start another thread (too many calls at once); this call was not run".into()),
    });
}

fn handle(sh: &Shared, request: Request) {
    let instance = |inst: InstanceId| {
        lock(&sh.instances)
            .get(&inst)
            .cloned()
            .ok_or_else(|| format!("no agent instance {inst} in this worker"))
    };
    match request {
        Request::Instantiate { id } => {
            let result = match (sh.module.new_instance())() {
                ROk(inst) => {
                    let n = sh.next_instance.fetch_add(1, Ordering::Relaxed);
                    lock(&sh.instances).insert(n, Arc::new(inst));
                    Ok(Answer::Instance(n))
                }
                RErr(e) => Err(e.into_string()),
            };
            sh.send(Reply { id, result });
        }
        Request::Call {
            id,
            inst,
            tool,
            args,
        } => {
            let result = instance(inst).map(|i| {
                i.call_tool(RStr::from_str(&tool), RStr::from_str(&args))
                    .into_string()
            });
            sh.send(Reply::json(id, result));
        }
        Request::Event {
            id,
            inst,
            session,
            event,
        } => {
            let result = instance(inst).and_then(|i| {
                match i.handle_event(RStr::from_str(&session), RStr::from_str(&event)) {
                    ROk(json) => Ok(json.into_string()),
                    RErr(e) => Err(e.into_string()),
                }
            });
            sh.send(Reply::json(id, result));
        }
        Request::Cancel { inst, event } => {
            // The plugin API delivers a cancel to the instance's hook, with no session; what
            // the hook returns is not wanted.
            if let Ok(i) = instance(inst) {
                let _ = i.handle_event(RStr::from_str(""), RStr::from_str(&event));
            }
        }
        Request::Drop { inst } => {
            let gone = lock(&sh.instances).remove(&inst);
            drop(gone);
        }
    }
}

/// The worker's entry point. `socket_fd` and `lib_fd` were left open by the host across
/// `exec`; `source` is the operator's file name (for messages only).
pub fn run(source: &Path, socket_fd: RawFd, lib_fd: RawFd) -> std::process::ExitCode {
    // The host set this before exec too; a host that died before that point is caught here.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() == 1 {
            return std::process::ExitCode::FAILURE;
        }
    }
    // SAFETY: the host passed this descriptor for us alone.
    let sock = unsafe { UnixStream::from_raw_fd(socket_fd) };
    let writer = match sock.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("myagent worker: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let hello = |manifest: Result<String, LoadError>| {
        let _ = frame::write_frame(&mut &writer, &Hello { manifest });
    };
    let lib = format!("/proc/self/fd/{lib_fd}");
    let (module, manifest) = match crate::plugin::module::open_module(source, Path::new(&lib)) {
        Ok(loaded) => loaded,
        Err(e) => {
            hello(Err(e));
            return std::process::ExitCode::SUCCESS;
        }
    };
    hello(Ok(manifest));
    let shared = Arc::new(Shared {
        module,
        reader: Mutex::new(std::io::BufReader::with_capacity(64 * 1024, sock)),
        writer: Mutex::new(writer),
        instances: Mutex::default(),
        next_instance: AtomicU64::new(1),
        ready: AtomicUsize::new(1),
    });
    // This thread is the first reader.
    thread_main(shared, false);
    std::process::ExitCode::SUCCESS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
