//! One run of the ReAct loop: [`run_agent`] alternates [`think`] (one model call) and [`act`]
//! (the tool calls it asked for) until an answer, `terminate` or `max_steps`.

use std::time::Instant;

use serde_json::{json, Value};

use super::stream::StepStream;
use super::{
    AgentEvent, Decision, FinishReason, Memory, PendingApproval, RunContext, RunOutcome,
    INTERRUPTED_NOTE,
};
use crate::llm::{ChatMessage, ChatRequest, ChatResponse, Content, ToolCall, ToolSpec};
use crate::plugin::HostErrorKind;
use myagent_plugin_api::TERMINATE_TOOL;

const STUCK_NUDGE: &str = "Observed duplicate responses. Consider new strategies and avoid \
repeating ineffective paths already attempted.";

fn terminate_spec() -> ToolSpec {
    ToolSpec {
        name: TERMINATE_TOOL.into(),
        description: "End the run when the request is complete or cannot be completed. \
                      Put the final answer for the user in `message`."
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["success", "failure"]},
                "message": {"type": "string", "description": "The final answer for the user"}
            },
            "required": ["status"]
        }),
    }
}

/// A run's fixed inputs to every model call (the agent's, or the session's own settings).
struct Plan {
    model: String,
    tools: Vec<ToolSpec>,
    temperature: Option<f32>,
    max_steps: u32,
    system_prompt: String,
}

/// What one think step decided.
enum Thought {
    /// The model answered without tools.
    Answer(String),
    /// The model asked for these tool calls (its text alongside).
    Act(ChatResponse),
    /// The run cannot go on.
    Stop(RunOutcome),
}

/// Runs the agent on `input`, extending `memory`. Streams what happens through `ctx.sink`;
/// the returned outcome says how the run ended (the caller tells the client).
pub async fn run_agent(ctx: &RunContext<'_>, memory: &mut Memory, input: &Content) -> RunOutcome {
    let started = Instant::now();
    ctx.metrics.runs_started.inc();
    let turn_start = memory.len();
    memory.push(ChatMessage::user(input.clone()));
    memory.trim();
    trace(
        ctx,
        json!({"kind": "run_start", "session_id": ctx.session_id, "input": input,
        "agent": ctx.manifest.name, "version": ctx.manifest.version}),
    );

    let mut tools = ctx.manifest.tools.clone();
    tools.extend(ctx.mcp.specs(&ctx.manifest.tools));
    tools.push(terminate_spec());
    let settings = ctx.settings;
    let plan = Plan {
        model: settings
            .model
            .clone()
            .or_else(|| ctx.manifest.model.clone())
            .unwrap_or_else(|| ctx.config.default_model.clone()),
        tools,
        temperature: settings.temperature.or(ctx.manifest.temperature),
        max_steps: settings.max_steps.unwrap_or(ctx.manifest.max_steps),
        system_prompt: match &settings.instructions {
            Some(extra) if ctx.manifest.system_prompt.is_empty() => extra.clone(),
            Some(extra) => format!("{}\n\n{extra}", ctx.manifest.system_prompt),
            None => ctx.manifest.system_prompt.clone(),
        },
    };
    let mut previous: Vec<String> = Vec::new();
    let mut nudge = false;
    let outcome = 'run: {
        for step in 1..=plan.max_steps {
            let step_mark = memory.len();
            let resp = match think(ctx, &plan, memory, step, std::mem::take(&mut nudge)).await {
                Thought::Answer(answer) => {
                    break 'run RunOutcome::Finished {
                        answer,
                        reason: FinishReason::Answer,
                        steps: step,
                    };
                }
                Thought::Stop(outcome) => break 'run outcome,
                Thought::Act(resp) => resp,
            };
            // Stuck: the same reasoning and calls as an earlier step.
            let signature = format!(
                "{}|{:?}",
                resp.content,
                resp.tool_calls
                    .iter()
                    .map(|c| (&c.function.name, &c.function.arguments))
                    .collect::<Vec<_>>()
            );
            if previous.contains(&signature) {
                tracing::info!(step, "duplicate response; nudging the model");
                nudge = true;
            }
            previous.push(signature);

            let results = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => {
                    // Keep memory consistent: drop the unanswered assistant message.
                    memory.truncate(step_mark);
                    break 'run RunOutcome::Cancelled;
                }
                r = act(ctx, step, &resp.tool_calls) => r,
            };
            if let Some(outcome) = record_results(memory, &resp, results, step) {
                break 'run outcome;
            }
        }
        let max = plan.max_steps;
        RunOutcome::Finished {
            answer: format!("I stopped after reaching the step limit (max_steps = {max}) without a final answer."),
            reason: FinishReason::MaxSteps,
            steps: max,
        }
    };
    // An answer from `terminate` or the step limit was never streamed (the step before it
    // called tools, so its text went out as reasoning): it goes out as one piece.
    if let RunOutcome::Finished {
        answer,
        reason,
        steps,
    } = &outcome
    {
        if *reason != FinishReason::Answer && !answer.is_empty() {
            ctx.sink.emit(AgentEvent::Answer {
                step: *steps,
                text: answer.clone(),
            });
        }
    }
    close_turn(ctx, memory, turn_start, &outcome);
    trace(
        ctx,
        json!({"kind": "run_end", "session_id": ctx.session_id,
        "duration_ms": started.elapsed().as_millis() as u64,
        "outcome": match &outcome { RunOutcome::Finished { reason, .. } => reason.as_str(), RunOutcome::Failed { .. } => "error", RunOutcome::Cancelled => "cancelled" }}),
    );
    outcome
}

fn trace(ctx: &RunContext<'_>, record: Value) {
    if ctx.manifest.enable_tracing {
        if let Some(t) = ctx.tracer {
            t.write(record);
        }
    }
}

/// One model call with the conversation so far; its text streams out as it comes.
async fn think(
    ctx: &RunContext<'_>,
    plan: &Plan,
    memory: &mut Memory,
    step: u32,
    nudge: bool,
) -> Thought {
    ctx.sink.emit(AgentEvent::Thinking {
        step,
        content: format!("Step {step}: thinking"),
    });
    let mut messages = Vec::with_capacity(memory.len() + 2);
    if !plan.system_prompt.is_empty() {
        messages.push(ChatMessage::system(plan.system_prompt.clone()));
    }
    messages.extend_from_slice(memory.messages());
    let mut prompt = ctx.manifest.next_step_prompt.clone();
    if nudge {
        prompt = format!("{STUCK_NUDGE}\n{prompt}");
    }
    if !prompt.trim().is_empty() {
        messages.push(ChatMessage::user(prompt));
    }
    let req = ChatRequest {
        model: plan.model.clone(),
        messages,
        tools: plan.tools.clone(),
        temperature: plan.temperature,
    };
    let t0 = Instant::now();
    let mut stream = StepStream::new(ctx.sink, step, ctx.config.answer_holdback_chars);
    let mut on_delta = |d: crate::llm::Delta<'_>| stream.on(d);
    let resp = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => return Thought::Stop(RunOutcome::Cancelled),
        r = ctx.model.chat(&req, &mut on_delta) => r,
    };
    let latency = t0.elapsed();
    ctx.metrics.llm_calls.inc();
    ctx.metrics.llm_latency.observe(latency.as_secs_f64());
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            ctx.metrics.llm_errors.inc();
            tracing::warn!(session_id = ctx.session_id, step, error = %e, "model call failed");
            trace(
                ctx,
                json!({"kind": "model_call", "session_id": ctx.session_id, "step": step,
                "model": plan.model, "latency_ms": latency.as_millis() as u64, "error": e.to_string()}),
            );
            return Thought::Stop(RunOutcome::Failed {
                message: format!("The model call failed: {}", e.public()),
            });
        }
    };
    if let Some(u) = resp.usage {
        ctx.metrics.llm_prompt_tokens.add(u.prompt_tokens);
        ctx.metrics.llm_completion_tokens.add(u.completion_tokens);
    }
    trace(
        ctx,
        json!({"kind": "model_call", "session_id": ctx.session_id, "step": step, "model": plan.model,
        "latency_ms": latency.as_millis() as u64,
        "prompt_tokens": resp.usage.map(|u| u.prompt_tokens), "completion_tokens": resp.usage.map(|u| u.completion_tokens),
        "tool_calls": resp.tool_calls.iter().map(|c| c.function.name.clone()).collect::<Vec<_>>()}),
    );
    stream.finish(&resp.content, !resp.tool_calls.is_empty());
    let text = (!resp.content.is_empty()).then(|| resp.content.clone());
    memory.push(ChatMessage::assistant(text, resp.tool_calls.clone()));
    if resp.tool_calls.is_empty() {
        Thought::Answer(resp.content)
    } else {
        Thought::Act(resp)
    }
}

/// Records each call's reply in memory, in call order; a `terminate` call ends the run.
fn record_results(
    memory: &mut Memory,
    resp: &ChatResponse,
    results: Vec<String>,
    step: u32,
) -> Option<RunOutcome> {
    let mut terminated = None;
    for (call, result) in resp.tool_calls.iter().zip(results) {
        if call.function.name == TERMINATE_TOOL {
            terminated = Some(result.clone());
        }
        memory.push(ChatMessage::tool(&call.id, result));
    }
    let message = terminated?;
    let answer = if resp.content.trim().is_empty() {
        message
    } else {
        resp.content.clone()
    };
    Some(RunOutcome::Finished {
        answer,
        reason: FinishReason::Terminated,
        steps: step,
    })
}

/// Leaves memory well formed for the next turn, whatever the outcome.
fn close_turn(ctx: &RunContext<'_>, memory: &mut Memory, turn_start: usize, outcome: &RunOutcome) {
    match outcome {
        RunOutcome::Finished { .. } => ctx.metrics.runs_finished.inc(),
        RunOutcome::Failed { .. } => {
            ctx.metrics.runs_failed.inc();
            // The turn could not be completed: drop its half-done messages so the next run
            // starts from a clean conversation.
            memory.truncate(turn_start);
        }
        RunOutcome::Cancelled => {
            ctx.metrics.runs_cancelled.inc();
            // Close the turn so the conversation stays well formed and the model knows.
            memory.push(ChatMessage::assistant(
                Some(INTERRUPTED_NOTE.into()),
                Vec::new(),
            ));
        }
    }
    debug_assert!(memory.pairs_intact());
}

/// Runs one step's tool calls concurrently; returns the text each reply carries, in call order.
async fn act(ctx: &RunContext<'_>, step: u32, calls: &[ToolCall]) -> Vec<String> {
    let futures = calls.iter().enumerate().map(|(i, call)| async move {
        let step_id = format!("step{step}-{i}-{}", call.id);
        let name = call.function.name.as_str();
        let parsed = parse_arguments(&call.function.arguments);
        let shown_args = parsed.clone().unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
        ctx.sink.emit(AgentEvent::ToolCall { step, step_id: step_id.clone(), tool: name.to_owned(), args: shown_args.clone() });
        let t0 = Instant::now();
        let (success, text) = match parsed {
            Err(why) => (false, format!("Error: the arguments for `{name}` are not a valid JSON object ({why}). Call it again with a JSON object.")),
            Ok(args) if ctx.config.needs_approval(ctx.manifest, name) => {
                match approve(ctx, step, &step_id, name, &args).await {
                    Ok(()) => call_tool(ctx, name, args).await,
                    Err(refusal) => (false, refusal),
                }
            }
            Ok(args) => call_tool(ctx, name, args).await,
        };
        ctx.metrics.tool_calls.inc();
        if !success {
            ctx.metrics.tool_failures.inc();
        }
        let text = truncate_output(text, ctx.config.max_tool_output_chars);
        trace(ctx, json!({"kind": "tool_call", "session_id": ctx.session_id, "step": step, "tool": name, "args": shown_args,
            "duration_ms": t0.elapsed().as_millis() as u64, "success": success}));
        ctx.sink.emit(AgentEvent::ToolResult { step, step_id, tool: name.to_owned(), content: text.clone(), success });
        text
    });
    futures_util::future::join_all(futures).await
}

/// Asks the client to approve a call and waits (up to the approval timeout; a cancelled run
/// drops the wait). `Err` is the text the model sees when the call may not run.
async fn approve(
    ctx: &RunContext<'_>,
    step: u32,
    step_id: &str,
    name: &str,
    args: &Value,
) -> Result<(), String> {
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

/// Runs one tool (the built-in `terminate`, the plugin's through its instance, or an MCP
/// server's). Returns (success, text for the model).
async fn call_tool(ctx: &RunContext<'_>, name: &str, args: Value) -> (bool, String) {
    if name == TERMINATE_TOOL {
        let text = |k: &str, default: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let (message, status) = (text("message", ""), text("status", "success"));
        return match message.is_empty() {
            true => (true, format!("The run ended with status {status}.")),
            false => (true, message),
        };
    }
    if !ctx.manifest.tools.iter().any(|t| t.name == name) {
        if let Some(mcp) = ctx.mcp.find(&ctx.manifest.tools, name) {
            return match mcp
                .server
                .call(&mcp.tool.name, args, ctx.config.tool_timeout)
                .await
            {
                Ok((true, text)) => (true, text),
                Ok((false, text)) => (false, format!("Error: {text}")),
                Err(why) => (false, format!("Error: {why}")),
            };
        }
        let offered = ctx.mcp.exposed(&ctx.manifest.tools);
        let known: Vec<&str> = ctx
            .manifest
            .tools
            .iter()
            .map(|t| t.name.as_str())
            .chain(offered.iter().map(|e| e.name.as_str()))
            .chain([TERMINATE_TOOL])
            .collect();
        return (
            false,
            format!(
                "Error: there is no tool named `{name}`. Available tools: {}.",
                known.join(", ")
            ),
        );
    }
    let timeout = ctx.config.tool_timeout_for(ctx.manifest);
    match ctx
        .instance
        .call_tool(name, args, timeout, ctx.metrics)
        .await
    {
        Err(e) => match e.kind {
            HostErrorKind::TimedOut(_) => {
                ctx.metrics.tool_timeouts.inc();
                let ms = timeout.as_millis();
                (
                    false,
                    format!("Error: tool `{name}` timed out after {ms} ms."),
                )
            }
            HostErrorKind::Crashed(why) => (false, format!("Error: tool `{name}` crashed: {why}")),
        },
        Ok(result) => {
            if let Some(system) = &result.system {
                tracing::info!(tool = name, system = %system, "tool system note");
            }
            match (result.error, result.output) {
                (Some(err), _) => (false, format!("Error: {err}")),
                (None, Some(out)) => (true, out),
                (None, None) => (true, String::new()),
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
