//! Plugin reload notices: every connection hears about a new build or a refused one.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::agent::AgentRuntime;
use crate::plugin::reload::ReloadNotice;
use crate::server::connections::Connections;
use crate::server::protocol::{AgentInfo, ServerEvent, Serving};

/// Forwards reload notices to every connection until the plugin slot closes.
pub async fn forward_reload_notices(runtime: Arc<AgentRuntime>, connections: Arc<Connections>) {
    let mut rx = runtime.plugin.subscribe();
    loop {
        let event = match rx.recv().await {
            Ok(ReloadNotice::Reloaded(p)) => {
                runtime.metrics.reloads.inc();
                ServerEvent::PluginReloaded {
                    agent: AgentInfo {
                        name: p.manifest.name.clone(),
                        version: p.manifest.version.clone(),
                        generation: Some(p.generation),
                        tools: Some(runtime.tool_names(&p.manifest)),
                    },
                }
            }
            Ok(ReloadNotice::Failed(reason)) => {
                runtime.metrics.reload_failures.inc();
                let serving = runtime.plugin.current();
                ServerEvent::PluginReloadFailed {
                    error: reason,
                    serving: Serving {
                        version: serving.manifest.version.clone(),
                        generation: serving.generation,
                    },
                }
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        connections.broadcast(&event);
    }
}
