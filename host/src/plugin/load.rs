//! Loading a plugin build: copy, ELF check, `dlopen`, version checks, the manifest, a first
//! instance — each failure a [`LoadError`] meant to be shown to the user as is.

use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::std_types::{RErr, ROk};
use myagent_plugin_api::abi::PluginModule_Ref;
use myagent_plugin_api::{Manifest, TERMINATE_TOOL};

use std::time::Duration;

use myagent_plugin_api::wire;

use super::copies;
use super::error::{on_blocking_pool, HostError, PluginError, PluginTag};
use super::instance::Instance;
use super::module::open_module;
pub(super) use super::module::LoadError;
use super::worker::{RemoteInstance, RunGuard, Worker, WorkerOptions};

/// A loaded, validated plugin build. Cheap to share. In a worker (the default) the build lives
/// in its own process and is unloaded with it; in process, abi_stable keeps every library
/// mapped for the life of the process.
pub struct Plugin {
    pub manifest: Manifest,
    /// "name version", carried by every error from this build.
    pub tag: Arc<PluginTag>,
    backend: Backend,
    /// The file the operator named (the one that is watched).
    pub source: PathBuf,
    /// The unique copy that was actually `dlopen`ed (by the host or by the build's worker).
    pub loaded_from: PathBuf,
    /// 1 for the first load, +1 for every successful reload.
    pub generation: u64,
}

enum Backend {
    InProcess(PluginModule_Ref),
    Worker(Arc<Worker>),
}

/// Where plugin code runs.
#[derive(Clone, Debug)]
pub enum Isolation {
    /// In a worker process per build (the default): a crash fails the calls in flight, not the
    /// host; old builds are really unloaded.
    Worker(WorkerOptions),
    /// In the host process: a few µs faster per call, but a plugin that crashes takes the host
    /// down, and no build is ever unloaded.
    InProcess,
}

/// Loads plugin builds through a copy directory, in the chosen [`Isolation`].
pub struct Loader {
    pub copies: Arc<copies::CopyDir>,
    pub isolation: Isolation,
}

impl Loader {
    /// Loads and validates `source` (see [`load`]): the manifest, and one instance from the
    /// factory, so a broken build is refused before it replaces a working one.
    pub async fn load(&self, source: &Path, generation: u64) -> Result<Plugin, LoadError> {
        match &self.isolation {
            Isolation::InProcess => {
                let (src, copies) = (source.to_owned(), self.copies.clone());
                tokio::task::spawn_blocking(move || load(&src, &copies, generation))
                    .await
                    .map_err(|e| LoadError::Factory(format!("the loader crashed: {e}")))?
            }
            Isolation::Worker(opts) => load_in_worker(source, &self.copies, opts, generation).await,
        }
    }
}

async fn load_in_worker(
    source: &Path,
    copies: &Arc<copies::CopyDir>,
    opts: &WorkerOptions,
    generation: u64,
) -> Result<Plugin, LoadError> {
    if !source.is_file() {
        return Err(LoadError::NotFound(source.to_owned()));
    }
    let (src, cps) = (source.to_owned(), copies.clone());
    let copy = tokio::task::spawn_blocking(move || cps.copy_in(&src))
        .await
        .map_err(|e| LoadError::Factory(format!("the loader crashed: {e}")))?
        .map_err(|e| LoadError::Copy {
            path: copies.dir().to_owned(),
            source: e,
        })?;
    let copies::Copy {
        path, bytes, fd, ..
    } = copy;
    if let Err(reason) = check_elf(&bytes) {
        let _ = std::fs::remove_file(&path);
        return Err(LoadError::NotALibrary {
            path: source.to_owned(),
            reason,
        });
    }
    drop(bytes);
    let started = Worker::start_build(opts.clone(), source, fd, path.clone(), generation).await;
    let (first, seed) = match started {
        Ok(s) => s,
        Err((e, seed)) => {
            seed.discard();
            return Err(e);
        }
    };
    let manifest = parse_manifest(&first.manifest_json);
    let tag = Arc::new(match &manifest {
        Ok(m) => PluginTag {
            name: m.name.clone(),
            version: m.version.clone(),
        },
        Err(_) => PluginTag {
            name: source.display().to_string(),
            version: String::new(),
        },
    });
    // From here the worker is owned: dropping it stops the process and removes the copy.
    let worker = seed.into_worker(tag.clone(), first);
    let manifest = manifest?;
    // A factory that works for the manifest can still fail later; prove it once now.
    match RemoteInstance::create(&worker, FACTORY_CHECK_TIMEOUT).await {
        Ok(Ok(_first)) => {}
        Ok(Err(message)) => return Err(LoadError::Factory(message)),
        Err(e) => return Err(LoadError::Crashed(e.kind.to_string())),
    }
    Ok(Plugin {
        tag,
        manifest,
        backend: Backend::Worker(worker),
        source: source.to_owned(),
        loaded_from: path,
        generation,
    })
}

/// How long the factory may take when a new build is checked.
const FACTORY_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

impl Plugin {
    /// A fresh agent instance for one session: the plugin's factory, on the blocking pool or in
    /// the build's worker.
    pub async fn instantiate(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<Result<Instance, PluginError>, HostError> {
        let tool_context = self.manifest.tool_context >= wire::TOOL_CONTEXT_VERSION;
        match &self.backend {
            Backend::InProcess(_) => {
                let plugin = self.clone();
                on_blocking_pool(&self.tag, timeout, move || plugin.new_instance_blocking()).await
            }
            Backend::Worker(w) => Ok(match RemoteInstance::create(w, timeout).await? {
                Ok(remote) => Ok(Instance::from_remote(
                    remote,
                    self.tag.clone(),
                    tool_context,
                )),
                Err(message) => Err(PluginError {
                    plugin: self.tag.clone(),
                    message,
                }),
            }),
        }
    }

    /// The factory, on the calling thread: only for the in-process loader (itself on the
    /// blocking pool).
    pub(super) fn new_instance_blocking(&self) -> Result<Instance, PluginError> {
        let Backend::InProcess(module) = &self.backend else {
            return Err(PluginError {
                plugin: self.tag.clone(),
                message: "this build runs in a worker".into(),
            });
        };
        match (module.new_instance())() {
            ROk(inner) => Ok(Instance::from_abi(
                inner,
                self.tag.clone(),
                self.manifest.tool_context >= wire::TOOL_CONTEXT_VERSION,
            )),
            RErr(e) => Err(PluginError {
                plugin: self.tag.clone(),
                message: e.into_string(),
            }),
        }
    }

    /// Marks a run as started on this build: a worker-served build is not retired while a run
    /// holds one of these.
    pub fn begin_run(&self) -> Option<RunGuard> {
        match &self.backend {
            Backend::Worker(w) => Some(w.begin_run()),
            Backend::InProcess(_) => None,
        }
    }

    /// This build was replaced: its worker stops once its runs end (bounded by the drain
    /// timeout). In process, nothing can be unloaded.
    pub fn retire_when_idle(&self) {
        if let Backend::Worker(w) = &self.backend {
            w.retire_when_idle();
        }
    }

    /// "worker" or "in-process".
    pub fn isolation(&self) -> &'static str {
        match &self.backend {
            Backend::Worker(_) => "worker",
            Backend::InProcess(_) => "in-process",
        }
    }

    /// The pid of the build's worker process, while one runs.
    pub fn worker_pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Worker(w) => w.pid(),
            Backend::InProcess(_) => None,
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("generation", &self.generation)
            .field("isolation", &self.isolation())
            .finish()
    }
}

fn parse_manifest(json: &str) -> Result<Manifest, LoadError> {
    let manifest: Manifest =
        serde_json::from_str(json).map_err(|e| LoadError::BadManifest(e.to_string()))?;
    validate_manifest(&manifest)?;
    Ok(manifest)
}

/// Loads `copy` (a unique copy of `source`, see [`copies`]) in this process and validates it:
/// the ELF check on the bytes that were written, `dlopen` through the copy's open descriptor,
/// version checks, the manifest, and one instance from the factory.
fn load_copy(source: &Path, copy: &copies::Copy, generation: u64) -> Result<Plugin, LoadError> {
    check_elf(&copy.bytes).map_err(|reason| LoadError::NotALibrary {
        path: source.to_owned(),
        reason,
    })?;
    let (module, json) = open_module(source, &copy.load_path)?;
    let manifest = parse_manifest(&json)?;
    let plugin = Plugin {
        tag: Arc::new(PluginTag {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
        }),
        manifest,
        backend: Backend::InProcess(module),
        source: source.to_owned(),
        loaded_from: copy.path.clone(),
        generation,
    };
    // A factory that works for the manifest can still fail later; prove it once more now so a
    // broken build is refused before it replaces a working one.
    plugin
        .new_instance_blocking()
        .map_err(|e| LoadError::Factory(e.message))?;
    Ok(plugin)
}

/// Loads `source` in this process, through a fresh copy in `copies`.
pub fn load(source: &Path, copies: &copies::CopyDir, generation: u64) -> Result<Plugin, LoadError> {
    if !source.is_file() {
        return Err(LoadError::NotFound(source.to_owned()));
    }
    let copy = copies.copy_in(source).map_err(|e| LoadError::Copy {
        path: copies.dir().to_owned(),
        source: e,
    })?;
    let loaded = load_copy(source, &copy, generation);
    // `dlopen`ed (or tried): the descriptor's name must never be reused (see `Copy::fd`).
    let _ = copy.fd.into_raw_fd();
    loaded
}

/// Checks that `data` is a complete 64-bit little-endian ELF shared object before `dlopen`
/// sees it: glibc crashes the process (SIGSEGV/SIGBUS) on a truncated library, which is what a
/// half-written build looks like.
fn check_elf(data: &[u8]) -> Result<(), String> {
    let len = data.len() as u64;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("invalid ELF header".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    if u16_at(16) != Some(3) {
        return Err("not a shared object (ELF type is not DYN)".into());
    }
    let short = || "file is truncated (incomplete build?)".to_string();
    let (phoff, phentsize, phnum) = (
        u64_at(0x20).ok_or_else(short)?,
        u16_at(0x36).ok_or_else(short)?,
        u16_at(0x38).ok_or_else(short)?,
    );
    let (shoff, shentsize, shnum) = (
        u64_at(0x28).ok_or_else(short)?,
        u16_at(0x3A).ok_or_else(short)?,
        u16_at(0x3C).ok_or_else(short)?,
    );
    if phoff.saturating_add(phentsize.saturating_mul(phnum)) > len
        || shoff.saturating_add(shentsize.saturating_mul(shnum)) > len
    {
        return Err(short());
    }
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let (offset, filesz) = (
            u64_at(at + 8).ok_or_else(short)?,
            u64_at(at + 32).ok_or_else(short)?,
        );
        if u32_at(at) == Some(1) && offset.saturating_add(filesz) > len {
            return Err(short());
        }
    }
    Ok(())
}

fn validate_manifest(m: &Manifest) -> Result<(), LoadError> {
    if m.name.trim().is_empty() {
        return Err(LoadError::BadManifest("the agent has no name".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for t in &m.tools {
        let ok = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(LoadError::BadManifest(format!(
                "tool name {:?} must match ^[a-zA-Z0-9_-]{{1,64}}$ (the OpenAI API refuses others)",
                t.name
            )));
        }
        if t.name == TERMINATE_TOOL {
            return Err(LoadError::BadManifest(
                "tool name `terminate` is reserved by the host".into(),
            ));
        }
        if !seen.insert(&t.name) {
            return Err(LoadError::BadManifest(format!(
                "tool `{}` is defined twice",
                t.name
            )));
        }
        if !t.parameters.is_object() {
            return Err(LoadError::BadManifest(format!(
                "tool `{}`: parameters must be a JSON Schema object",
                t.name
            )));
        }
    }
    Ok(())
}
