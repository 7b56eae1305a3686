//! Running a turn on a session — the build swap after a hot reload, the agent loop, and the
//! one place a run's end becomes the client's final event — and custom events.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::event::{
    AnswerMeta, ApprovalMeta, ErrorCode, FinalMeta, ServerEvent, ThinkingMeta, ToolCallMeta,
    ToolResultMeta,
};
use super::log::{Bound, Session};
use super::turn::Turn;
use crate::agent::usage::UsageTotals;
use crate::agent::{run_agent, AgentEvent, AgentRuntime, EventSink, RunContext, RunOutcome};
use crate::metrics::Metrics;

/// After an interrupt, how long the interrupting message waits before its turn calls the model:
/// a burst of interrupting messages settles on the last one, and only that one makes a call.
const INTERRUPT_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Agent runs on `session`, one after another: `content`, then each message queued meanwhile.
pub(super) async fn run_turns(
    runtime: &AgentRuntime,
    session: &Arc<Session>,
    mut cancel: CancellationToken,
    mut turn: Turn,
    place: Option<super::quota::RunPlace>,
) {
    loop {
        let ended = cancel.clone();
        let before = session.usage().tokens();
        let next = run_turn(runtime, session, cancel, &turn).await;
        if let Some(place) = &place {
            place.spend(session.usage().tokens() - before).await;
        }
        match next {
            Some((next, token)) => (turn, cancel) = (next, token),
            None => return,
        }
        if ended.is_cancelled() {
            // Interrupted: if another message interrupts within the settle time, this one
            // ends as interrupted before its model call (the cancelled run never calls).
            tokio::select! {
                _ = tokio::time::sleep(INTERRUPT_SETTLE) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
}

/// One agent run on `session`: everything it reports goes out through the session's log.
/// Returns the next queued message, if any, already marked as running.
async fn run_turn(
    runtime: &AgentRuntime,
    session: &Arc<Session>,
    cancel: CancellationToken,
    Turn { content, trace }: &Turn,
) -> Option<(Turn, CancellationToken)> {
    let mut slot = session.agent.lock().await;
    let Bound {
        plugin, instance, ..
    } = bound_to_current(runtime, session).await;
    if slot.checked_for != plugin.generation {
        if let Err(why) = slot.settings.check(&plugin.manifest) {
            tracing::warn!(session_id = %session.id, reason = %why,
                "the new build does not allow this session's agent_config; using the agent's own settings");
            slot.settings = Default::default();
        }
        slot.checked_for = plugin.generation;
    }
    // The build's worker is kept until this run ends, even if a reload replaces the build.
    let _on_build = plugin.begin_run();
    let slot = &mut *slot;
    let (memory, settings) = (&mut slot.memory, &slot.settings);
    let sink = SessionSink {
        session,
        metrics: &runtime.metrics,
    };
    let ctx = RunContext {
        model: &runtime.model,
        manifest: &plugin.manifest,
        settings,
        instance: &instance,
        mcp: &runtime.mcp,
        config: &runtime.config,
        sink: &sink,
        approvals: &session.approvals,
        cancel: &cancel,
        tracer: runtime.tracer.as_ref(),
        telemetry: &runtime.telemetry,
        trace_parent: trace.as_ref(),
        metrics: &runtime.metrics,
        session_id: &session.id,
    };
    // A durable session notes the turn before it runs and the memory after: a host that
    // stops in between leaves a turn its next resume closes as interrupted (`host_lost`).
    let store = session.store();
    let title = session.turn_started(&content.text());
    if let Some(d) = store {
        d.turn_start(
            &session.id,
            session.user.as_deref(),
            serde_json::to_string(content).unwrap_or_default(),
            title,
        );
    }
    let before = memory.usage;
    let outcome = run_agent(&ctx, memory, content).await;
    let run = memory.usage.since(&before);
    session.turn_ended(memory.usage);
    let usage = ServerEvent::Usage {
        run,
        session: memory.usage,
    };
    session.emit(&usage, &runtime.metrics);
    let Some(d) = session.store() else {
        return session.finish_run(&final_event(outcome, run), &runtime.metrics, false);
    };
    // Acknowledged means durable: `agent.ready` reaches the client once the turn's end (its
    // events, the memory) is committed, or `--store-ack-timeout` passed.
    d.turn_end(
        &session.id,
        session.user.as_deref(),
        memory.to_stored(),
        memory.usage.to_stored(),
    );
    session
        .kept
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let next = session.finish_run(&final_event(outcome, run), &runtime.metrics, true);
    if next.is_none() {
        if let Err(e) = d.commit().await {
            tracing::warn!(session_id = %session.id, error = %e, "turn acknowledged before the store confirmed it");
        }
        session.release(&runtime.metrics);
    }
    next
}

/// How a run's end reads to the client: the one route for every way a run ends.
fn final_event(outcome: RunOutcome, usage: UsageTotals) -> ServerEvent {
    match outcome {
        RunOutcome::Finished {
            answer,
            reason,
            steps,
        } => ServerEvent::FinalAnswer {
            content: answer,
            metadata: FinalMeta {
                steps,
                reason: reason.as_str(),
                usage,
            },
        },
        RunOutcome::Failed { message } => ServerEvent::error(ErrorCode::RunFailed, message),
        RunOutcome::Cancelled => ServerEvent::Interrupted { reason: None },
    }
}

/// Hot reload: the session's binding, moved to the serving build if a reload replaced the one
/// it has (the conversation is kept; if the new build's factory fails, the old build stays).
async fn bound_to_current(runtime: &AgentRuntime, session: &Session) -> Bound {
    let bound = session.bound();
    let current = bound.slot.current();
    if current.generation == bound.plugin.generation {
        return bound;
    }
    let timeout = runtime.config.tool_timeout_for(&current.manifest);
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!(session_id = %session.id, error = %e,
            "new plugin build failed to create an agent; keeping the old one");
    };
    match current.instantiate(timeout).await {
        Ok(Ok(instance)) => {
            let fresh = Bound {
                slot: bound.slot.clone(),
                plugin: current,
                instance,
            };
            session.set_bound(&fresh);
            fresh
        }
        Ok(Err(e)) => {
            failed(&e);
            bound
        }
        Err(e) => {
            failed(&e);
            bound
        }
    }
}

/// A custom client event, handed to the plugin's hook; what it returns goes back as events.
pub(super) async fn custom_event(runtime: &AgentRuntime, session: &Session, event: Value) {
    let Bound {
        plugin, instance, ..
    } = bound_to_current(runtime, session).await;
    let timeout = runtime.config.tool_timeout_for(&plugin.manifest);
    let failed = |e: &dyn std::fmt::Display| {
        let text = format!("Custom event failed: {e}");
        session.emit(
            &ServerEvent::error(ErrorCode::CustomEventFailed, text),
            &runtime.metrics,
        );
    };
    match instance
        .handle_event(&session.id, event.to_string(), timeout)
        .await
    {
        Ok(Ok(events)) => {
            for ev in events {
                match ev {
                    Value::Object(map) if map.get("event").is_some_and(Value::is_string) => {
                        session.emit_custom(map, &runtime.metrics)
                    }
                    _ => tracing::warn!(
                        "plugin event handler returned an event without an `event` name; dropped"
                    ),
                }
            }
        }
        Ok(Err(e)) => failed(&e),
        Err(e) => failed(&e),
    }
}

/// Turns a run's events into session events.
struct SessionSink<'a> {
    session: &'a Session,
    metrics: &'a Metrics,
}

impl EventSink for SessionSink<'_> {
    fn emit(&self, event: AgentEvent) {
        let e = match event {
            AgentEvent::Thinking { step, content } => ServerEvent::Thinking {
                content,
                metadata: ThinkingMeta { step, delta: false },
            },
            AgentEvent::Reasoning { step, text } => ServerEvent::Thinking {
                content: text,
                metadata: ThinkingMeta { step, delta: true },
            },
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
                },
            },
        };
        self.session.emit(&e, self.metrics);
    }
}
