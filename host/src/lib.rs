//! `myagent-host`: loads LLM agents from native plugins and serves them over WebSocket.
//!
//! The binary (`main.rs`) is thin glue over this library: [`server`] is the WebSocket door and
//! HTTP endpoints, [`session`] the session engine every door drives, [`store`] where sessions
//! outlive the process, [`agent`] runs the ReAct loop, [`llm`] talks to the model, [`plugin`]
//! loads and hot-reloads agent plugins, [`mcp`] talks to MCP tool servers. See ARCHITECTURE.md.

#![warn(unreachable_pub)]

pub mod agent;
pub mod backoff;
pub(crate) mod cancel;
pub mod journal;
pub mod lines;
pub mod llm;
pub mod mcp;
pub mod metrics;
pub mod otel;
pub mod plugin;
pub mod private;
pub mod scaffold;
pub mod secret;
pub mod server;
pub mod session;
pub mod store;
pub mod time;
