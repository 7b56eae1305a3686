//! The agent runtime: MyAgent's ReAct / tool-calling loop, run by the host for a plugin's agent.
//!
//! Each step *thinks* (asks the model, with the plugin's tools and the built-in `terminate`) and
//! then *acts* (runs the requested tool calls concurrently, feeding each result back as a `tool`
//! message in call order). A run ends when the model answers without tools, calls `terminate`,
//! or reaches `max_steps`. What happens along the way is reported through an [`EventSink`] as it
//! happens; how the run ended is the returned [`RunOutcome`]. Tool failures of every kind become
//! text the model sees; the run goes on.
//!
//! **Architecture Invariant:** when [`run_agent`] returns — finished, failed or cancelled — the
//! memory holds only complete turns: every assistant `tool_calls` message has all its replies.

mod act;
pub(crate) mod approval;
mod child;
pub(crate) mod client_tools;
pub(crate) mod memory;
mod run;
pub(crate) mod settings;
mod spans;
mod stream;
pub mod team;
pub(crate) mod trace;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::llm::Model;
use crate::mcp::McpHub;
use crate::metrics::Metrics;
use crate::plugin::reload::Agents;
use crate::plugin::{Instance, Manifest};
pub use approval::{Approvals, Decision, PendingApproval};
pub use memory::Memory;
pub use myagent_plugin_api::TERMINATE_TOOL;
pub use run::{run_agent, run_turn};
pub use settings::SessionSettings;
pub use team::{Bound, Links};
pub use trace::TraceWriter;

/// What a tool call came to: the text the model sees, and on failure what kind of failure
/// (a trace's `error.type`).
type Reply = (Result<(), &'static str>, String);

/// What the memory records for a run the user cancelled.
pub const INTERRUPTED_NOTE: &str = "(The user interrupted this response.)";

/// What a run reports while it runs, in order (how it ends is its [`RunOutcome`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// A step starts: the agent is reasoning.
    Thinking { step: u32, content: String },
    /// A piece of the agent's reasoning: the model's text before tool calls, or the reasoning
    /// it streams separately.
    Reasoning { step: u32, text: String },
    /// A piece of the answer. After the run's last [`AgentEvent::AnswerReset`] they add up to
    /// the final answer.
    Answer { step: u32, text: String },
    /// The answer pieces sent so far in this run are void (they turned out to precede tool
    /// calls, or the final answer is another text).
    AnswerReset { step: u32 },
    /// A tool call starts. `step_id` ties it to its result.
    ToolCall {
        step: u32,
        step_id: String,
        tool: String,
        args: Value,
        /// The session's client runs it (a frontend tool): its result comes from the client.
        client: bool,
    },
    /// A tool call waits for a person's approval (it follows the call's
    /// [`AgentEvent::ToolCall`]; its [`AgentEvent::ToolResult`] comes after the decision).
    ApprovalRequired {
        step: u32,
        step_id: String,
        tool: String,
        /// The MCP server the tool comes from (none: the plugin's own).
        server: Option<String>,
        args: Value,
    },
    /// A tool call ended.
    ToolResult {
        step: u32,
        step_id: String,
        tool: String,
        content: String,
        success: bool,
    },
    /// The call `step_id` handed the conversation over: the run goes on under agent `to`.
    Handoff {
        step: u32,
        step_id: String,
        from: String,
        to: String,
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model answered without tools.
    Answer,
    /// The `terminate` tool was called.
    Terminated,
    /// `max_steps` was reached.
    MaxSteps,
    /// The session's budget was spent; no further model call was made.
    BudgetReached,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Answer => "answer",
            FinishReason::Terminated => "terminate",
            FinishReason::MaxSteps => "max_steps",
            FinishReason::BudgetReached => "budget_reached",
        }
    }
}

/// Receives a run's events. Implementations must not block (the session layer queues).
pub trait EventSink: Send + Sync {
    /// `event`, from the run of `speaker`.
    fn emit(&self, event: AgentEvent, speaker: &Speaker<'_>);
    /// The model paused (or its call ended): pieces of answer and reasoning emitted since the
    /// last flush are delivered now. A sink may hold those pieces back until then, so the
    /// pieces of one model read reach a client in one write; every other event is delivered at
    /// once, with any pieces before it.
    fn flush(&self) {}
}

/// Whose run an event comes from: the agent, and for a child run (an agent asked as a tool)
/// the tool call of the run that asked it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speaker<'a> {
    pub agent: &'a str,
    pub parent_step_id: Option<&'a str>,
}

/// Host-side settings for runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The model when the plugin names none.
    pub default_model: String,
    /// Per tool call (and custom-event hook), unless the plugin sets its own.
    pub tool_timeout: Duration,
    /// Longer tool outputs are cut to this many characters before the model sees them.
    pub max_tool_output_chars: usize,
    /// Conversation budget in characters (see [`Memory`]).
    pub memory_budget_chars: usize,
    /// Characters of a model message held back until it is known whether tool calls follow
    /// (then they are reasoning) or not (the answer); 0 streams every message as the answer
    /// at once (see `agent/stream.rs`).
    pub answer_holdback_chars: usize,
    /// Tools the operator wants approved before every call (beside those the plugin marks).
    pub require_approval: Vec<String>,
    /// A call not decided within this is denied.
    pub approval_timeout: Duration,
    /// Dollars per million tokens per model (`--prices`); None: costs are not reported.
    pub prices: Option<Arc<usage::Prices>>,
    /// Every session's budget (`--session-token-budget`, `--session-cost-budget`); a session
    /// may tighten it (`agent_config.budget`).
    pub session_budget: usage::Budget,
    /// The operator's handoffs and agent tools (`--handoff`, `--agent-tool`).
    pub links: Links,
}

impl AgentConfig {
    /// How long a call into `manifest`'s plugin may take: its own timeout, else the host's.
    pub fn tool_timeout_for(&self, manifest: &Manifest) -> Duration {
        manifest
            .tool_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.tool_timeout)
    }

    /// True when every call of `tool` needs a person's approval first.
    pub fn needs_approval(&self, manifest: &Manifest, tool: &str) -> bool {
        manifest.needs_approval.iter().any(|t| t == tool)
            || self.require_approval.iter().any(|t| t == tool)
    }
}

/// What runs need from the host, shared by every session: the serving plugin build, the model,
/// settings, the tracer and the metrics.
pub struct AgentRuntime {
    /// The agents served (one plugin slot each; the first is the default).
    pub agents: Agents,
    pub model: Model,
    /// Tools from MCP servers (`--mcp-config`), offered beside the plugin's.
    pub mcp: Arc<McpHub>,
    pub config: AgentConfig,
    pub tracer: Option<TraceWriter>,
    /// OTLP spans and trace context (`Telemetry::off()` when not exporting).
    pub telemetry: crate::otel::Telemetry,
    pub metrics: Arc<Metrics>,
}

impl AgentRuntime {
    /// The tools a run of `manifest`'s agent is offered (besides `terminate`): the plugin's,
    /// then the MCP servers', as the model sees them.
    pub fn tool_names(&self, manifest: &Manifest) -> Vec<String> {
        manifest
            .tools
            .iter()
            .map(|t| t.name.clone())
            .chain(self.mcp.offered(manifest).into_iter().map(|e| e.name))
            .collect()
    }
}

/// Everything a run needs besides the session's memory. All borrowed, so a handoff or a child
/// run makes its own from its parent's (`RunContext { manifest, .. *ctx }`).
#[derive(Clone, Copy)]
pub struct RunContext<'a> {
    pub model: &'a Model,
    pub manifest: &'a Manifest,
    /// The session's own settings (`agent_config`), within the manifest's limits.
    pub settings: &'a SessionSettings,
    pub instance: &'a Instance,
    pub mcp: &'a McpHub,
    pub config: &'a AgentConfig,
    pub sink: &'a dyn EventSink,
    /// Where calls that need approval wait for it (the session's).
    pub approvals: &'a Approvals,
    pub cancel: &'a CancellationToken,
    pub tracer: Option<&'a TraceWriter>,
    pub telemetry: &'a crate::otel::Telemetry,
    /// The trace the run belongs to: the client's `traceparent`, if it sent one.
    pub trace_parent: Option<&'a crate::otel::TraceParent>,
    pub metrics: &'a Arc<Metrics>,
    pub session_id: &'a str,
    /// Every agent the host serves (handoffs and agent tools go to them).
    pub agents: &'a Agents,
    /// 0 for a session's run; a child run (an agent asked as a tool) is one deeper.
    pub depth: u8,
    /// In a child run: the tool call of the run that asked for it.
    pub parent_step_id: Option<&'a str>,
}

impl RunContext<'_> {
    /// Reports `event` as this run's agent's.
    pub fn emit(&self, event: AgentEvent) {
        // A child run's answer is its parent's tool result, not the answer of the turn: its
        // pieces go out as the child's reasoning (answer pieces add up to the turn's answer).
        let event = match (self.parent_step_id, event) {
            (Some(_), AgentEvent::Answer { step, text }) => AgentEvent::Reasoning { step, text },
            (Some(_), AgentEvent::AnswerReset { .. }) => return,
            (_, event) => event,
        };
        let speaker = Speaker {
            agent: &self.manifest.name,
            parent_step_id: self.parent_step_id,
        };
        self.sink.emit(event, &speaker);
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Finished {
        answer: String,
        reason: FinishReason,
        steps: u32,
    },
    Failed {
        message: String,
    },
    Cancelled,
}
