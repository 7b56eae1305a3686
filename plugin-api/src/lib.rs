//! Write an LLM agent for `myagent-host` as a Rust plugin: a system prompt and a set of tools.
//!
//! A plugin is a `cdylib` crate that depends on this crate alone. It builds an [`Agent`] (the
//! Rust form of MyAgent's `create_react_agent(name, tools, system_prompt, next_step_prompt,
//! max_steps, enable_tracing)`) and exports its factory with [`export_agent!`]. The host calls
//! the factory once per WebSocket session, runs the ReAct loop, talks to the model and calls
//! your tools on a blocking thread pool with a timeout, so a tool may block (HTTP, SQL...).
//!
//! ```
//! use myagent_plugin_api::{export_agent, json, Agent, Tool, ToolResult, Value};
//!
//! struct Weather;
//!
//! impl Tool for Weather {
//!     fn name(&self) -> &str { "get_weather" }
//!     fn description(&self) -> &str { "Get the current weather for a city" }
//!     fn parameters(&self) -> Value {
//!         json!({
//!             "type": "object",
//!             "properties": { "city": { "type": "string", "description": "City name" } },
//!             "required": ["city"]
//!         })
//!     }
//!     fn execute(&self, args: Value) -> ToolResult {
//!         match args["city"].as_str() {
//!             Some(city) => ToolResult::ok(format!("{city}: sunny, 25°C")),
//!             None => ToolResult::error("`city` must be a string"),
//!         }
//!     }
//! }
//!
//! fn weather_assistant() -> Agent {
//!     Agent::builder("weather-assistant")
//!         .system_prompt("You are a weather assistant.")
//!         .next_step_prompt("To look up weather, use the get_weather tool.")
//!         .max_steps(5)
//!         .tool(Weather)
//!         .build()
//! }
//!
//! export_agent!(weather_assistant);
//!
//! // Tools can be unit-tested without a host:
//! let agent = weather_assistant();
//! let result = agent.call_tool("get_weather", json!({"city": "Paris"}));
//! assert_eq!(result.output.as_deref(), Some("Paris: sunny, 25°C"));
//! ```
//!
//! Panics in your factory, tools or event hook are caught here, inside the plugin, and come back
//! to the host as errors (a panicking tool is a failed tool result). Build with
//! `panic = "unwind"` (the default) for that to work.

pub mod abi;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use serde_json::{json, Map, Value};

/// The plugin protocol version. The host refuses plugins with another one; abi_stable also
/// checks this crate's semver (0.1.x) and the layout of every type in [`abi`].
pub const API_VERSION: u32 = 1;

/// The outcome of a tool call, as in MyAgent's `ToolResult`.
///
/// `output` is what the model sees on success; `error` marks the call failed (the model sees it
/// and the client gets `status: "failed"`); `system` is an optional note for the host's logs and
/// traces, not shown to the model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

impl ToolResult {
    /// A successful result.
    pub fn ok(output: impl Into<String>) -> Self {
        ToolResult {
            output: Some(output.into()),
            ..Default::default()
        }
    }
    /// A failed result; the run goes on and the model sees the error.
    pub fn error(error: impl Into<String>) -> Self {
        ToolResult {
            error: Some(error.into()),
            ..Default::default()
        }
    }
    /// Adds a system note (logged and traced by the host, not sent to the model).
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }
    /// True when the call failed.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

/// What a running tool call can know about when to stop: its deadline (the host's tool timeout)
/// and whether the host has given up on it (the user cancelled the run, the timeout passed, or
/// the host is shutting down).
///
/// The host cannot stop a thread that is busy in your code; a tool that may run long should
/// poll [`ToolContext::is_cancelled`] (or hand [`ToolContext::time_left`] to the library it
/// calls) and return early. Calls that ignore it are abandoned: their thread runs on in the
/// background, counted in the host's `/metrics` (`myagent_tools_abandoned`).
///
/// ```
/// use myagent_plugin_api::{ToolContext, ToolResult};
/// fn count_up(ctx: &ToolContext) -> ToolResult {
///     let mut n = 0u64;
///     while n < 1_000_000 {
///         if n % 1024 == 0 && ctx.is_cancelled() {
///             return ToolResult::error(format!("stopped at {n}: out of time"));
///         }
///         n += 1;
///     }
///     ToolResult::ok(n.to_string())
/// }
/// assert!(count_up(&ToolContext::detached()).output.is_some());
/// ```
#[derive(Debug, Clone)]
pub struct ToolContext {
    deadline: Option<Instant>,
    cancelled: Arc<AtomicBool>,
}

impl ToolContext {
    /// No deadline and never cancelled (for calling tools outside the host, e.g. in tests).
    pub fn detached() -> ToolContext {
        ToolContext {
            deadline: None,
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A context that expires `timeout` from now (what the host gives each call).
    pub fn with_timeout(timeout: Duration) -> ToolContext {
        ToolContext {
            deadline: Instant::now().checked_add(timeout),
            ..ToolContext::detached()
        }
    }

    /// When the host stops waiting for this call, if it will.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time until the deadline (zero once passed); `None` without a deadline.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True once the call was cancelled or its deadline passed: stop and return.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Marks the call cancelled (the host does this; useful in tests).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// A tool the model may call, as in MyAgent's `BaseTool`.
///
/// `execute` runs on a host thread-pool thread, may block, and is given the model's arguments
/// already parsed as a JSON value (the host rejects non-JSON arguments before calling you).
/// A tool that can take long implements [`Tool::execute_with`] instead, to see its
/// [`ToolContext`] (deadline and cancellation).
pub trait Tool: Send + Sync + 'static {
    /// Name the model calls the tool by; must match `^[a-zA-Z0-9_-]+$`.
    fn name(&self) -> &str;
    /// What the tool does, for the model.
    fn description(&self) -> &str;
    /// The JSON Schema of the arguments object.
    fn parameters(&self) -> Value;
    /// Runs the tool.
    fn execute(&self, args: Value) -> ToolResult;
    /// Runs the tool with its call's context; this is what the host calls. The default ignores
    /// the context and calls [`Tool::execute`]. Override it in tools that can run long, and make
    /// `execute` call it with [`ToolContext::detached`] (or a timeout of your choice).
    fn execute_with(&self, args: Value, ctx: &ToolContext) -> ToolResult {
        let _ = ctx;
        self.execute(args)
    }
}

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

    /// The manifest the host reads: everything but the code, as JSON.
    pub fn manifest(&self) -> Value {
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|t| json!({"name": t.name(), "description": t.description(), "parameters": t.parameters()}))
            .collect();
        let mut m = BTreeMap::new();
        m.insert("api_version", json!(API_VERSION));
        m.insert("tool_context", json!(wire::TOOL_CONTEXT_VERSION));
        m.insert("name", json!(self.name));
        m.insert("version", json!(self.version));
        m.insert("description", json!(self.description));
        m.insert("system_prompt", json!(self.system_prompt));
        m.insert("next_step_prompt", json!(self.next_step_prompt));
        m.insert("max_steps", json!(self.max_steps));
        m.insert("enable_tracing", json!(self.enable_tracing));
        m.insert("model", json!(self.model));
        m.insert("temperature", json!(self.temperature));
        m.insert("tool_timeout_ms", json!(self.tool_timeout_ms));
        m.insert("event_prefix", json!(self.event_prefix));
        m.insert("tools", Value::Array(tools));
        json!(m)
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
    /// Finishes the definition.
    pub fn build(self) -> Agent {
        self.agent
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Exports an agent factory (`fn() -> Agent`) as this plugin's entry point.
///
/// Use it once, at the crate root of a `cdylib` crate. The factory is called for the manifest
/// and for every new session; keep it cheap (open connections lazily in tools).
#[macro_export]
macro_rules! export_agent {
    ($factory:path) => {
        #[doc(hidden)]
        pub struct __MyAgentFactory;
        impl $crate::__private::Factory for __MyAgentFactory {
            fn create() -> $crate::Agent {
                $factory()
            }
        }

        #[doc(hidden)]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader =
            $crate::__private::lib_header::<__MyAgentFactory>();
    };
}

/// How a tool call's context travels over the unchanged ABI (host and plugin-api only).
///
/// A plugin that lists `tool_context` in its manifest gets its arguments wrapped as
/// `{"__myagent_call": {"id": N, "timeout_ms": T}, "args": {...}}`, and a cancellation as the
/// custom event `{"event": "__myagent.cancel_call", "call_id": N}` sent while the call runs.
/// Plugins built before this existed get the bare arguments, as before.
#[doc(hidden)]
pub mod wire {
    /// Version of the call-context convention a plugin understands (in its manifest).
    pub const TOOL_CONTEXT_VERSION: u32 = 1;
    /// The key of the call envelope around the model's arguments.
    pub const CALL_ENVELOPE_KEY: &str = "__myagent_call";
    /// The reserved event name that cancels a running call.
    pub const CANCEL_CALL_EVENT: &str = "__myagent.cancel_call";
}

#[doc(hidden)]
pub mod __private {
    //! Plumbing for `export_agent!`; not part of the public API.
    use super::*;
    use crate::abi::{
        AgentInstance, AgentInstanceBox, AgentInstance_TO, PluginModule, PluginModule_Ref,
    };
    use abi_stable::library::{CheckTypeLayout, RootModuleResult};
    use abi_stable::prefix_type::PrefixTypeTrait;
    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};

    pub use abi_stable::library::LibHeader;

    pub trait Factory: 'static {
        fn create() -> Agent;
    }

    extern "C" fn api_version() -> u32 {
        API_VERSION
    }

    fn create_caught<F: Factory>() -> Result<Agent, String> {
        catch_unwind(F::create)
            .map_err(|p| format!("agent factory panicked: {}", panic_message(&p)))
    }

    extern "C" fn manifest<F: Factory>() -> RResult<RString, RString> {
        let result = create_caught::<F>().and_then(|agent| {
            catch_unwind(AssertUnwindSafe(|| agent.manifest().to_string()))
                .map_err(|p| format!("building the manifest panicked: {}", panic_message(&p)))
        });
        match result {
            Ok(json) => ROk(json.into()),
            Err(e) => RErr(e.into()),
        }
    }

    extern "C" fn new_instance<F: Factory>() -> RResult<AgentInstanceBox, RString> {
        match create_caught::<F>() {
            Ok(agent) => ROk(AgentInstance_TO::from_value(
                Instance {
                    agent,
                    calls: Default::default(),
                },
                TD_Opaque,
            )),
            Err(e) => RErr(e.into()),
        }
    }

    struct Instance {
        agent: Agent,
        /// The cancel flags of the calls running now, by the host's call id.
        calls: std::sync::Mutex<std::collections::HashMap<u64, Arc<AtomicBool>>>,
    }

    impl Instance {
        fn calls(
            &self,
        ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<AtomicBool>>> {
            self.calls.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Unwraps the host's call envelope: (arguments, context, call id to unregister).
        fn open_envelope(&self, value: Value) -> (Value, ToolContext, Option<u64>) {
            let mut value = value;
            let call = value
                .as_object_mut()
                .and_then(|o| o.remove(wire::CALL_ENVELOPE_KEY));
            let Some(call) = call else {
                return (value, ToolContext::detached(), None);
            };
            let args = value.get_mut("args").map(Value::take).unwrap_or(Value::Null);
            let mut ctx = match call.get("timeout_ms").and_then(Value::as_u64) {
                Some(ms) => ToolContext::with_timeout(Duration::from_millis(ms)),
                None => ToolContext::detached(),
            };
            let id = call.get("id").and_then(Value::as_u64);
            if let Some(id) = id {
                ctx.cancelled = self.calls().entry(id).or_default().clone();
            }
            (args, ctx, id)
        }
    }

    impl AgentInstance for Instance {
        fn call_tool(&self, name: RStr<'_>, args_json: RStr<'_>) -> RString {
            let result = match serde_json::from_str::<Value>(args_json.as_str()) {
                Ok(value) => {
                    let (args, ctx, id) = self.open_envelope(value);
                    let r = self.agent.call_tool_with(name.as_str(), args, &ctx);
                    if let Some(id) = id {
                        self.calls().remove(&id);
                    }
                    r
                }
                Err(e) => ToolResult::error(format!("arguments are not valid JSON: {e}")),
            };
            // Serializing a struct of three optional strings cannot fail.
            serde_json::to_string(&result).unwrap_or_default().into()
        }

        fn handle_event(
            &self,
            session_id: RStr<'_>,
            event_json: RStr<'_>,
        ) -> RResult<RString, RString> {
            let event = match serde_json::from_str::<Value>(event_json.as_str()) {
                Ok(v) => v,
                Err(e) => return RErr(format!("event is not valid JSON: {e}").into()),
            };
            if event["event"] == wire::CANCEL_CALL_EVENT {
                // Only calls running now: a late cancel must not leave an entry behind.
                if let Some(id) = event["call_id"].as_u64() {
                    if let Some(flag) = self.calls().get(&id) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                return ROk("[]".into());
            }
            match self.agent.handle_event(session_id.as_str(), event) {
                Ok(events) => ROk(Value::Array(events).to_string().into()),
                Err(e) => RErr(e.into()),
            }
        }
    }

    fn root_module<F: Factory>() -> PluginModule_Ref {
        PluginModule {
            api_version,
            manifest: manifest::<F>,
            new_instance: new_instance::<F>,
        }
        .leak_into_prefix()
    }

    extern "C" fn erased_root_module<F: Factory>() -> RootModuleResult {
        abi_stable::library::__call_root_module_loader(root_module::<F>)
    }

    /// What `#[export_root_module]` would generate, written as a const fn so a `macro_rules!`
    /// macro can use it without the plugin depending on abi_stable directly.
    pub const fn lib_header<F: Factory>() -> LibHeader {
        // SAFETY: `erased_root_module::<F>` returns the root module of type `PluginModule_Ref`,
        // the type the header is constructed for, exactly as `#[export_root_module]` does.
        unsafe {
            LibHeader::from_constructor::<PluginModule_Ref>(
                erased_root_module::<F>,
                CheckTypeLayout::Yes,
            )
        }
    }
}
