//! The manifest: what a plugin says about its agent, read by the host at load. One type for
//! both sides (the plugin serializes it, the host deserializes it), carried as JSON across the
//! ABI so it can grow without an ABI change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of the host's built-in tool that ends a run; plugins may not use it.
pub const TERMINATE_TOOL: &str = "terminate";

/// Everything about an agent but its code.
///
/// Unknown fields are ignored on purpose: a plugin built against a newer 0.1.x plugin-api may
/// say more than this host knows. Fields added after 0.1.0 carry `#[serde(default)]` so older
/// plugins still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub api_version: u32,
    pub name: String,
    pub version: String,
    pub description: String,
    pub system_prompt: String,
    pub next_step_prompt: String,
    pub max_steps: u32,
    pub enable_tracing: bool,
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub tool_timeout_ms: Option<u64>,
    pub event_prefix: Option<String>,
    /// The tool-call context convention the plugin understands (see [`crate::wire`]); 0 for
    /// plugins built before it existed: their tools get bare arguments and cannot be told to stop.
    #[serde(default)]
    pub tool_context: u32,
    pub tools: Vec<ToolSpec>,
    /// What a client may change per session (`agent_config` on `user.create_session`); by
    /// default nothing.
    #[serde(default)]
    pub session_overrides: SessionOverrides,
    /// Tools whose every call a person must approve first ([`crate::Tool::needs_approval`]).
    /// Kept beside `tools`, not in them: a [`ToolSpec`] is what the model is sent.
    #[serde(default)]
    pub needs_approval: Vec<String>,
    /// MCP servers whose tools the agent wants beside its own (the operator's `--mcp-config`
    /// wins on a name clash).
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServer>,
    /// Agents (by name) this agent may hand the conversation over to: its model gets a tool
    /// `transfer_to_<name>` for each ([`crate::AgentBuilder::handoff`]).
    #[serde(default)]
    pub handoffs: Vec<String>,
    /// Agents (by name) this agent may ask as a tool: its model gets a tool `ask_<name>` for
    /// each, which runs that agent on the question with a fresh memory
    /// ([`crate::AgentBuilder::agent_tool`]).
    #[serde(default)]
    pub agent_tools: Vec<String>,
    /// Questions a user might start with, shown by clients on a new session
    /// ([`crate::AgentBuilder::starters`]).
    #[serde(default)]
    pub starters: Vec<String>,
}

/// An MCP server a plugin asks the host to connect to, in the format of the operator's
/// `--mcp-config` file (and of editors' `mcpServers` entries).
///
/// ```
/// use myagent_plugin_api::McpServer;
/// let files = McpServer::stdio("npx", ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]);
/// let search = McpServer::http("http://127.0.0.1:3001/mcp").header("Authorization", "Bearer …");
/// # let _ = (files, search);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum McpServer {
    /// A server the host runs as its child process, speaking MCP on stdin/stdout.
    Stdio {
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// A streamable-HTTP server.
    Http {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

impl McpServer {
    pub fn stdio<I, S>(command: impl Into<String>, args: I) -> McpServer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        McpServer::Stdio {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
        }
    }

    pub fn http(url: impl Into<String>) -> McpServer {
        McpServer::Http {
            url: url.into(),
            headers: BTreeMap::new(),
        }
    }

    /// Sets an environment variable of a stdio server (no effect on an HTTP one).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> McpServer {
        if let McpServer::Stdio { env, .. } = &mut self {
            env.insert(key.into(), value.into());
        }
        self
    }

    /// Sets a header sent to an HTTP server (no effect on a stdio one).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> McpServer {
        if let McpServer::Http { headers, .. } = &mut self {
            headers.insert(name.into(), value.into());
        }
        self
    }
}

/// The limits within which a client may configure its own session (`agent_config` on
/// `user.create_session`: `model`, `temperature`, `max_steps`, `instructions`). Anything not
/// allowed here is refused with a clear error; the default allows nothing.
///
/// ```
/// use myagent_plugin_api::SessionOverrides;
/// let limits = SessionOverrides {
///     models: vec!["gpt-4o-mini".into(), "gpt-4o".into()],
///     temperature: Some((0.0, 1.0)),
///     max_steps: Some(8),
///     instructions_chars: 500,
/// };
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionOverrides {
    /// Models a session may choose, by exact name. Empty: the agent's model only.
    pub models: Vec<String>,
    /// The range (inclusive) a session's temperature may take. `None`: the agent's only.
    pub temperature: Option<(f32, f32)>,
    /// The most steps a session may ask for. `None`: the agent's `max_steps` only.
    pub max_steps: Option<u32>,
    /// Characters of extra instruction a session may add to the system prompt. 0: none.
    pub instructions_chars: usize,
}

/// One tool as the model sees it (the OpenAI `function` object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the arguments object.
    pub parameters: Value,
}
