//! An agent asked as a tool (`ask_<agent>` {input}): a child run of that agent on `input`, with
//! a fresh memory, inside the asking call. Its events reach the client as the child's
//! (`metadata.agent`, `metadata.parent_step_id` = the asking call; its answer pieces as its
//! reasoning), its approvals wait in the session like any other, the parent's cancel stops it
//! (it shares the token), its usage counts in the session, and its final answer is the
//! tool's result.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::usage::UsageTotals;
use super::{team, Bound, Memory, Reply, RunContext, RunOutcome, SessionSettings};
use crate::llm::Content;
use crate::otel::{Span, TraceParent};

/// A run, as a child run starts one: `run::run_turn`, handed down by the run that acts (a run
/// acts, an act asks, an ask runs — passed in, not imported, so no module imports back up).
pub(super) type RunTurn = for<'a> fn(&'a RunContext<'a>, &'a mut Memory, &'a Content) -> Turned<'a>;

/// A run's future, boxed and declared `Send` (the run contains itself through its children, so
/// the compiler cannot prove it through the cycle).
pub(super) type Turned<'a> = Pin<Box<dyn Future<Output = (RunOutcome, Option<Bound>)> + Send + 'a>>;

/// A child run's future.
pub(super) type Asked<'a> = Pin<Box<dyn Future<Output = (Reply, UsageTotals)> + Send + 'a>>;

/// Runs agent `to` on the call's `input`; returns the reply and what the child spent. `spent`
/// is the session's usage so far: the child's budget check counts it.
pub(super) fn ask<'a>(
    (ctx, run_turn): (&'a RunContext<'a>, RunTurn),
    (step_id, span): (&'a str, &'a Span),
    to: &'a str,
    args: &'a Value,
    spent: UsageTotals,
) -> Asked<'a> {
    Box::pin(asked((ctx, run_turn), (step_id, span), to, args, spent))
}

async fn asked(
    (ctx, run_turn): (&RunContext<'_>, RunTurn),
    (step_id, span): (&str, &Span),
    to: &str,
    args: &Value,
    spent: UsageTotals,
) -> (Reply, UsageTotals) {
    let nothing = UsageTotals::default();
    let Some(input) = args
        .get("input")
        .and_then(Value::as_str)
        .filter(|i| !i.trim().is_empty())
    else {
        let text = format!("Error: asking `{to}` needs `input`: the question or task for it.");
        return ((Err("invalid_arguments"), text), nothing);
    };
    let slot = match team::served(ctx.agents, to) {
        Ok(slot) => slot,
        Err(text) => return ((Err("unknown_agent"), text), nothing),
    };
    let bound = match Bound::to(slot, ctx.config).await {
        Ok(b) => b,
        Err(e) => {
            let text = format!("Error: could not start `{to}`: {e}");
            return ((Err("agent_failed"), text), nothing);
        }
    };
    let _on_build = bound.plugin.begin_run();
    // The session's budget holds in the child; the rest of its settings are the parent's
    // agent's business.
    let settings = SessionSettings {
        budget: ctx.settings.budget,
        ..Default::default()
    };
    let parent = span
        .traceparent()
        .and_then(|t| TraceParent::parse(&t, None));
    let child = RunContext {
        manifest: &bound.plugin.manifest,
        instance: &bound.instance,
        settings: &settings,
        trace_parent: parent.as_ref(),
        depth: ctx.depth + 1,
        parent_step_id: Some(step_id),
        ..*ctx
    };
    let mut memory = Memory::new(ctx.config.memory_budget_chars);
    memory.usage = spent;
    tracing::info!(session_id = ctx.session_id, from = %ctx.manifest.name, to, step_id, "asking an agent");
    let input = Content::from(input);
    let (outcome, _) = run_turn(&child, &mut memory, &input).await;
    let used = memory.usage.since(&spent);
    let reply = match outcome {
        RunOutcome::Finished { answer, .. } => (Ok(()), answer),
        RunOutcome::Failed { message } => (Err("agent_failed"), format!("Error: {to}: {message}")),
        RunOutcome::Cancelled => (Err("cancelled"), format!("Error: `{to}` was cancelled.")),
    };
    (reply, used)
}
