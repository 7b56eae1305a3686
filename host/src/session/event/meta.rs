//! The `metadata` objects of a run's events.

use serde::Serialize;
use serde_json::Value;

use crate::agent::usage::UsageTotals;

// Which agent an event comes from: `agent` (its name) and, in a child run (an agent asked as
// a tool), `parent_step_id` — the tool call of the run that asked it. Written as two fields of
// each metadata object (not a `#[serde(flatten)]`ed struct: that takes serde's slower map path
// on every event).

/// `agent.handoff`'s metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandoffMeta {
    pub step: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThinkingMeta {
    pub step: u32,
    /// False for the event that starts a step, true for a piece of the agent's reasoning.
    pub delta: bool,
    /// Who thinks: on a step's start always, on a piece of reasoning in a
    /// child run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_step_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerMeta {
    pub step: u32,
    /// True (with empty `content`) when the answer streamed so far is void: clear it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallMeta {
    pub tool: String,
    pub args: Value,
    /// Always "running" (the document's field).
    pub status: &'static str,
    pub step: u32,
    /// The client runs it (a frontend tool offered over AG-UI): the run waits for its result.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client: bool,
    /// The agent whose run made the call.
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_step_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalMeta {
    pub tool: String,
    /// The MCP server the tool comes from; absent for the plugin's own tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub args: Value,
    pub step: u32,
    /// The agent whose run made the call.
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_step_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolResultMeta {
    pub tool: String,
    /// "success" or "failed".
    pub status: &'static str,
    pub step: u32,
    /// The agent whose run made the call.
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_step_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinalMeta {
    pub steps: u32,
    /// "answer", "terminate", "max_steps" or "budget_reached".
    pub reason: &'static str,
    /// The run's model usage.
    pub usage: UsageTotals,
}
