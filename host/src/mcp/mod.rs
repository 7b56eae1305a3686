//! Tools from Model Context Protocol servers (`--mcp-config FILE`), offered to the model beside
//! the plugin's own and called through the same path (timeout, events, traces, truncation,
//! approval). [`config`] reads the file, [`server`] keeps each server connected, and
//! [`McpHub`] is what runs see: the tools on offer and where each call goes.
//!
//! Names: a server's tool is offered under its own name unless another tool has it already
//! (the plugin's, the built-in `terminate`, or another server's tool seen first); then it is
//! offered as `SERVER__tool`. A name once given stays with its tool: a newcomer that clashes
//! gets the prefix, so `--require-approval` and the model's habits never lose their target
//! (only a plugin tool of the same name, which always wins, moves a server's tool to its
//! prefixed name).

pub mod config;
pub(crate) mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// The name each (server, tool) was first offered under.
    names: std::sync::Mutex<HashMap<(String, String), String>>,
    /// Servers a plugin named, by server: that plugin's agent, the only one they are offered
    /// to. The operator's servers (`--mcp-config`) are every agent's.
    owners: std::sync::Mutex<HashMap<String, String>>,
}

/// One tool on offer: the name the model calls, and where it goes.
pub struct Exposed {
    pub name: String,
    pub server: Arc<McpServer>,
    pub tool: McpTool,
}

/// MCP tools offered to the model over all servers, at most (in the servers' order; each
/// server also keeps at most 128 of its own).
pub const MAX_TOOLS_TOTAL: usize = 256;

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
            names: Default::default(),
            owners: Default::default(),
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

    /// Server `server` was named by `agent`'s plugin: only that agent is offered its tools.
    pub fn own(&self, server: &str, agent: &str) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.insert(server.to_owned(), agent.to_owned());
    }

    /// Whether `agent` is offered `server`'s tools (the operator's, or its own plugin's).
    pub fn serves(&self, server: &McpServer, agent: &str) -> bool {
        let owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.get(&server.name).is_none_or(|o| o == agent)
    }

    /// The tools offered to `plugin`'s agent beside its own, named as the model sees them.
    pub fn offered(&self, plugin: &crate::plugin::Manifest) -> Vec<Exposed> {
        let servers = self
            .servers()
            .into_iter()
            .filter(|s| self.serves(s, &plugin.name))
            .collect();
        self.exposed_among(servers, &plugin.tools)
    }

    pub fn servers(&self) -> Vec<Arc<McpServer>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tools offered beside `plugin_tools`, named as the model sees them (in the servers'
    /// and their lists' order).
    pub fn exposed(&self, plugin_tools: &[ToolSpec]) -> Vec<Exposed> {
        self.exposed_among(self.servers(), plugin_tools)
    }

    fn exposed_among(
        &self,
        servers: Vec<Arc<McpServer>>,
        plugin_tools: &[ToolSpec],
    ) -> Vec<Exposed> {
        if servers.is_empty() {
            return Vec::new();
        }
        let listed: Vec<(Arc<McpServer>, McpTool)> = servers
            .iter()
            .flat_map(|s| s.tools().into_iter().map(move |t| (s.clone(), t)))
            .take(MAX_TOOLS_TOTAL)
            .collect();
        let reserved: HashSet<String> = plugin_tools
            .iter()
            .map(|t| t.name.clone())
            .chain([myagent_plugin_api::TERMINATE_TOOL.to_owned()])
            .collect();
        let mut taken = reserved.clone();
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let key = |s: &McpServer, t: &McpTool| (s.name.clone(), t.name.clone());
        // Names given before keep their tools (unless a plugin tool has taken one).
        let mut chosen: Vec<Option<String>> = listed
            .iter()
            .map(|(s, t)| {
                names
                    .get(&key(s, t))
                    .filter(|n| !reserved.contains(*n) && taken.insert((*n).clone()))
                    .cloned()
            })
            .collect();
        // Newcomers: their own name if free, else the server's prefix.
        for ((server, tool), name) in listed.iter().zip(chosen.iter_mut()) {
            if name.is_some() {
                continue;
            }
            let own = model_name(&tool.name);
            let mut pick = match taken.contains(&own) {
                false => own,
                true => model_name(&format!("{}__{}", server.name, tool.name)),
            };
            let prefixed = pick.clone();
            let mut n = 2;
            while taken.contains(&pick) {
                pick = format!("{}_{n}", &prefixed[..prefixed.len().min(60)]);
                n += 1;
            }
            taken.insert(pick.clone());
            names.insert(key(server, tool), pick.clone());
            *name = Some(pick);
        }
        listed
            .into_iter()
            .zip(chosen)
            .map(|((server, tool), name)| Exposed {
                name: name.unwrap_or_default(),
                server,
                tool,
            })
            .collect()
    }

    /// Whether `--require-approval` names this MCP tool: by the name it is offered under, its
    /// own name, or `SERVER__tool` (both spellings work whatever the tool is offered as).
    pub fn named_in(e: &Exposed, list: &[String]) -> bool {
        let prefixed = model_name(&format!("{}__{}", e.server.name, e.tool.name));
        list.iter()
            .any(|n| *n == e.name || *n == e.tool.name || *n == prefixed)
    }

    /// The tool specs to offer the model beside the plugin's.
    pub fn specs(&self, plugin: &crate::plugin::Manifest) -> Vec<ToolSpec> {
        self.offered(plugin)
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
    pub fn find(&self, plugin: &crate::plugin::Manifest, name: &str) -> Option<Exposed> {
        self.offered(plugin).into_iter().find(|e| e.name == name)
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
            names: Default::default(),
            owners: Default::default(),
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
                "echo",
                "get-sum",
                "a__get_weather",
                "b__echo",
                "only_b",
                "b__terminate"
            ]
        );
        // A newcomer that clashes is the one prefixed: the names given stay with their tools.
        hub.servers
            .write()
            .unwrap()
            .insert(0, McpServer::listed("0", &["get-sum", "echo", "new"]));
        let names: Vec<String> = hub.exposed(&plugin).into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "0__get-sum",
                "0__echo",
                "new",
                "echo",
                "get-sum",
                "a__get_weather",
                "b__echo",
                "only_b",
                "b__terminate"
            ]
        );
        let manifest = manifest_of("weather", &plugin);
        let e = hub.find(&manifest, "echo").unwrap();
        assert_eq!(e.server.name, "a");
        let flag = |f: &str| McpHub::named_in(&e, &[f.to_owned()]);
        assert!(flag("echo") && flag("a__echo") && !flag("b__echo"));
        let e = hub.find(&manifest, "b__echo").unwrap();
        assert!(
            McpHub::named_in(&e, &["echo".to_owned()]),
            "the tool's own name"
        );
        assert_eq!(
            (e.server.name.as_str(), e.tool.name.as_str()),
            ("b", "echo")
        );
        assert!(hub.find(&manifest, "get_weather").is_none());
    }

    /// A manifest of agent `name` with `tools`.
    fn manifest_of(name: &str, tools: &[ToolSpec]) -> crate::plugin::Manifest {
        let mut m: crate::plugin::Manifest = serde_json::from_value(serde_json::json!({
            "api_version": 1, "name": name, "version": "1", "description": "",
            "system_prompt": "", "next_step_prompt": "", "max_steps": 5, "enable_tracing": false,
            "model": null, "temperature": null, "tool_timeout_ms": null, "event_prefix": null,
            "tools": []
        }))
        .unwrap();
        m.tools = tools.to_vec();
        m
    }

    #[test]
    fn a_plugins_own_server_is_offered_to_its_agent_only() {
        let hub = McpHub {
            servers: RwLock::new(vec![
                McpServer::listed("ops", &["shared"]),
                McpServer::listed("kit", &["mine"]),
            ]),
            shutdown: CancellationToken::new(),
            names: Default::default(),
            owners: Default::default(),
        };
        hub.own("kit", "testkit");
        let agent = |name: &str| manifest_of(name, &[]);
        let names = |m| -> Vec<String> { hub.offered(&m).into_iter().map(|e| e.name).collect() };
        assert_eq!(names(agent("testkit")), ["shared", "mine"]);
        assert_eq!(names(agent("weather")), ["shared"]);
        assert!(hub.find(&agent("weather"), "mine").is_none());
    }
}
