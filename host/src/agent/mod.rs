//! The agent runtime: MyAgent's ReAct / tool-calling loop, run by the host for a plugin's agent.
//!
//! Each step *thinks* (asks the model, with the plugin's tools and the built-in `terminate`) and
//! then *acts* (runs the requested tool calls concurrently, feeding each result back as a `tool`
//! message in call order). A run ends when the model answers without tools, calls `terminate`,
//! or reaches `max_steps`. Everything that happens is reported through an [`EventSink`] as it
//! happens. Tool failures of every kind become text the model sees; the run goes on.
//!
//! **Architecture Invariant:** when [`run_agent`] returns — finished, failed or cancelled — the
//! memory holds only complete turns: every assistant `tool_calls` message has all its replies.

pub mod memory;
pub mod trace;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::llm::{ChatMessage, ChatRequest, LlmError, Model, ToolCall, ToolDef};
use crate::metrics::Metrics;
use crate::plugin::{CallError, Instance, Manifest};
pub use memory::Memory;
pub use trace::TraceWriter;

/// The built-in tool that ends a run.
pub const TERMINATE_TOOL: &str = "terminate";

const STUCK_NUDGE: &str = "Observed duplicate responses. Consider new strategies and avoid \
repeating ineffective paths already attempted.";

/// What the memory records for a run the user cancelled.
pub const INTERRUPTED_NOTE: &str = "(The user interrupted this response.)";

/// MyAgent's `AgentState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Idle,
    Running,
    Finished,
    Error,
}

/// What a run reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// A step starts: the agent is reasoning.
    Thinking { step: u32, content: String },
    /// A piece of the model's text (reasoning before tool calls, or the answer).
    Delta { step: u32, text: String },
    /// A tool call starts. `step_id` ties it to its result.
    ToolCall {
        step: u32,
        step_id: String,
        tool: String,
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
    /// The run's answer.
    FinalAnswer {
        step: u32,
        content: String,
        reason: FinishReason,
    },
    /// The run failed.
    Error { step: u32, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model answered without tools.
    Answer,
    /// The `terminate` tool was called.
    Terminated,
    /// `max_steps` was reached.
    MaxSteps,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Answer => "answer",
            FinishReason::Terminated => "terminate",
            FinishReason::MaxSteps => "max_steps",
        }
    }
}

/// Receives a run's events. Implementations must not block (the session layer queues).
pub trait EventSink: Send + Sync {
    fn emit(&self, event: AgentEvent);
}

/// Host-side settings for runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The model when the plugin names none.
    pub default_model: String,
    /// Per tool call, unless the plugin sets its own.
    pub tool_timeout: Duration,
    /// Longer tool outputs are cut to this many characters before the model sees them.
    pub max_tool_output_chars: usize,
    /// Conversation budget in characters (see [`Memory`]).
    pub memory_budget_chars: usize,
}

/// Everything a run needs besides the session's memory.
pub struct RunContext<'a> {
    pub model: &'a Model,
    pub manifest: &'a Manifest,
    pub instance: &'a Instance,
    pub config: &'a AgentConfig,
    pub sink: &'a dyn EventSink,
    pub cancel: &'a CancellationToken,
    pub tracer: Option<&'a TraceWriter>,
    pub metrics: &'a Arc<Metrics>,
    pub session_id: &'a str,
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

impl RunOutcome {
    pub fn state(&self) -> AgentState {
        match self {
            RunOutcome::Finished { .. } => AgentState::Finished,
            RunOutcome::Failed { .. } => AgentState::Error,
            RunOutcome::Cancelled => AgentState::Idle,
        }
    }
}

fn terminate_def() -> ToolDef {
    ToolDef {
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

/// Runs the agent on `input`, extending `memory`. Emits events through `ctx.sink`, except the
/// cancellation notice, which belongs to the caller (it knows why it cancelled).
pub async fn run_agent(ctx: &RunContext<'_>, memory: &mut Memory, input: &str) -> RunOutcome {
    let started = Instant::now();
    ctx.metrics.runs_started.inc();
    let turn_start = memory.len();
    memory.push(ChatMessage::user(input));
    memory.trim();
    let trace_on = ctx.manifest.enable_tracing;
    let trace = |v: Value| {
        if trace_on {
            if let Some(t) = ctx.tracer {
                t.write(v);
            }
        }
    };
    trace(
        json!({"kind": "run_start", "session_id": ctx.session_id, "input": input, "agent": ctx.manifest.name, "version": ctx.manifest.version}),
    );

    let mut tools: Vec<ToolDef> = ctx
        .manifest
        .tools
        .iter()
        .map(|t| ToolDef {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
        .collect();
    tools.push(terminate_def());
    let model_name = ctx
        .manifest
        .model
        .clone()
        .unwrap_or_else(|| ctx.config.default_model.clone());
    let mut previous_answers: Vec<String> = Vec::new();
    let mut nudge = false;

    let outcome = 'run: {
        for step in 1..=ctx.manifest.max_steps {
            ctx.sink.emit(AgentEvent::Thinking {
                step,
                content: format!("Step {step}: thinking"),
            });
            let step_mark = memory.len();
            let mut messages = Vec::with_capacity(memory.len() + 2);
            if !ctx.manifest.system_prompt.is_empty() {
                messages.push(ChatMessage::system(ctx.manifest.system_prompt.clone()));
            }
            messages.extend_from_slice(memory.messages());
            let mut prompt = ctx.manifest.next_step_prompt.clone();
            if nudge {
                prompt = format!("{STUCK_NUDGE}\n{prompt}");
                nudge = false;
            }
            if !prompt.trim().is_empty() {
                messages.push(ChatMessage::user(prompt));
            }
            let req = ChatRequest {
                model: model_name.clone(),
                messages,
                tools: tools.clone(),
                temperature: ctx.manifest.temperature,
            };

            // Think.
            let t0 = Instant::now();
            let mut on_delta = |text: &str| {
                ctx.sink.emit(AgentEvent::Delta {
                    step,
                    text: text.to_owned(),
                })
            };
            let resp = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => break 'run RunOutcome::Cancelled,
                r = ctx.model.chat(&req, &mut on_delta) => r,
            };
            let latency = t0.elapsed();
            ctx.metrics.llm_calls.inc();
            ctx.metrics.llm_latency.observe(latency.as_secs_f64());
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    ctx.metrics.llm_errors.inc();
                    trace(
                        json!({"kind": "model_call", "session_id": ctx.session_id, "step": step, "model": model_name, "latency_ms": latency.as_millis() as u64, "error": e.to_string()}),
                    );
                    break 'run RunOutcome::Failed {
                        message: model_error_message(&e),
                    };
                }
            };
            if let Some(u) = resp.usage {
                ctx.metrics.llm_prompt_tokens.add(u.prompt_tokens);
                ctx.metrics.llm_completion_tokens.add(u.completion_tokens);
            }
            trace(
                json!({"kind": "model_call", "session_id": ctx.session_id, "step": step, "model": model_name,
                "latency_ms": latency.as_millis() as u64,
                "prompt_tokens": resp.usage.map(|u| u.prompt_tokens), "completion_tokens": resp.usage.map(|u| u.completion_tokens),
                "tool_calls": resp.tool_calls.iter().map(|c| c.function.name.clone()).collect::<Vec<_>>()}),
            );

            let text = (!resp.content.is_empty()).then(|| resp.content.clone());
            memory.push(ChatMessage::assistant(text, resp.tool_calls.clone()));
            if resp.tool_calls.is_empty() {
                break 'run RunOutcome::Finished {
                    answer: resp.content,
                    reason: FinishReason::Answer,
                    steps: step,
                };
            }

            // Stuck: the same reasoning and calls as an earlier step.
            let signature = format!(
                "{}|{:?}",
                resp.content,
                resp.tool_calls
                    .iter()
                    .map(|c| (&c.function.name, &c.function.arguments))
                    .collect::<Vec<_>>()
            );
            if previous_answers.iter().filter(|p| **p == signature).count() >= 1 {
                tracing::info!(step, "duplicate response; nudging the model");
                nudge = true;
            }
            previous_answers.push(signature);

            // Act.
            let results = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => {
                    // Keep memory consistent: drop the unanswered assistant message.
                    memory.truncate(step_mark);
                    break 'run RunOutcome::Cancelled;
                }
                r = run_tools(ctx, step, &resp.tool_calls, &trace) => r,
            };
            let mut terminated = None;
            for (call, result) in resp.tool_calls.iter().zip(results) {
                if call.function.name == TERMINATE_TOOL {
                    terminated = Some(result.clone());
                }
                memory.push(ChatMessage::tool(&call.id, result));
            }
            if let Some(message) = terminated {
                let answer = if resp.content.trim().is_empty() {
                    message
                } else {
                    resp.content.clone()
                };
                break 'run RunOutcome::Finished {
                    answer,
                    reason: FinishReason::Terminated,
                    steps: step,
                };
            }
        }
        let max = ctx.manifest.max_steps;
        RunOutcome::Finished {
            answer: format!("I stopped after reaching the step limit (max_steps = {max}) without a final answer."),
            reason: FinishReason::MaxSteps,
            steps: max,
        }
    };

    match &outcome {
        RunOutcome::Finished {
            answer,
            reason,
            steps,
        } => {
            ctx.metrics.runs_finished.inc();
            ctx.sink.emit(AgentEvent::FinalAnswer {
                step: *steps,
                content: answer.clone(),
                reason: *reason,
            });
        }
        RunOutcome::Failed { message } => {
            ctx.metrics.runs_failed.inc();
            // The turn could not be completed: drop its half-done messages so the next run
            // starts from a clean conversation.
            memory.truncate(turn_start);
            ctx.sink.emit(AgentEvent::Error {
                step: 0,
                message: message.clone(),
            });
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
    trace(
        json!({"kind": "run_end", "session_id": ctx.session_id, "duration_ms": started.elapsed().as_millis() as u64,
        "outcome": match &outcome { RunOutcome::Finished { reason, .. } => reason.as_str(), RunOutcome::Failed { .. } => "error", RunOutcome::Cancelled => "cancelled" }}),
    );
    outcome
}

fn model_error_message(e: &LlmError) -> String {
    format!("The model call failed: {e}")
}

/// Runs one step's tool calls concurrently; returns the text each reply carries, in call order.
async fn run_tools(
    ctx: &RunContext<'_>,
    step: u32,
    calls: &[ToolCall],
    trace: &(dyn Fn(Value) + Sync),
) -> Vec<String> {
    let futures = calls.iter().enumerate().map(|(i, call)| async move {
        let step_id = format!("step{step}-{i}-{}", call.id);
        let name = call.function.name.as_str();
        let parsed = parse_arguments(&call.function.arguments);
        let shown_args = parsed.clone().unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
        ctx.sink.emit(AgentEvent::ToolCall { step, step_id: step_id.clone(), tool: name.to_owned(), args: shown_args.clone() });
        let t0 = Instant::now();
        let (success, text) = match parsed {
            Err(why) => (false, format!("Error: the arguments for `{name}` are not a valid JSON object ({why}). Call it again with a JSON object.")),
            Ok(args) => call_tool(ctx, name, args).await,
        };
        ctx.metrics.tool_calls.inc();
        if !success {
            ctx.metrics.tool_failures.inc();
        }
        let text = truncate_output(text, ctx.config.max_tool_output_chars);
        trace(json!({"kind": "tool_call", "session_id": ctx.session_id, "step": step, "tool": name, "args": shown_args,
            "duration_ms": t0.elapsed().as_millis() as u64, "success": success}));
        ctx.sink.emit(AgentEvent::ToolResult { step, step_id, tool: name.to_owned(), content: text.clone(), success });
        text
    });
    futures_util::future::join_all(futures).await
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

/// Runs a plugin tool on the blocking pool with a timeout. Returns (success, text for the model).
async fn call_tool(ctx: &RunContext<'_>, name: &str, args: Value) -> (bool, String) {
    if name == TERMINATE_TOOL {
        let message = args
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let status = args
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("success")
            .to_owned();
        let text = if message.is_empty() {
            format!("The run ended with status {status}.")
        } else {
            message
        };
        return (true, text);
    }
    if !ctx.manifest.tools.iter().any(|t| t.name == name) {
        let known: Vec<&str> = ctx
            .manifest
            .tools
            .iter()
            .map(|t| t.name.as_str())
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
    let timeout = ctx
        .manifest
        .tool_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(ctx.config.tool_timeout);
    match ctx.instance.call_tool(name, args, timeout, ctx.metrics).await {
        Err(CallError::TimedOut(_)) => {
            ctx.metrics.tool_timeouts.inc();
            (
                false,
                format!(
                    "Error: tool `{name}` timed out after {} ms.",
                    timeout.as_millis()
                ),
            )
        }
        Err(CallError::Crashed(why)) => (false, format!("Error: tool `{name}` crashed: {why}")),
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
