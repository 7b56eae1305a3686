//! Plugin notices: every connection hears about a new build, a refused one, or a crashed worker.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::connections::Connections;
use super::protocol::{AgentInfo, ServerEvent, Serving};
use crate::agent::AgentRuntime;
use crate::plugin::reload::ReloadNotice;

/// Forwards reload notices to every connection until the plugin slots close (every served
/// agent's slot sends on the one notice channel).
pub(crate) async fn forward_reload_notices(
    runtime: Arc<AgentRuntime>,
    connections: Arc<Connections>,
) {
    let mut rx = runtime.agents.first().subscribe();
    loop {
        let event = match rx.recv().await {
            Ok(ReloadNotice::Reloaded(p)) => {
                runtime.metrics.reloads.inc();
                start_new_mcp_servers(&runtime, &p.manifest);
                ServerEvent::PluginReloaded {
                    agent: AgentInfo {
                        name: p.manifest.name.clone(),
                        version: p.manifest.version.clone(),
                        generation: Some(p.generation),
                        tools: Some(runtime.tool_names(&p.manifest)),
                    },
                }
            }
            Ok(ReloadNotice::Failed { agent, reason }) => {
                runtime.metrics.reload_failures.inc();
                let Some(slot) = runtime.agents.named(&agent) else {
                    continue;
                };
                let serving = slot.current();
                ServerEvent::PluginReloadFailed {
                    error: reason,
                    serving: Serving {
                        name: agent,
                        version: serving.manifest.version.clone(),
                        generation: serving.generation,
                    },
                }
            }
            Ok(ReloadNotice::Crashed(c)) => ServerEvent::PluginCrashed {
                agent: AgentInfo {
                    name: c.plugin.name.clone(),
                    version: c.plugin.version.clone(),
                    generation: Some(c.generation),
                    tools: None,
                },
                reason: c.reason,
                crashes: c.crashes,
                restart_in_ms: c.restart_in.as_millis() as u64,
            },
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        connections.broadcast(&event);
    }
}

/// A new build may name MCP servers the host does not run yet: they are started (in the
/// background; their tools are offered once listed). Servers already running stay as they are.
fn start_new_mcp_servers(runtime: &Arc<AgentRuntime>, manifest: &crate::plugin::Manifest) {
    let specs = match crate::mcp::plugin_servers(manifest, &Default::default()) {
        Ok(s) if s.is_empty() => return,
        Ok(s) => s,
        Err(e) => {
            return tracing::warn!(error = %e, "the new build's MCP servers are not valid; not started")
        }
    };
    // The new ones are this agent's (a server already running — the operator's, say — stays
    // whose it was).
    let running: Vec<String> = runtime
        .mcp
        .servers()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    for server in specs.keys().filter(|s| !running.contains(s)) {
        runtime.mcp.own(server, &manifest.name);
    }
    let runtime = runtime.clone();
    tokio::spawn(async move {
        let started = runtime.mcp.add(specs, crate::mcp::START_WAIT).await;
        if !started.is_empty() {
            tracing::info!(servers = ?started, "MCP servers named by the new build started");
        }
    });
}
