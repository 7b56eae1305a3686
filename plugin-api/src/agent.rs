//! The agent definition a plugin exports: [`Agent`] and its builder.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::Value;

use crate::{
    wire, Manifest, McpServer, SessionOverrides, Tool, ToolContext, ToolResult, ToolSpec,
    API_VERSION,
};

/// Context given to a custom-event handler.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// The session the event was sent for.
    pub session_id: String,
}

type EventHandler = dyn Fn(&EventContext, Value) -> Result<Vec<Value>, String> + Send + Sync;

/// An agent definition: prompts, limits and tools. Built with [`Agent::builder`].
pub struct Agent {
    name: String,
    version: String,
    description: String,
    system_prompt: String,
    next_step_prompt: String,
    max_steps: u32,
    enable_tracing: bool,
    model: Option<String>,
    temperature: Option<f32>,
    tool_timeout_ms: Option<u64>,
    tools: Vec<Box<dyn Tool>>,
    event_prefix: Option<String>,
    event_handler: Option<Box<EventHandler>>,
    session_overrides: SessionOverrides,
    mcp_servers: BTreeMap<String, McpServer>,
    handoffs: Vec<String>,
    agent_tools: Vec<String>,
    starters: Vec<String>,
}

impl Agent {
    /// Starts an agent definition named `name` (shown to clients and in `inspect`).
    pub fn builder(name: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            agent: Agent {
                name: name.into(),
                version: "0.0.0".into(),
                description: String::new(),
                system_prompt: String::new(),
                next_step_prompt: String::new(),
                max_steps: 10,
                enable_tracing: false,
                model: None,
                temperature: None,
                tool_timeout_ms: None,
                tools: Vec::new(),
                event_prefix: None,
                event_handler: None,
                session_overrides: SessionOverrides::default(),
                mcp_servers: BTreeMap::new(),
                handoffs: Vec::new(),
                agent_tools: Vec::new(),
                starters: Vec::new(),
            },
        }
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls one of the agent's tools as the host would, panics caught: for unit tests.
    pub fn call_tool(&self, name: &str, args: Value) -> ToolResult {
        self.call_tool_with(name, args, &ToolContext::detached())
    }

    /// [`Agent::call_tool`] with a given context (e.g. [`ToolContext::with_timeout`]).
    pub fn call_tool_with(&self, name: &str, args: Value, ctx: &ToolContext) -> ToolResult {
        let Some(tool) = self.tools.iter().find(|t| t.name() == name) else {
            return ToolResult::error(format!("unknown tool `{name}`"));
        };
        match catch_unwind(AssertUnwindSafe(|| tool.execute_with(args, ctx))) {
            Ok(result) => result,
            Err(payload) => ToolResult::error(format!(
                "tool `{name}` panicked: {}",
                panic_message(&payload)
            )),
        }
    }

    /// Sends a custom event to the agent's hook as the host would: for unit tests.
    pub fn handle_event(&self, session_id: &str, event: Value) -> Result<Vec<Value>, String> {
        let Some(handler) = &self.event_handler else {
            return Err("this agent does not handle custom events".into());
        };
        let ctx = EventContext {
            session_id: session_id.to_owned(),
        };
        match catch_unwind(AssertUnwindSafe(|| handler(&ctx, event))) {
            Ok(result) => result,
            Err(payload) => Err(format!(
                "event handler panicked: {}",
                panic_message(&payload)
            )),
        }
    }

    /// The manifest the host reads: everything but the code.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            api_version: API_VERSION,
            name: self.name.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            system_prompt: self.system_prompt.clone(),
            next_step_prompt: self.next_step_prompt.clone(),
            max_steps: self.max_steps,
            enable_tracing: self.enable_tracing,
            model: self.model.clone(),
            temperature: self.temperature,
            tool_timeout_ms: self.tool_timeout_ms,
            event_prefix: self.event_prefix.clone(),
            tool_context: wire::TOOL_CONTEXT_VERSION,
            session_overrides: self.session_overrides.clone(),
            mcp_servers: self.mcp_servers.clone(),
            handoffs: self.handoffs.clone(),
            agent_tools: self.agent_tools.clone(),
            starters: self.starters.clone(),
            needs_approval: self
                .tools
                .iter()
                .filter(|t| t.needs_approval())
                .map(|t| t.name().to_owned())
                .collect(),
            tools: self
                .tools
                .iter()
                .map(|t| ToolSpec {
                    name: t.name().to_owned(),
                    description: t.description().to_owned(),
                    parameters: t.parameters(),
                })
                .collect(),
        }
    }
}

/// Builder for [`Agent`]; every setting but the name is optional.
pub struct AgentBuilder {
    agent: Agent,
}

impl AgentBuilder {
    /// The plugin's version, shown in `inspect`, `/health` and reload notices.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.agent.version = version.into();
        self
    }
    /// A one-line description for humans.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.agent.description = description.into();
        self
    }
    /// The system prompt, sent first on every model call.
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.agent.system_prompt = prompt.into();
        self
    }
    /// A prompt added before each think step (not kept in the conversation).
    pub fn next_step_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.agent.next_step_prompt = prompt.into();
        self
    }
    /// The most think/act steps one run may take (default 10).
    pub fn max_steps(mut self, max_steps: u32) -> Self {
        self.agent.max_steps = max_steps.max(1);
        self
    }
    /// Write a structured trace of every run (where the operator's `--trace-file` says).
    pub fn enable_tracing(mut self, on: bool) -> Self {
        self.agent.enable_tracing = on;
        self
    }
    /// The model to ask (overrides the host's `--model`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.agent.model = Some(model.into());
        self
    }
    /// Sampling temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.agent.temperature = Some(temperature);
        self
    }
    /// Per-tool-call timeout in milliseconds (overrides the host's `--tool-timeout`).
    pub fn tool_timeout_ms(mut self, ms: u64) -> Self {
        self.agent.tool_timeout_ms = Some(ms);
        self
    }
    /// Adds a tool.
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.agent.tools.push(Box::new(tool));
        self
    }
    /// Handles client events whose `event` starts with `prefix` (e.g. `"weather."`). What the
    /// handler returns is sent back to the client as events (each a JSON object with `event`).
    pub fn on_custom_event<F>(mut self, prefix: impl Into<String>, handler: F) -> Self
    where
        F: Fn(&EventContext, Value) -> Result<Vec<Value>, String> + Send + Sync + 'static,
    {
        self.agent.event_prefix = Some(prefix.into());
        self.agent.event_handler = Some(Box::new(handler));
        self
    }
    /// Lets clients configure their own sessions within `limits` (`agent_config` on
    /// `user.create_session`): a model from a list, a temperature in a range, fewer or more
    /// steps up to a bound, an extra instruction of bounded length. By default nothing.
    pub fn session_overrides(mut self, limits: SessionOverrides) -> Self {
        self.agent.session_overrides = limits;
        self
    }
    /// Asks the host to connect to an MCP server and offer its tools beside this agent's own
    /// (`name` prefixes them on a name clash, as `NAME__tool`). The operator's `--mcp-config`
    /// wins when it names a server the same.
    pub fn mcp_server(mut self, name: impl Into<String>, server: McpServer) -> Self {
        self.agent.mcp_servers.insert(name.into(), server);
        self
    }
    /// Lets this agent hand the conversation over to the agent named `agent` (another plugin
    /// served by the same host): the model gets a tool `transfer_to_<agent>` (characters
    /// outside `[A-Za-z0-9_]` become `_`), described by that agent's description. When the
    /// model calls it, the same turn goes on under that agent — its prompt, tools, model and
    /// limits — and the session's next messages go to it until another handoff.
    pub fn handoff(mut self, agent: impl Into<String>) -> Self {
        let agent = agent.into();
        if !self.agent.handoffs.contains(&agent) {
            self.agent.handoffs.push(agent);
        }
        self
    }
    /// Lets this agent ask the agent named `agent` (another plugin served by the same host) as
    /// a tool: the model gets `ask_<agent>` {input}; the host runs that agent on `input` with a
    /// fresh memory, streams its events to the client, and returns its final answer as the
    /// tool's result.
    pub fn agent_tool(mut self, agent: impl Into<String>) -> Self {
        let agent = agent.into();
        if !self.agent.agent_tools.contains(&agent) {
            self.agent.agent_tools.push(agent);
        }
        self
    }
    /// Questions a user might start with: clients show them on a new session (the web page
    /// as buttons). At most a handful, each one line.
    pub fn starters<I, S>(mut self, questions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.agent.starters = questions.into_iter().map(Into::into).collect();
        self
    }
    /// Finishes the definition.
    pub fn build(self) -> Agent {
        self.agent
    }
}

pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
