//! Acting: one step's tool calls, run concurrently — approval where a tool needs it, the
//! built-in `terminate`, the plugin's tools through its instance, MCP servers' tools — each
//! reply truncated for the model and reported as events.

use std::time::Instant;

use serde_json::{json, Value};

use super::child::RunTurn;
use super::team::{self, Link};
use super::trace::trace;
use super::usage::UsageTotals;
use super::{AgentEvent, Bound, Decision, PendingApproval, Reply, RunContext};
use crate::llm::ToolCall;
use crate::mcp::{Exposed, McpHub};
use crate::otel::{Span, ToolKind};
use crate::plugin::HostErrorKind;
use myagent_plugin_api::TERMINATE_TOOL;

/// What a step's tool calls came to: each reply's text in call order, the agent a handoff
/// moved the run to, and what child runs (agents asked as tools) spent.
pub(super) struct Acted {
    pub(super) texts: Vec<String>,
    pub(super) handed: Option<Bound>,
    pub(super) usage: UsageTotals,
}

/// Besides its reply, what a call may leave: the agent it handed over to, or a child run's
/// usage.
#[derive(Default)]
struct Extra {
    handed: Option<Bound>,
    usage: UsageTotals,
}

/// Runs one step's tool calls concurrently, each under its own span (a child of `run`).
/// `spent` is the session's usage so far (a child run's budget counts it).
pub(super) async fn act(
    ctx: &RunContext<'_>,
    run: &Span,
    step: u32,
    calls: &[ToolCall],
    (spent, run_turn): (UsageTotals, RunTurn),
) -> Acted {
    // The handoffs and agent tools the calls stand for (looked up once a step); one handoff a
    // step: the first call of one is it.
    let offered = team::offered(ctx);
    let links: Vec<Option<&Link>> = calls
        .iter()
        .map(|c| team::find(&offered, &c.function.name))
        .collect();
    let handoff_at = links
        .iter()
        .position(|l| matches!(l, Some(Link::Handoff(_))));
    let links = &links;
    let futures = calls.iter().enumerate().map(|(i, call)| async move {
        // A child run's ids start with its parent's: unique in the session however the
        // provider numbers calls.
        let step_id = match ctx.parent_step_id {
            Some(parent) => format!("{parent}/step{step}-{i}-{}", call.id),
            None => format!("step{step}-{i}-{}", call.id),
        };
        let name = call.function.name.as_str();
        let parsed = parse_arguments(&call.function.arguments);
        let shown_args = parsed.clone().unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
        let link = links[i];
        // An MCP server's tool is known by its identity (server, own name), not only by the
        // name it is offered under: approval follows it however it is named.
        let mcp = if link.is_some() { None } else { mcp_tool(ctx, name) };
        let client = link.is_none() && mcp.is_none() && !ctx.manifest.tools.iter().any(|t| t.name == name) && ctx.approvals.client.runs(name);
        ctx.emit(AgentEvent::ToolCall { step, step_id: step_id.clone(), tool: name.to_owned(), args: shown_args.clone(), client });
        let kind = if mcp.is_some() { ToolKind::Extension } else { ToolKind::Function };
        let span = ctx.telemetry.tool_span(run, name, &call.id, kind);
        span.content("gen_ai.tool.call.arguments", || call.function.arguments.clone());
        let t0 = Instant::now();
        let needs_approval = ctx.config.needs_approval(ctx.manifest, name)
            || mcp.as_ref().is_some_and(|e| McpHub::named_in(e, &ctx.config.require_approval));
        let server = mcp.as_ref().map(|e| e.server.name.as_str());
        let call_of = Call { step, step_id: &step_id, name, span: &span, link, first_handoff: handoff_at == Some(i), spent, run_turn };
        let ((outcome, text), extra) = match parsed {
            Err(why) => ((Err("invalid_arguments"), format!("Error: the arguments for `{name}` are not a valid JSON object ({why}). Call it again with a JSON object.")), Extra::default()),
            Ok(_) if client => (client_result(ctx, &step_id, name).await, Extra::default()),
            Ok(args) if needs_approval => match approve(ctx, step, &step_id, (name, server), &args).await {
                Ok(()) => perform(ctx, call_of, args, mcp.as_ref()).await,
                Err(refusal) => ((Err("not_approved"), refusal), Extra::default()),
            },
            Ok(args) => perform(ctx, call_of, args, mcp.as_ref()).await,
        };
        let success = outcome.is_ok();
        ctx.metrics.tool_calls.inc();
        match outcome {
            Ok(()) => span.content("gen_ai.tool.call.result", || text.clone()),
            Err(kind) => {
                ctx.metrics.tool_failures.inc();
                span.fail(kind, &text);
            }
        }
        drop(span);
        let text = truncate_output(text, ctx.config.max_tool_output_chars);
        trace(ctx, json!({"kind": "tool_call", "session_id": ctx.session_id, "step": step, "tool": name, "args": shown_args,
            "duration_ms": t0.elapsed().as_millis() as u64, "success": success}));
        ctx.emit(AgentEvent::ToolResult { step, step_id, tool: name.to_owned(), content: text.clone(), success });
        (text, extra)
    });
    let mut acted = Acted {
        texts: Vec::with_capacity(calls.len()),
        handed: None,
        usage: UsageTotals::default(),
    };
    for (text, extra) in futures_util::future::join_all(futures).await {
        acted.texts.push(text);
        acted.usage.add(&extra.usage);
        acted.handed = acted.handed.or(extra.handed);
    }
    acted
}

/// One call, as [`perform`] needs it.
#[derive(Clone, Copy)]
struct Call<'a> {
    step: u32,
    step_id: &'a str,
    name: &'a str,
    span: &'a Span,
    /// The handoff or agent tool the name stands for, if any.
    link: Option<&'a Link>,
    /// This is the step's first handoff call (the only one that may hand over).
    first_handoff: bool,
    spent: UsageTotals,
    /// How a child run (an agent asked as a tool) runs.
    run_turn: RunTurn,
}

/// Runs one call that may run now: a handoff, an agent asked as a tool, or any other tool.
async fn perform(
    ctx: &RunContext<'_>,
    call: Call<'_>,
    args: Value,
    mcp: Option<&Exposed>,
) -> (Reply, Extra) {
    match call.link {
        Some(Link::Handoff(to)) if !call.first_handoff => (
            (
                Err("handoff_refused"),
                format!("Error: only one handoff per step; `{to}` was not asked (an earlier call of this step hands over)."),
            ),
            Extra::default(),
        ),
        Some(Link::Handoff(to)) => match hand_over(ctx, &call, to, &args).await {
            Ok(bound) => (
                (Ok(()), format!("Transferred to {to}: {to} takes the conversation from here.")),
                Extra {
                    handed: Some(bound),
                    ..Extra::default()
                },
            ),
            Err(why) => ((Err("handoff_failed"), why), Extra::default()),
        },
        Some(Link::Ask(to)) => {
            let (reply, usage) = super::child::ask((ctx, call.run_turn), (call.step_id, call.span), to, &args, call.spent).await;
            (reply, Extra { handed: None, usage })
        }
        None => (call_tool(ctx, (call.name, call.span), args, mcp).await, Extra::default()),
    }
}

/// Binds agent `to` for the rest of the turn and tells the client (`agent.handoff`); `Err` is
/// the text the model sees when it cannot (not served, its build failed to make an agent).
async fn hand_over(
    ctx: &RunContext<'_>,
    call: &Call<'_>,
    to: &str,
    args: &Value,
) -> Result<Bound, String> {
    let slot = team::served(ctx.agents, to)?;
    let bound = Bound::to(slot, ctx.config)
        .await
        .map_err(|e| format!("Error: could not hand over to `{to}`: {e}"))?;
    let reason = args
        .get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
        .map(str::to_owned);
    tracing::info!(session_id = ctx.session_id, from = %ctx.manifest.name, to, step_id = call.step_id, "handoff");
    trace(
        ctx,
        json!({"kind": "handoff", "session_id": ctx.session_id, "step": call.step,
        "from": ctx.manifest.name, "to": to, "reason": reason}),
    );
    ctx.emit(AgentEvent::Handoff {
        step: call.step,
        step_id: call.step_id.to_owned(),
        from: ctx.manifest.name.clone(),
        to: to.to_owned(),
        reason,
    });
    Ok(bound)
}

/// A call the client runs: its result, when the client sends it within the approval timeout.
async fn client_result(ctx: &RunContext<'_>, step_id: &str, name: &str) -> Reply {
    let timeout = ctx.config.approval_timeout;
    match ctx.approvals.client.result_of(step_id, timeout).await {
        Some(result) => (Ok(()), result),
        None => (
            Err("timeout"),
            format!(
                "Error: the client did not return a result for `{name}` within {} s.",
                timeout.as_secs()
            ),
        ),
    }
}

/// Asks the client to approve a call and waits (up to the approval timeout; a cancelled run
/// drops the wait). `Err` is the text the model sees when the call may not run.
async fn approve(
    ctx: &RunContext<'_>,
    step: u32,
    step_id: &str,
    (name, server): (&str, Option<&str>),
    args: &Value,
) -> Result<(), String> {
    if !ctx.approvals.has_approver() {
        tracing::info!(
            session_id = ctx.session_id,
            tool = name,
            step_id,
            "tool approval needed, but the client cannot give it"
        );
        return Err(format!("Error: this call to `{name}` needs a person's approval, and the client connected to this session cannot give one (it did not declare the `tool_approval` capability); it was not run."));
    }
    let ask = ctx.approvals.ask(PendingApproval {
        step_id: step_id.to_owned(),
        tool: name.to_owned(),
        args: args.clone(),
        step,
    });
    ctx.emit(AgentEvent::ApprovalRequired {
        step,
        step_id: step_id.to_owned(),
        tool: name.to_owned(),
        server: server.map(str::to_owned),
        args: args.clone(),
    });
    let timeout = ctx.config.approval_timeout;
    let decision = ask.wait(timeout).await;
    let verdict = match &decision {
        Some(d) if d.approved => "approved",
        Some(_) => "denied",
        None => "timed_out",
    };
    tracing::info!(
        session_id = ctx.session_id,
        tool = name,
        step_id,
        verdict,
        "tool approval"
    );
    trace(
        ctx,
        json!({"kind": "tool_approval", "session_id": ctx.session_id, "step": step,
        "step_id": step_id, "tool": name, "verdict": verdict,
        "reason": decision.as_ref().and_then(|d| d.reason.clone())}),
    );
    match decision {
        Some(Decision { approved: true, .. }) => Ok(()),
        Some(Decision { reason, .. }) => Err(match reason.filter(|r| !r.trim().is_empty()) {
            Some(why) => {
                format!("Error: the user denied this call to `{name}` ({why}); it was not run.")
            }
            None => format!("Error: the user denied this call to `{name}`; it was not run."),
        }),
        None => Err(format!(
            "Error: this call to `{name}` was not approved within {} s, so it was not run.",
            timeout.as_secs()
        )),
    }
}

/// Model arguments must be a JSON object; an empty string counts as `{}`.
fn parse_arguments(raw: &str) -> Result<Value, String> {
    if raw.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(format!("expected an object, got {}", type_name(&other))),
        Err(e) => Err(e.to_string()),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The MCP server's tool `name` stands for, if it is one (a plugin tool of that name wins).
fn mcp_tool(ctx: &RunContext<'_>, name: &str) -> Option<Exposed> {
    if name == TERMINATE_TOOL || ctx.manifest.tools.iter().any(|t| t.name == name) {
        return None;
    }
    ctx.mcp.find(ctx.manifest, name)
}

/// Runs one tool (the built-in `terminate`, the plugin's through its instance, or `mcp`, the
/// MCP server's it stands for), passing `span`'s trace context on.
async fn call_tool(
    ctx: &RunContext<'_>,
    (name, span): (&str, &Span),
    args: Value,
    mcp: Option<&Exposed>,
) -> Reply {
    if name == TERMINATE_TOOL {
        let text = |k: &str, default: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let (message, status) = (text("message", ""), text("status", "success"));
        return match message.is_empty() {
            true => (Ok(()), format!("The run ended with status {status}.")),
            false => (Ok(()), message),
        };
    }
    if !ctx.manifest.tools.iter().any(|t| t.name == name) {
        if let Some(mcp) = mcp {
            let traceparent = span.traceparent();
            return match mcp
                .server
                .call(
                    &mcp.tool.name,
                    args,
                    ctx.config.tool_timeout,
                    traceparent.as_deref(),
                )
                .await
            {
                Ok((true, text)) => (Ok(()), text),
                Ok((false, text)) => (Err("tool_error"), format!("Error: {text}")),
                Err(why) => (Err("mcp_error"), format!("Error: {why}")),
            };
        }
        let offered = ctx.mcp.offered(ctx.manifest);
        let known: Vec<&str> = ctx
            .manifest
            .tools
            .iter()
            .map(|t| t.name.as_str())
            .chain(offered.iter().map(|e| e.name.as_str()))
            .chain([TERMINATE_TOOL])
            .collect();
        return (
            Err("unknown_tool"),
            format!(
                "Error: there is no tool named `{name}`. Available tools: {}.",
                known.join(", ")
            ),
        );
    }
    let timeout = ctx.config.tool_timeout_for(ctx.manifest);
    match ctx
        .instance
        .call_tool(name, args, (timeout, span.traceparent()), ctx.metrics)
        .await
    {
        Err(e) => match e.kind {
            HostErrorKind::TimedOut(_) => {
                ctx.metrics.tool_timeouts.inc();
                let ms = timeout.as_millis();
                (
                    Err("timeout"),
                    format!("Error: tool `{name}` timed out after {ms} ms."),
                )
            }
            HostErrorKind::Crashed(why) => (
                Err("crashed"),
                format!("Error: tool `{name}` crashed: {why}"),
            ),
            HostErrorKind::WorkerDied(why) => (Err("worker_died"), format!("Error: {why}")),
            HostErrorKind::Busy(why) => (Err("busy"), format!("Error: {why}")),
        },
        Ok(result) => {
            if let Some(system) = &result.system {
                tracing::info!(tool = name, system = %system, "tool system note");
            }
            match (result.error, result.output) {
                (Some(err), _) => (Err("tool_error"), format!("Error: {err}")),
                (None, Some(out)) => (Ok(()), out),
                (None, None) => (Ok(()), String::new()),
            }
        }
    }
}

fn truncate_output(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(
        "\n[output truncated: {total} characters, showing the first {cut}]"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_objects() {
        assert!(parse_arguments("{\"a\":1}").is_ok());
        assert_eq!(parse_arguments("").unwrap(), json!({}));
        assert!(parse_arguments("{'city': 'Paris'}").is_err());
        assert!(parse_arguments("[1]").unwrap_err().contains("an array"));
    }

    #[test]
    fn truncation_marks_the_cut() {
        let t = truncate_output("é".repeat(100), 51);
        assert!(t.starts_with(&"é".repeat(25)));
        assert!(t.contains("output truncated: 200 characters"));
        assert_eq!(truncate_output("short".into(), 10), "short");
    }
}
