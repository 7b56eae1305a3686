//! Loading agent plugins: the manifest, instances, tool calls, and the errors a load can hit.
//!
//! **Architecture Invariant:** nothing here hands a plugin path to `dlopen` except through a
//! fresh, uniquely named copy (see [`copies`]): glibc returns the old code for a path it has
//! already opened, and a loaded file overwritten in place crashes the process.

pub mod copies;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::std_types::{RErr, ROk, RStr};
use myagent_plugin_api::abi::{AgentInstanceBox, PluginModule_Ref};
use myagent_plugin_api::{wire, ToolResult, API_VERSION};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// What a plugin says about its agent (`Agent::manifest` in plugin-api), checked by the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub api_version: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default)]
    pub next_step_prompt: String,
    pub max_steps: u32,
    #[serde(default)]
    pub enable_tracing: bool,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub tool_timeout_ms: Option<u64>,
    #[serde(default)]
    pub event_prefix: Option<String>,
    /// The tool-call context convention the plugin understands (0: built before it existed;
    /// its tools then get bare arguments and cannot be told to stop).
    #[serde(default)]
    pub tool_context: u32,
    pub tools: Vec<ToolSpec>,
}

/// One tool as the model sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// Why a plugin could not be loaded. Each message is meant to be shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin file not found: {0}")]
    NotFound(PathBuf),
    #[error("could not copy the plugin to {path}: {source}")]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a loadable shared library: {path}: {reason}")]
    NotALibrary { path: PathBuf, reason: String },
    #[error("not a myagent plugin: {0} exports no agent (was it built with `export_agent!` and crate-type = [\"cdylib\"]?)")]
    NotAPlugin(PathBuf),
    #[error("incompatible plugin: built against myagent-plugin-api {plugin}, this host supports {host}; rebuild the plugin against myagent-plugin-api {host}")]
    IncompatibleApi { plugin: String, host: String },
    #[error("incompatible plugin: built with abi_stable {plugin}, this host uses abi_stable {host}; rebuild the plugin against myagent-plugin-api {api}")]
    IncompatibleAbiStable {
        plugin: String,
        host: String,
        api: String,
    },
    #[error("incompatible plugin: its interface types differ from this host's (same version number, different definitions): {detail}")]
    AbiMismatch { detail: String },
    #[error("incompatible plugin: plugin API version {plugin}, this host speaks version {host}")]
    ApiVersion { plugin: u32, host: u32 },
    #[error("the plugin failed to start: {0}")]
    Factory(String),
    #[error("the plugin's manifest is invalid: {0}")]
    BadManifest(String),
}

/// A loaded, validated plugin build. Cheap to share; never unloaded (abi_stable keeps every
/// library mapped for the life of the process).
pub struct Plugin {
    pub manifest: Manifest,
    module: PluginModule_Ref,
    /// The file the operator named (the one that is watched).
    pub source: PathBuf,
    /// The unique copy that was actually `dlopen`ed.
    pub loaded_from: PathBuf,
    /// 1 for the first load, +1 for every successful reload.
    pub generation: u64,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("generation", &self.generation)
            .finish()
    }
}

/// The host's plugin-api version (what plugins must be built against).
pub fn host_api_crate_version() -> String {
    PluginModule_Ref::VERSION_STRINGS.version.to_string()
}

/// Loads the library at `copy` (already a unique copy of `source`) and validates it: version
/// checks, the manifest, and one instance from the factory.
pub fn load_copy(source: &Path, copy: &Path, generation: u64) -> Result<Plugin, LoadError> {
    check_elf(copy).map_err(|reason| LoadError::NotALibrary {
        path: source.to_owned(),
        reason,
    })?;
    let header = lib_header_from_path(copy).map_err(|e| map_library_error(source, e))?;
    let module = header
        .init_root_module::<PluginModule_Ref>()
        .map_err(|e| map_library_error(source, e))?;
    let api = (module.api_version())();
    if api != API_VERSION {
        return Err(LoadError::ApiVersion {
            plugin: api,
            host: API_VERSION,
        });
    }
    let json = match (module.manifest())() {
        ROk(json) => json,
        RErr(e) => return Err(LoadError::Factory(e.into_string())),
    };
    let manifest: Manifest =
        serde_json::from_str(json.as_str()).map_err(|e| LoadError::BadManifest(e.to_string()))?;
    validate_manifest(&manifest)?;
    let plugin = Plugin {
        manifest,
        module,
        source: source.to_owned(),
        loaded_from: copy.to_owned(),
        generation,
    };
    // A factory that works for the manifest can still fail later; prove it once more now so a
    // broken build is refused before it replaces a working one.
    plugin.new_instance().map_err(LoadError::Factory)?;
    Ok(plugin)
}

/// Loads `source` through a fresh copy in `copies`.
pub fn load(source: &Path, copies: &copies::CopyDir, generation: u64) -> Result<Plugin, LoadError> {
    if !source.is_file() {
        return Err(LoadError::NotFound(source.to_owned()));
    }
    let copy = copies.copy_in(source).map_err(|e| LoadError::Copy {
        path: copies.dir().to_owned(),
        source: e,
    })?;
    load_copy(source, &copy, generation)
}

/// Checks that `path` is a complete 64-bit little-endian ELF shared object before `dlopen`
/// sees it: glibc crashes the process (SIGSEGV/SIGBUS) on a truncated library, which is what a
/// half-written build looks like.
fn check_elf(path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
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
        if t.name == crate::agent::TERMINATE_TOOL {
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

fn map_library_error(source: &Path, e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path: source.to_owned(),
            reason: clean_dlerror(&err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin(source.to_owned()),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleApi {
            plugin: actual_version.to_string(),
            host: expected_version.to_string(),
        },
        LibraryError::InvalidAbiHeader(header) => LoadError::IncompatibleAbiStable {
            plugin: format!("{}.{}", header.abi_major, header.abi_minor),
            host: format!(
                "{}.{}",
                abi_stable::library::AbiHeader::VALUE.abi_major,
                abi_stable::library::AbiHeader::VALUE.abi_minor
            ),
            api: host_api_crate_version(),
        },
        LibraryError::AbiInstability(err) => {
            // abi_stable's report can run to a thousand lines; its end names the difference.
            let text = err.to_string();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
            LoadError::AbiMismatch { detail: tail }
        }
        LibraryError::RootModule { err, .. } => LoadError::Factory(err.to_string()),
        other => LoadError::AbiMismatch {
            detail: other.to_string(),
        },
    }
}

/// dlerror text names the copy; keep only the reason.
fn clean_dlerror(s: &str) -> String {
    match s.rsplit_once(": ") {
        Some((_, reason)) => reason.to_owned(),
        None => s.to_owned(),
    }
}

impl Plugin {
    /// A fresh agent instance for one session (the factory runs inside the plugin).
    pub fn new_instance(&self) -> Result<Instance, String> {
        match (self.module.new_instance())() {
            ROk(inner) => Ok(Instance {
                inner: Arc::new(inner),
                tool_context: self.manifest.tool_context >= wire::TOOL_CONTEXT_VERSION,
            }),
            RErr(e) => Err(e.into_string()),
        }
    }
}

/// One session's agent instance. Cloning shares it; tools may run concurrently.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<AgentInstanceBox>,
    /// The plugin understands call envelopes and cancel events (see `plugin-api`'s `wire`).
    tool_context: bool,
}

/// Why a tool call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("crashed: {0}")]
    Crashed(String),
}

/// Why a custom event got no answer: the host gave up on the call, or the plugin said no.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{0}")]
    Call(CallError),
    #[error("{0}")]
    Plugin(String),
}

// The life of one tool call on the blocking pool (see `Instance::call_tool`).
const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const ABANDONED: u8 = 3;

/// Held while a tool call is awaited. Dropped before the call is done — on timeout, or because
/// the run was cancelled (user cancel, session expiry, shutdown) — it tells the plugin to stop,
/// and counts the call as abandoned while its thread keeps running.
struct InFlight {
    instance: Instance,
    id: u64,
    tool: String,
    state: Arc<AtomicU8>,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let st = &self.state;
        if st
            .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return; // never started: the blocking task will skip it
        }
        if st
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // finished
        }
        self.metrics.tools_abandoned.inc();
        self.metrics.tools_abandoned_total.inc();
        tracing::info!(tool = %self.tool, call_id = self.id, cooperative = self.instance.tool_context,
            "tool call given up while running; asked to stop");
        if self.instance.tool_context {
            let instance = self.instance.clone();
            let event = serde_json::json!({"event": wire::CANCEL_CALL_EVENT, "call_id": self.id}).to_string();
            // The plugin's handler only flips a flag, but it is plugin code: not on this worker.
            drop(tokio::task::spawn_blocking(move || {
                let _ = instance.handle_event_blocking("", &event);
            }));
        }
    }
}

impl Instance {
    /// Runs tool `name` on the blocking pool, waiting at most `timeout`. The plugin sees the
    /// deadline, and is told to stop when the call is given up (timeout, or this future
    /// dropped because the run was cancelled); a call that keeps running anyway is counted in
    /// `metrics.tools_abandoned` until its thread returns.
    pub async fn call_tool(
        &self,
        name: &str,
        args: serde_json::Value,
        timeout: Duration,
        metrics: &Arc<Metrics>,
    ) -> Result<ToolResult, CallError> {
        static NEXT_CALL: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
        let payload = if self.tool_context {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            serde_json::json!({wire::CALL_ENVELOPE_KEY: {"id": id, "timeout_ms": ms}, "args": args})
                .to_string()
        } else {
            args.to_string()
        };
        let state = Arc::new(AtomicU8::new(PENDING));
        let _in_flight = InFlight {
            instance: self.clone(),
            id,
            tool: name.to_owned(),
            state: state.clone(),
            metrics: metrics.clone(),
        };
        let (instance, tool, m) = (self.clone(), name.to_owned(), metrics.clone());
        let handle = tokio::task::spawn_blocking(move || {
            if state
                .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return None; // given up before a thread was free
            }
            let t0 = Instant::now();
            let result = instance.call_tool_blocking(&tool, &payload);
            if state
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                m.tools_abandoned.dec();
                tracing::info!(tool, call_id = id, ran_ms = t0.elapsed().as_millis() as u64,
                    "abandoned tool call returned");
            }
            Some(result)
        });
        match tokio::time::timeout(timeout, handle).await {
            Err(_) => Err(CallError::TimedOut(timeout)),
            Ok(Err(join)) => Err(CallError::Crashed(join.to_string())),
            Ok(Ok(Some(result))) => Ok(result),
            Ok(Ok(None)) => Err(CallError::TimedOut(timeout)),
        }
    }

    /// Sends a custom event to the plugin's hook on the blocking pool, waiting at most
    /// `timeout`. Returns the events to send back.
    pub async fn handle_event(
        &self,
        session_id: &str,
        event_json: String,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, EventError> {
        let (instance, sid) = (self.clone(), session_id.to_owned());
        let handle =
            tokio::task::spawn_blocking(move || instance.handle_event_blocking(&sid, &event_json));
        match tokio::time::timeout(timeout, handle).await {
            Err(_) => Err(EventError::Call(CallError::TimedOut(timeout))),
            Ok(Err(join)) => Err(EventError::Call(CallError::Crashed(join.to_string()))),
            Ok(Ok(Err(e))) => Err(EventError::Plugin(e)),
            Ok(Ok(Ok(events))) => Ok(events),
        }
    }

    /// Runs a tool, blocking the calling thread (call from `spawn_blocking`). `args_json` is
    /// what crosses the ABI: the bare arguments, or the call envelope.
    pub fn call_tool_blocking(&self, name: &str, args_json: &str) -> ToolResult {
        let out = self
            .inner
            .call_tool(RStr::from_str(name), RStr::from_str(args_json));
        serde_json::from_str(out.as_str()).unwrap_or_else(|e| {
            ToolResult::error(format!(
                "the plugin returned an unreadable tool result: {e}"
            ))
        })
    }

    /// Sends a custom event to the plugin's hook (blocking). Returns the events to send back.
    pub fn handle_event_blocking(
        &self,
        session_id: &str,
        event_json: &str,
    ) -> Result<Vec<serde_json::Value>, String> {
        match self
            .inner
            .handle_event(RStr::from_str(session_id), RStr::from_str(event_json))
        {
            ROk(json) => match serde_json::from_str::<serde_json::Value>(json.as_str()) {
                Ok(serde_json::Value::Array(events)) => Ok(events),
                _ => Err(
                    "the plugin's event handler returned something other than a JSON array".into(),
                ),
            },
            RErr(e) => Err(e.into_string()),
        }
    }
}
