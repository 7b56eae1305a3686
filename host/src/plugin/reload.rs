//! Hot reload: watch the plugin file, debounce, load the new build from a fresh copy, validate
//! it, and swap it in — or keep the old one and say why.
//!
//! One task owns all reloading; file events reach it through a channel. The directory is
//! watched, not the file: cargo replaces the file (a new inode), which would leave a watch on
//! the file itself stale. Builds whose bytes did not change are skipped.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{broadcast, mpsc};

use super::{Loader, Plugin};

/// What happened on a reload, for connected clients.
#[derive(Clone, Debug)]
pub enum ReloadNotice {
    Reloaded(Arc<Plugin>),
    /// A rebuilt plugin was refused: the agent (as its serving build names it), and why.
    Failed {
        agent: String,
        reason: String,
    },
    /// A build's worker process died (see `worker`); it restarts on the next call.
    Crashed(super::worker::CrashReport),
}

/// The serving plugin build. Sessions take an `Arc` at the start of each run, so a run in
/// progress keeps the build it started with.
pub struct PluginSlot {
    current: RwLock<Arc<Plugin>>,
    notices: broadcast::Sender<ReloadNotice>,
}

impl PluginSlot {
    pub fn new(plugin: Plugin) -> Arc<PluginSlot> {
        Self::with_notices(plugin, notice_channel())
    }

    /// A slot whose notices go out on `notices` (made first with [`notice_channel`], so that
    /// workers can report crashes on it from the first load).
    pub fn with_notices(
        plugin: Plugin,
        notices: broadcast::Sender<ReloadNotice>,
    ) -> Arc<PluginSlot> {
        Arc::new(PluginSlot {
            current: RwLock::new(Arc::new(plugin)),
            notices,
        })
    }

    pub fn current(&self) -> Arc<Plugin> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ReloadNotice> {
        self.notices.subscribe()
    }

    /// Serves `plugin` from now on; the build it replaces is retired once its runs end.
    fn swap(&self, plugin: Arc<Plugin>) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            plugin.clone(),
        );
        old.retire_when_idle();
        let _ = self.notices.send(ReloadNotice::Reloaded(plugin));
    }

    fn refuse(&self, reason: String) {
        let agent = self.current().manifest.name.clone();
        let _ = self.notices.send(ReloadNotice::Failed { agent, reason });
    }
}

/// The agents a host serves: one slot per plugin, in the order the operator named them (the
/// first is the default). A slot is known by the name its serving build declares.
pub struct Agents(Vec<Arc<PluginSlot>>);

impl Agents {
    /// `slots` must not be empty.
    pub fn new(slots: Vec<Arc<PluginSlot>>) -> Agents {
        assert!(!slots.is_empty(), "a host serves at least one agent");
        Agents(slots)
    }

    /// No agents: for a run driven outside a host (a handoff or agent tool then finds no one).
    /// Not for a host: [`Agents::first`] has nothing to return.
    pub fn none() -> Agents {
        Agents(Vec::new())
    }

    /// The default agent (the first plugin).
    pub fn first(&self) -> &Arc<PluginSlot> {
        &self.0[0]
    }

    /// The agent `name` (as its serving build declares it).
    pub fn named(&self, name: &str) -> Option<&Arc<PluginSlot>> {
        self.0.iter().find(|s| s.current().manifest.name == name)
    }

    pub fn all(&self) -> &[Arc<PluginSlot>] {
        &self.0
    }

    /// Every agent's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|s| s.current().manifest.name.clone())
            .collect()
    }
}

/// The channel plugin notices (reloads, refusals, crashes) travel on.
pub fn notice_channel() -> broadcast::Sender<ReloadNotice> {
    broadcast::channel(16).0
}

fn file_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct ReloadHandle {
    _watcher: notify::RecommendedWatcher,
    _task: tokio::task::JoinHandle<()>,
}

/// Starts watching `source`; reloads go through `loader` into `slot`.
pub fn watch(
    source: PathBuf,
    loader: Arc<Loader>,
    slot: Arc<PluginSlot>,
    debounce: Duration,
) -> notify::Result<ReloadHandle> {
    let dir = source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let file_name = source.file_name().map(|n| n.to_owned());
    let (tx, rx) = mpsc::channel::<()>(64);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == file_name.as_deref())
        {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(reload_loop(source, loader, slot, debounce, rx));
    Ok(ReloadHandle {
        _watcher: watcher,
        _task: task,
    })
}

async fn reload_loop(
    source: PathBuf,
    loader: Arc<Loader>,
    slot: Arc<PluginSlot>,
    debounce: Duration,
    mut rx: mpsc::Receiver<()>,
) {
    let mut last_hash = file_hash(&source);
    let mut generation = slot.current().generation;
    while rx.recv().await.is_some() {
        // Debounce: cargo and cp write in several steps; wait for quiet.
        let first = Instant::now();
        while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
        let Some(hash) = file_hash(&source) else {
            tracing::debug!(path = %source.display(), "plugin file missing (mid-build?); waiting for it to reappear");
            continue;
        };
        if Some(hash) == last_hash {
            continue;
        }
        last_hash = Some(hash);
        let started = Instant::now();
        match loader.load(&source, generation + 1).await {
            Ok(plugin) => {
                generation += 1;
                tracing::info!(
                    agent = %plugin.manifest.name, version = %plugin.manifest.version, generation,
                    tools = ?plugin.manifest.tools.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    load_ms = started.elapsed().as_millis() as u64,
                    since_change_ms = first.elapsed().as_millis() as u64,
                    "plugin reloaded"
                );
                slot.swap(Arc::new(plugin));
            }
            Err(e) => {
                tracing::error!(error = %e, "new plugin build refused; the previous build keeps serving");
                slot.refuse(e.to_string());
            }
        }
    }
}
