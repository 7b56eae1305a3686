//! What a call into a plugin can end with besides its answer, and the build it went to.

use std::sync::Arc;
use std::time::Duration;

/// Which plugin build a call went to, for error messages: "weather-assistant 0.1.0".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginTag {
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for PluginTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// The host got no answer from the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin}: {kind}")]
pub struct HostError {
    pub plugin: Arc<PluginTag>,
    pub kind: HostErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum HostErrorKind {
    #[error("timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The thread running the call died (a panic that escaped the plugin's own guard), or the
    /// build's worker could not be reached.
    #[error("the call crashed: {0}")]
    Crashed(String),
    /// The worker process running the call died; the text says how ("the plugin crashed: …").
    #[error("{0}")]
    WorkerDied(String),
    /// The build's worker has as many calls running and waiting as it may; this one was
    /// refused without running.
    #[error("{0}")]
    Busy(String),
}

/// The plugin answered with an error of its own (its factory or hook said no, or panicked and
/// caught it).
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin}: {message}")]
pub struct PluginError {
    pub plugin: Arc<PluginTag>,
    pub message: String,
}

/// Runs `f` on the blocking pool, waiting at most `timeout` (the thread is not stopped).
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    tag: &Arc<PluginTag>,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HostError> {
    let fail = |kind| HostError {
        plugin: tag.clone(),
        kind,
    };
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Err(_) => Err(fail(HostErrorKind::TimedOut(timeout))),
        Ok(Err(join)) => Err(fail(HostErrorKind::Crashed(join.to_string()))),
        Ok(Ok(v)) => Ok(v),
    }
}
