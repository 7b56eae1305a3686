//! How a tool call's context travels over the unchanged ABI (host and plugin-api only).
//!
//! A plugin that lists `tool_context` in its manifest gets its arguments wrapped as
//! `{"__myagent_call": {"id": N, "timeout_ms": T}, "args": {...}}`, and a cancellation as the
//! custom event `{"event": "__myagent.cancel_call", "call_id": N}` sent while the call runs.
//! Plugins built before this existed get the bare arguments, as before.

/// Version of the call-context convention a plugin understands (in its manifest).
pub const TOOL_CONTEXT_VERSION: u32 = 1;
/// The key of the call envelope around the model's arguments.
pub const CALL_ENVELOPE_KEY: &str = "__myagent_call";
/// The reserved event name that cancels a running call.
pub const CANCEL_CALL_EVENT: &str = "__myagent.cancel_call";
