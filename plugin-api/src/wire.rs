//! How a tool call's context travels over the unchanged ABI (host and plugin-api only): both
//! sides encode and decode it here, so the convention is written down once.
//!
//! A plugin that lists `tool_context` in its manifest gets its arguments wrapped in an envelope
//! ([`wrap_call`]: the key [`CALL_ENVELOPE_KEY`] holding the call id and its time limit, beside
//! `args`), and a cancellation as the reserved custom event [`CANCEL_CALL_EVENT`] carrying the
//! call id ([`cancel_call`]), sent while the call runs. Plugins built before this existed get
//! the bare arguments, as before.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the call-context convention a plugin understands (in its manifest).
pub const TOOL_CONTEXT_VERSION: u32 = 1;
/// The key of the call envelope around the model's arguments.
pub const CALL_ENVELOPE_KEY: &str = "__myagent_call";
/// The reserved event name that cancels a running call.
pub const CANCEL_CALL_EVENT: &str = "__myagent.cancel_call";

/// What the envelope says about a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMeta {
    pub id: u64,
    pub timeout_ms: u64,
    /// The W3C trace context of the call (the host's `execute_tool` span, or the client's
    /// trace when the host records none); absent without a trace. Added in 0.1.x: older
    /// plugins ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "__myagent_call")]
    call: &'a CallMeta,
    args: &'a Value,
}

/// The cancel message; its `event` name is [`CANCEL_CALL_EVENT`] (the serde tag).
#[derive(Serialize)]
#[serde(tag = "event", rename = "__myagent.cancel_call")]
struct CancelCall {
    call_id: u64,
}

/// The host's side: `args` in the call envelope, as the JSON text the ABI carries.
pub fn wrap_call(call: &CallMeta, args: &Value) -> String {
    // A struct of numbers and a `Value` always serializes.
    serde_json::to_string(&Envelope { call, args }).unwrap_or_default()
}

/// The plugin's side: takes the envelope off `value` if there is one; returns the call's
/// details (when readable) and the model's arguments.
pub(crate) fn open_call(mut value: Value) -> (Option<CallMeta>, Value) {
    let Some(call) = value
        .as_object_mut()
        .and_then(|o| o.remove(CALL_ENVELOPE_KEY))
    else {
        return (None, value);
    };
    let args = value
        .get_mut("args")
        .map(Value::take)
        .unwrap_or(Value::Null);
    (serde_json::from_value(call).ok(), args)
}

/// The host's side: the custom event that tells the plugin to stop call `call_id`.
pub fn cancel_call(call_id: u64) -> String {
    serde_json::to_string(&CancelCall { call_id }).unwrap_or_default()
}

/// The plugin's side: `Some(call id)` when `event` is a cancel (`Some(None)`: one without a
/// readable id), `None` for any other event.
pub(crate) fn cancelled_call(event: &Value) -> Option<Option<u64>> {
    (event.get("event").and_then(Value::as_str) == Some(CANCEL_CALL_EVENT))
        .then(|| event.get("call_id").and_then(Value::as_u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_host_writes_the_plugin_reads() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for traceparent in [None, Some(tp.to_owned())] {
            let meta = CallMeta {
                id: 7,
                timeout_ms: 2_000,
                traceparent,
            };
            let wrapped: Value =
                serde_json::from_str(&wrap_call(&meta, &json!({"city": "Paris"}))).unwrap();
            assert_eq!(open_call(wrapped), (Some(meta), json!({"city": "Paris"})));
        }
        // What a host before `traceparent` wrote still opens.
        let old = json!({"__myagent_call": {"id": 3, "timeout_ms": 10}, "args": {}});
        assert_eq!(open_call(old).0.unwrap().traceparent, None);
        // Bare arguments (a host before the convention) pass through.
        assert_eq!(
            open_call(json!({"city": "Oslo"})),
            (None, json!({"city": "Oslo"}))
        );

        let cancel: Value = serde_json::from_str(&cancel_call(7)).unwrap();
        assert_eq!(cancel["event"], CANCEL_CALL_EVENT);
        assert_eq!(cancelled_call(&cancel), Some(Some(7)));
        assert_eq!(cancelled_call(&json!({"event": "weather.refresh"})), None);
    }
}
