//! Acting: one step's tool calls, run concurrently — approval where a tool needs it, the
//! built-in `terminate`, the plugin's tools through its instance, MCP servers' tools — each
//! reply truncated for the model and reported as events.

use std::time::Instant;

use serde_json::{json, Value};

use super::trace::trace;
use super::{AgentEvent, Decision, PendingApproval, RunContext};
use crate::llm::ToolCall;
use crate::mcp::{Exposed, McpHub};
use crate::otel::{Span, ToolKind};
use crate::plugin::HostErrorKind;
use myagent_plugin_api::TERMINATE_TOOL;

/// What a tool call came to: the text the model sees, and on failure what kind of failure
/// (a trace's `error.type`).
type Reply = (Result<(), &'static str>, String);

/// Runs one step's tool calls concurrently, each under its own span (a child of `run`);
/// returns the text each reply carries, in call order.
pub(super) async fn act(
    ctx: &RunContext<'_>,
    run: &Span,
    step: u32,
    calls: &[ToolCall],
) -> Vec<String> {
    let futures = calls.iter().enumerate().map(|(i, call)| async move {
        let step_id = format!("step{step}-{i}-{}", call.id);
        let name = call.function.name.as_str();
        let parsed = parse_arguments(&call.function.arguments);
        let shown_args = parsed.clone().unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
        // An MCP server's tool is known by its identity (server, own name), not only by the
        // name it is offered under: approval follows it however it is named.
        let mcp = mcp_tool(ctx, name);
        let client = mcp.is_none() && !ctx.manifest.tools.iter().any(|t| t.name == name) && ctx.approvals.client.runs(name);
        ctx.sink.emit(AgentEvent::ToolCall { step, step_id: step_id.clone(), tool: name.to_owned(), args: shown_args.clone(), client });
        let kind = if mcp.is_some() { ToolKind::Extension } else { ToolKind::Function };
        let span = ctx.telemetry.tool_span(run, name, &call.id, kind);
        span.content("gen_ai.tool.call.arguments", || call.function.arguments.clone());
        let t0 = Instant::now();
        let needs_approval = ctx.config.needs_approval(ctx.manifest, name)
            || mcp.as_ref().is_some_and(|e| McpHub::named_in(e, &ctx.config.require_approval));
        let server = mcp.as_ref().map(|e| e.server.name.as_str());
        let (outcome, text) = match parsed {
            Err(why) => (Err("invalid_arguments"), format!("Error: the arguments for `{name}` are not a valid JSON object ({why}). Call it again with a JSON object.")),
            Ok(_) if client => client_result(ctx, &step_id, name).await,
            Ok(args) if needs_approval => match approve(ctx, step, &step_id, (name, server), &args).await {
                Ok(()) => call_tool(ctx, (name, &span), args, mcp.as_ref()).await,
                Err(refusal) => (Err("not_approved"), refusal),
            },
            Ok(args) => call_tool(ctx, (name, &span), args, mcp.as_ref()).await,
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
        ctx.sink.emit(AgentEvent::ToolResult { step, step_id, tool: name.to_owned(), content: text.clone(), success });
        text
    });
    futures_util::future::join_all(futures).await
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
    ctx.sink.emit(AgentEvent::ApprovalRequired {
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
