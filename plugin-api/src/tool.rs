//! Tools: what a tool is ([`Tool`]), what it returns ([`ToolResult`]) and what it may know
//! about its call ([`ToolContext`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

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
    traceparent: Option<String>,
}

impl ToolContext {
    /// No deadline and never cancelled (for calling tools outside the host, e.g. in tests).
    pub fn detached() -> ToolContext {
        ToolContext {
            deadline: None,
            cancelled: Arc::new(AtomicBool::new(false)),
            traceparent: None,
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
    /// The call's W3C trace context (`traceparent`), to send on the requests the tool makes
    /// so they join the run's trace; None when the call has no trace.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// This context with a trace context (the host sets it; tests of tools may too).
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> ToolContext {
        self.traceparent = traceparent;
        self
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Marks the call cancelled (the host does this; useful in tests).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// A context whose cancel flag is `flag` (shared with the host's cancel event).
    pub(crate) fn with_flag(mut self, flag: Arc<AtomicBool>) -> ToolContext {
        self.cancelled = flag;
        self
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
    /// True when a person must approve each call before it runs (sending mail, paying,
    /// deleting): the host pauses the run, asks the client (`agent.tool_approval_required`) and
    /// runs the tool only if it is approved; a denied or unanswered call reaches the model as a
    /// failed result. Default: false.
    fn needs_approval(&self) -> bool {
        false
    }
}
