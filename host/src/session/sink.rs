//! A run's events, as the session publishes them: [`SessionSink`] turns each [`AgentEvent`]
//! into its [`ServerEvent`], naming the agent that speaks (`metadata.agent`, and in a child run
//! `metadata.parent_step_id`).

use super::event::{
    AnswerMeta, ApprovalMeta, HandoffMeta, ServerEvent, ThinkingMeta, ToolCallMeta, ToolResultMeta,
};
use super::log::Session;
use crate::agent::{AgentEvent, EventSink, Speaker};
use crate::metrics::Metrics;

/// Turns a run's events into session events.
pub(super) struct SessionSink<'a> {
    pub(super) session: &'a Session,
    pub(super) metrics: &'a Metrics,
}

impl EventSink for SessionSink<'_> {
    fn emit(&self, event: AgentEvent, speaker: &Speaker<'_>) {
        // Pieces of a model's stream wait for its pause (one wake-up of the client's writer per
        // model read); every other event goes at once, and takes any waiting pieces with it.
        let streamed = matches!(
            event,
            AgentEvent::Answer { .. } | AgentEvent::Reasoning { .. }
        );
        let e = event_of(event, speaker);
        if streamed {
            self.session.emit_streamed(&e, self.metrics);
        } else {
            self.session.emit(&e, self.metrics);
        }
    }

    fn flush(&self) {
        self.session.wake();
    }
}

/// The session event a run's event is.
fn event_of(event: AgentEvent, speaker: &Speaker<'_>) -> ServerEvent {
    let agent = || speaker.agent.to_owned();
    let parent_step_id = speaker.parent_step_id.map(str::to_owned);
    match event {
        AgentEvent::Thinking { step, content } => thinking(content, step, false, speaker),
        AgentEvent::Reasoning { step, text } => thinking(text, step, true, speaker),
        AgentEvent::Answer { step, text } => ServerEvent::PartialAnswer {
            content: text,
            metadata: AnswerMeta { step, reset: false },
        },
        AgentEvent::AnswerReset { step } => ServerEvent::PartialAnswer {
            content: String::new(),
            metadata: AnswerMeta { step, reset: true },
        },
        AgentEvent::ToolCall {
            step,
            step_id,
            tool,
            args,
            client,
        } => ServerEvent::ToolCall {
            step_id,
            content: format!("Calling tool {tool}"),
            metadata: ToolCallMeta {
                tool,
                args,
                status: "running",
                step,
                client,
                agent: agent(),
                parent_step_id,
            },
        },
        AgentEvent::ApprovalRequired {
            step,
            step_id,
            tool,
            server,
            args,
        } => ServerEvent::ToolApprovalRequired {
            step_id,
            content: match &server {
                Some(s) => format!("Tool {tool} (MCP server {s}) needs approval"),
                None => format!("Tool {tool} needs approval"),
            },
            metadata: ApprovalMeta {
                tool,
                server,
                args,
                step,
                agent: agent(),
                parent_step_id,
            },
        },
        AgentEvent::ToolResult {
            step,
            step_id,
            tool,
            content,
            success,
        } => ServerEvent::ToolResult {
            step_id,
            content,
            metadata: ToolResultMeta {
                tool,
                status: if success { "success" } else { "failed" },
                step,
                agent: agent(),
                parent_step_id,
            },
        },
        AgentEvent::Handoff {
            step,
            step_id,
            from,
            to,
            reason,
        } => ServerEvent::Handoff {
            step_id,
            from,
            to,
            reason,
            metadata: HandoffMeta { step },
        },
    }
}

/// A step's start (`delta` false: it names its agent) or a piece of reasoning (only a child
/// run's name their agent: deltas are many).
fn thinking(content: String, step: u32, delta: bool, speaker: &Speaker<'_>) -> ServerEvent {
    let parent_step_id = speaker.parent_step_id.map(str::to_owned);
    let named = !delta || parent_step_id.is_some();
    ServerEvent::Thinking {
        content,
        metadata: ThinkingMeta {
            step,
            delta,
            agent: named.then(|| speaker.agent.to_owned()),
            parent_step_id,
        },
    }
}
