//! Tools from Model Context Protocol servers (`--mcp-config FILE`), offered to the model beside
//! the plugin's own and called through the same path (timeout, events, traces, truncation,
//! approval). [`config`] reads the file, [`server`] keeps each server connected, and
//! [`McpHub`] is what runs see: the tools on offer and where each call goes.
//!
//! Names: a server's tool keeps its own name unless another tool has it (the plugin's, the
//! built-in `terminate`, or another server's); then it is offered as `SERVER__tool`.

pub mod config;
pub(crate) mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::llm::ToolSpec;
pub use config::ServerSpec;
pub use server::{McpServer, McpTool};

/// The MCP servers of this host.
#[derive(Default)]
pub struct McpHub {
    servers: RwLock<Vec<Arc<McpServer>>>,
    shutdown: CancellationToken,
}

/// One tool on offer: the name the model calls, and where it goes.
pub struct Exposed {
    pub name: String,
    pub server: Arc<McpServer>,
    pub tool: McpTool,
}

/// How long start-up waits for servers to connect and list their tools.
pub const START_WAIT: Duration = Duration::from_secs(20);

impl McpHub {
    /// Connects to every server (in parallel); returns when each has connected and listed its
    /// tools, or failed once, or `wait` passed. A server that failed keeps being retried until
    /// `shutdown`.
    pub async fn start(
        specs: BTreeMap<String, ServerSpec>,
        shutdown: CancellationToken,
        wait: Duration,
    ) -> McpHub {
        let hub = McpHub {
            servers: RwLock::new(Vec::new()),
            shutdown,
        };
        hub.add(specs, wait).await;
        hub
    }

    /// Starts the servers of `specs` not running yet (by name); returns their names.
    pub async fn add(&self, specs: BTreeMap<String, ServerSpec>, wait: Duration) -> Vec<String> {
        let new: Vec<Arc<McpServer>> = {
            let mut servers = self.servers.write().unwrap_or_else(|p| p.into_inner());
            let fresh: Vec<Arc<McpServer>> = specs
                .into_iter()
                .filter(|(name, _)| !servers.iter().any(|s| &s.name == name))
                .map(|(name, spec)| McpServer::new(name, spec))
                .collect();
            servers.extend(fresh.iter().cloned());
            servers.sort_by(|a, b| a.name.cmp(&b.name));
            fresh
        };
        futures_util::future::join_all(new.iter().map(|s| s.start(self.shutdown.clone(), wait)))
            .await;
        new.iter().map(|s| s.name.clone()).collect()
    }

    pub fn servers(&self) -> Vec<Arc<McpServer>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tools offered beside `plugin_tools`, named as the model sees them.
    pub fn exposed(&self, plugin_tools: &[ToolSpec]) -> Vec<Exposed> {
        let servers = self.servers();
        if servers.is_empty() {
            return Vec::new();
        }
        let listed: Vec<(Arc<McpServer>, Vec<McpTool>)> =
            servers.iter().map(|s| (s.clone(), s.tools())).collect();
        let mut count: HashMap<String, usize> = HashMap::new();
        for t in plugin_tools {
            *count.entry(t.name.clone()).or_default() += 1;
        }
        *count
            .entry(myagent_plugin_api::TERMINATE_TOOL.into())
            .or_default() += 1;
        for (_, tools) in &listed {
            for t in tools {
                *count.entry(model_name(&t.name)).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for (server, tools) in listed {
            for tool in tools {
                let base = model_name(&tool.name);
                let name = match count.get(&base).copied().unwrap_or(0) > 1 {
                    true => model_name(&format!("{}__{}", server.name, tool.name)),
                    false => base,
                };
                out.push(Exposed {
                    name,
                    server: server.clone(),
                    tool,
                });
            }
        }
        out
    }

    /// The tool specs to offer the model beside the plugin's.
    pub fn specs(&self, plugin_tools: &[ToolSpec]) -> Vec<ToolSpec> {
        self.exposed(plugin_tools)
            .into_iter()
            .map(|e| ToolSpec {
                name: e.name,
                description: e.tool.description,
                parameters: e.tool.parameters,
            })
            .collect()
    }

    /// Prometheus lines per server: up (1/0), connections made (above 1: restarts), tools.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let servers = self.servers();
        if servers.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&McpServer) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &servers {
                let _ = writeln!(out, "{name}{{server=\"{}\"}} {}", s.name, value(s));
            }
        };
        family(
            "myagent_mcp_server_up",
            "gauge",
            "1 while the MCP server is connected",
            &|s| u64::from(s.down().is_none()),
        );
        family(
            "myagent_mcp_connections_total",
            "counter",
            "Connections made to the MCP server (more than one: it was restarted)",
            &|s| s.connections.load(std::sync::atomic::Ordering::Relaxed),
        );
        family(
            "myagent_mcp_stderr_dropped_bytes_total",
            "counter",
            "Bytes of the MCP server's stderr lines past 8 KiB, dropped",
            &|s| s.stderr_dropped.load(std::sync::atomic::Ordering::Relaxed),
        );
        family(
            "myagent_mcp_tools",
            "gauge",
            "Tools the MCP server lists",
            &|s| s.tools().len() as u64,
        );
        out
    }

    /// Where a call to `name` goes, if it is an MCP tool.
    pub fn find(&self, plugin_tools: &[ToolSpec], name: &str) -> Option<Exposed> {
        self.exposed(plugin_tools)
            .into_iter()
            .find(|e| e.name == name)
    }
}

/// The servers a plugin's manifest names, read like the operator's file (same checks); a
/// server the operator's file names the same is left out (the operator wins).
pub fn plugin_servers(
    manifest: &crate::plugin::Manifest,
    operator: &BTreeMap<String, ServerSpec>,
) -> Result<BTreeMap<String, ServerSpec>, String> {
    if manifest.mcp_servers.is_empty() {
        return Ok(BTreeMap::new());
    }
    let text = serde_json::json!({ "mcpServers": manifest.mcp_servers }).to_string();
    let mut specs = config::parse(&text).map_err(|e| format!("the plugin's MCP servers: {e}"))?;
    specs.retain(|name, _| !operator.contains_key(name));
    Ok(specs)
}

/// A tool name the model accepts (`^[a-zA-Z0-9_-]{1,64}$`): other characters become `_`.
fn model_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                true => c,
                false => '_',
            },
        )
        .collect();
    s.truncate(64);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_unless_they_clash() {
        assert_eq!(model_name("get-sum"), "get-sum");
        assert_eq!(model_name("a.b c"), "a_b_c");
        assert_eq!(model_name(&"x".repeat(80)).len(), 64);
        let hub = McpHub {
            servers: RwLock::new(vec![
                McpServer::listed("a", &["echo", "get-sum", "get_weather"]),
                McpServer::listed("b", &["echo", "only_b", "terminate"]),
            ]),
            shutdown: CancellationToken::new(),
        };
        let plugin = [ToolSpec {
            name: "get_weather".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
        }];
        let names: Vec<String> = hub.exposed(&plugin).into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "a__echo",
                "get-sum",
                "a__get_weather",
                "b__echo",
                "only_b",
                "b__terminate"
            ]
        );
        let e = hub.find(&plugin, "b__echo").unwrap();
        assert_eq!(
            (e.server.name.as_str(), e.tool.name.as_str()),
            ("b", "echo")
        );
        assert!(hub.find(&plugin, "get_weather").is_none());
    }
}
