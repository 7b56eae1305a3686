//! The plugin-call seam: every call from the host into plugin code — a tool, a custom-event
//! hook, the agent factory — goes through here, on the blocking pool, under a timeout.
//!
//! Errors come in two layers, as in Zed's extension host: the outer [`HostError`] means the
//! host never got an answer (timeout, the call's thread died); the inner [`PluginError`] (or a
//! failed `ToolResult`) is the plugin's own "no". Both name the plugin build.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RErr, ROk, RStr};
use myagent_plugin_api::abi::AgentInstanceBox;
use myagent_plugin_api::{wire, ToolResult};
use serde_json::Value;

use super::error::on_blocking_pool;
pub(super) use super::error::{HostError, HostErrorKind, PluginError, PluginTag};
use super::worker::RemoteInstance;
use crate::metrics::Metrics;

/// One session's agent instance. Cloning shares it; tools may run concurrently.
#[derive(Clone)]
pub struct Instance {
    inner: Inner,
    tag: Arc<PluginTag>,
    /// The plugin understands call envelopes and cancel events (see `plugin-api`'s `wire`).
    tool_context: bool,
}

/// Where the instance lives: loaded in this process, or in the build's worker.
#[derive(Clone)]
enum Inner {
    Abi(Arc<AgentInstanceBox>),
    Remote(Arc<RemoteInstance>),
}

// The life of one tool call on the blocking pool (see `Instance::call_tool`).
const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const ABANDONED: u8 = 3;

/// Held while a tool call is awaited. Dropped before the call is done — on timeout, or because
/// the run was cancelled (user cancel, session expiry, shutdown) — it tells the plugin to stop,
/// and counts the call as abandoned while its thread keeps running.
struct InFlight {
    instance: Instance,
    id: u64,
    tool: String,
    state: Arc<AtomicU8>,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let st = &self.state;
        if st
            .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return; // never started: the blocking task will skip it
        }
        if st
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // finished
        }
        self.metrics.tools_abandoned.inc();
        self.metrics.tools_abandoned_total.inc();
        tracing::info!(tool = %self.tool, call_id = self.id, plugin = %self.instance.tag,
            cooperative = self.instance.tool_context, "tool call given up while running; asked to stop");
        if self.instance.tool_context {
            let instance = self.instance.clone();
            let event = wire::cancel_call(self.id);
            // The plugin's handler only flips a flag, but it is plugin code: not on this worker.
            drop(tokio::task::spawn_blocking(move || {
                let _ = instance.handle_event_blocking("", &event);
            }));
        }
    }
}

impl Instance {
    /// Wraps an instance the plugin's factory returned.
    pub(super) fn from_abi(
        inner: AgentInstanceBox,
        tag: Arc<PluginTag>,
        tool_context: bool,
    ) -> Instance {
        Instance {
            inner: Inner::Abi(Arc::new(inner)),
            tag,
            tool_context,
        }
    }

    /// Wraps an instance living in the build's worker process.
    pub(super) fn from_remote(
        remote: RemoteInstance,
        tag: Arc<PluginTag>,
        tool_context: bool,
    ) -> Instance {
        Instance {
            inner: Inner::Remote(Arc::new(remote)),
            tag,
            tool_context,
        }
    }

    /// The plugin build this instance came from.
    pub fn tag(&self) -> &Arc<PluginTag> {
        &self.tag
    }

    /// Runs tool `name`, waiting at most `timeout`. The plugin sees the deadline, and is told to
    /// stop when the call is given up (timeout, or this future dropped because the run was
    /// cancelled); a call that keeps running anyway is counted in `metrics.tools_abandoned`
    /// until its thread returns. The tool's own failure is a `ToolResult` with an error.
    pub async fn call_tool(
        &self,
        name: &str,
        args: Value,
        (timeout, traceparent): (Duration, Option<String>),
        metrics: &Arc<Metrics>,
    ) -> Result<ToolResult, HostError> {
        static NEXT_CALL: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
        let payload = if self.tool_context {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            wire::wrap_call(
                &wire::CallMeta {
                    id,
                    timeout_ms: ms,
                    traceparent,
                },
                &args,
            )
        } else {
            args.to_string()
        };
        if let Inner::Remote(remote) = &self.inner {
            let cancel = self.tool_context.then(|| wire::cancel_call(id));
            return match remote
                .call_tool(name, payload, timeout, metrics, cancel)
                .await
            {
                Ok(json) => Ok(parse_tool_result(&json)),
                Err(kind) => Err(HostError {
                    plugin: self.tag.clone(),
                    kind,
                }),
            };
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        let _in_flight = InFlight {
            instance: self.clone(),
            id,
            tool: name.to_owned(),
            state: state.clone(),
            metrics: metrics.clone(),
        };
        let (instance, tool, m) = (self.clone(), name.to_owned(), metrics.clone());
        let result = on_blocking_pool(&self.tag, timeout, move || {
            if state
                .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return None; // given up before a thread was free
            }
            let t0 = Instant::now();
            let result = instance.call_tool_blocking(&tool, &payload);
            if state
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                m.tools_abandoned.dec();
                tracing::info!(
                    tool,
                    call_id = id,
                    ran_ms = t0.elapsed().as_millis() as u64,
                    "abandoned tool call returned"
                );
            }
            Some(result)
        })
        .await?;
        result.ok_or_else(|| HostError {
            plugin: self.tag.clone(),
            kind: HostErrorKind::TimedOut(timeout),
        })
    }

    /// Sends a custom event to the plugin's hook, waiting at most `timeout`. Returns the events
    /// to send back.
    pub async fn handle_event(
        &self,
        session_id: &str,
        event_json: String,
        timeout: Duration,
    ) -> Result<Result<Vec<Value>, PluginError>, HostError> {
        if let Inner::Remote(remote) = &self.inner {
            let r = remote
                .handle_event(session_id, event_json, timeout)
                .await
                .map_err(|kind| HostError {
                    plugin: self.tag.clone(),
                    kind,
                })?;
            return Ok(r
                .and_then(|json| parse_events(&json))
                .map_err(|message| PluginError {
                    plugin: self.tag.clone(),
                    message,
                }));
        }
        let (instance, sid) = (self.clone(), session_id.to_owned());
        let r = on_blocking_pool(&self.tag, timeout, move || {
            instance.handle_event_blocking(&sid, &event_json)
        })
        .await?;
        Ok(r.map_err(|message| PluginError {
            plugin: self.tag.clone(),
            message,
        }))
    }

    /// Runs a tool on the calling thread — only from a blocking context (benchmarks measure it).
    /// `args_json` is what crosses the ABI: the bare arguments, or the call envelope.
    /// In a worker, use [`Instance::call_tool`].
    pub fn call_tool_blocking(&self, name: &str, args_json: &str) -> ToolResult {
        match &self.inner {
            Inner::Abi(inner) => {
                let out = inner.call_tool(RStr::from_str(name), RStr::from_str(args_json));
                parse_tool_result(out.as_str())
            }
            Inner::Remote(_) => ToolResult::error("this instance runs in a worker process"),
        }
    }

    fn handle_event_blocking(
        &self,
        session_id: &str,
        event_json: &str,
    ) -> Result<Vec<Value>, String> {
        let Inner::Abi(inner) = &self.inner else {
            return Err("this instance runs in a worker process".into());
        };
        match inner.handle_event(RStr::from_str(session_id), RStr::from_str(event_json)) {
            ROk(json) => parse_events(json.as_str()),
            RErr(e) => Err(e.into_string()),
        }
    }
}

fn parse_tool_result(json: &str) -> ToolResult {
    serde_json::from_str(json).unwrap_or_else(|e| {
        ToolResult::error(format!(
            "the plugin returned an unreadable tool result: {e}"
        ))
    })
}

fn parse_events(json: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Array(events)) => Ok(events),
        _ => Err("the plugin's event handler returned something other than a JSON array".into()),
    }
}
