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
//!
//! Clients may configure their own session (`agent_config` on `user.create_session`: model,
//! temperature, max_steps, extra instructions) only within limits you declare with
//! [`AgentBuilder::session_overrides`] and [`SessionOverrides`]; by default nothing.

pub mod abi;
mod agent;
mod manifest;
mod tool;
#[doc(hidden)]
pub mod wire;

pub use agent::{Agent, AgentBuilder, EventContext};
pub use manifest::{Manifest, McpServer, SessionOverrides, ToolSpec, TERMINATE_TOOL};
pub use serde_json::{json, Map, Value};
pub use tool::{Tool, ToolContext, ToolResult};

#[doc(hidden)]
#[path = "export.rs"]
pub mod __private;

/// The plugin protocol version. The host refuses plugins with another one; abi_stable also
/// checks this crate's semver (0.1.x) and the layout of every type in [`abi`].
pub const API_VERSION: u32 = 1;

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
