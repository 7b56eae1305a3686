//! Running a turn on a session — the build swap after a hot reload, the agent loop, and the
//! one place a run's end becomes the client's final event — and custom events.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::event::{ErrorCode, FinalMeta, ServerEvent};
use super::log::{Bound, Session};
use super::sink::SessionSink;
use super::turn::Turn;
use crate::agent::usage::UsageTotals;
use crate::agent::{run_turn as run_agent_turn, AgentRuntime, RunContext, RunOutcome};

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
    let settings = slot.settings.for_agent(&plugin.manifest);
    let (agent, generation) = (&plugin.manifest.name, plugin.generation);
    if (&slot.checked_for.0, slot.checked_for.1) != (agent, generation) {
        if let Err(why) = slot.settings.check(&plugin.manifest) {
            tracing::warn!(session_id = %session.id, agent = %agent, reason = %why,
                "this agent's build does not allow the session's agent_config; its own settings apply (the session's budget still holds)");
        }
        slot.checked_for = (agent.clone(), generation);
    }
    // The build's worker is kept until this run ends, even if a reload replaces the build.
    let _on_build = plugin.begin_run();
    let slot = &mut *slot;
    let memory = &mut slot.memory;
    let sink = SessionSink {
        session,
        metrics: &runtime.metrics,
    };
    let ctx = RunContext {
        model: &runtime.model,
        manifest: &plugin.manifest,
        settings: &settings,
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
        agents: &runtime.agents,
        depth: 0,
        parent_step_id: None,
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
    let (outcome, handed) = run_agent_turn(&ctx, memory, content).await;
    if let Some(to) = handed {
        // A handoff: the session talks to that agent from now on (stored with the turn).
        session.set_bound(&to);
        session.set_agent(&to.plugin.manifest.name);
    }
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
        (memory.to_stored(), memory.usage.to_stored()),
        &session.agent_name(),
    );
    session
        .kept
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let next = session.finish_run(&final_event(outcome, run), &runtime.metrics, true);
    if next.is_none() {
        if let Err(e) = d.commit_session(session.shared_id()).await {
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
    // The store names another agent (a handoff in a turn run on another host, taken over
    // here): the session talks to that one.
    let listed = session.agent_name();
    if !listed.is_empty() && listed != current.manifest.name {
        if let Some(slot) = runtime.agents.named(&listed) {
            match Bound::to(slot, &runtime.config).await {
                Ok(fresh) => {
                    session.set_bound(&fresh);
                    return fresh;
                }
                Err(e) => tracing::error!(session_id = %session.id, agent = %listed, error = %e,
                    "the session's agent failed to create an agent instance; staying with the one bound"),
            }
        }
    }
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
