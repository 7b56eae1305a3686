//! One run of the ReAct loop: [`run_agent`] alternates [`think`] (one model call) and `act`
//! (the tool calls it asked for, in `act.rs`) until an answer, `terminate` or `max_steps`.

use std::time::Instant;

use serde_json::json;

use super::act::act;
use super::child::Turned;
use super::spans::RunTrace;
use super::stream::StepStream;
use super::trace::trace;
use super::usage::CallUsage;
use super::{AgentEvent, Bound, FinishReason, Memory, RunContext, RunOutcome, INTERRUPTED_NOTE};
use crate::llm::{ChatMessage, ChatRequest, ChatResponse, Content, ToolSpec};
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

impl Plan {
    /// The session's settings over the agent's own, and every tool on offer.
    fn for_run(ctx: &RunContext<'_>) -> Plan {
        let (settings, m) = (ctx.settings, ctx.manifest);
        let mut tools = m.tools.clone();
        tools.extend(ctx.mcp.specs(m));
        tools.extend(super::team::specs(ctx));
        tools.push(terminate_spec());
        // The client's own tools, where their names are free.
        for t in ctx.approvals.client.offered() {
            if !tools.iter().any(|o| o.name == t.name) {
                tools.push(t);
            }
        }
        Plan {
            model: settings
                .model
                .clone()
                .or_else(|| m.model.clone())
                .unwrap_or_else(|| ctx.config.default_model.clone()),
            tools,
            temperature: settings.temperature.or(m.temperature),
            max_steps: settings.max_steps.unwrap_or(m.max_steps),
            system_prompt: match &settings.instructions {
                Some(extra) if m.system_prompt.is_empty() => extra.clone(),
                Some(extra) => format!("{}\n\n{extra}", m.system_prompt),
                None => m.system_prompt.clone(),
            },
        }
    }
}

/// Runs the agent on `input`, extending `memory`. Streams what happens through `ctx.sink`;
/// the returned outcome says how the run ended (the caller tells the client).
pub async fn run_agent(ctx: &RunContext<'_>, memory: &mut Memory, input: &Content) -> RunOutcome {
    run_turn(ctx, memory, input).await.0
}

/// A session's turn: [`run_agent`], and — when the model handed the conversation over
/// (`transfer_to_<agent>`) — the agent the turn ended on, which the session talks to from now
/// on. Each handoff goes on with the same memory and step count under the new agent's prompt,
/// tools, model and limits (the session's `agent_config` where that agent allows it).
pub async fn run_turn(
    ctx: &RunContext<'_>,
    memory: &mut Memory,
    input: &Content,
) -> (RunOutcome, Option<Bound>) {
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
    let (mut handed, mut first_step) = (None::<Bound>, 1);
    let outcome = loop {
        let settings = handed
            .as_ref()
            .map(|b| ctx.settings.for_agent(&b.plugin.manifest));
        let here = match (&handed, &settings) {
            (Some(b), Some(settings)) => RunContext {
                manifest: &b.plugin.manifest,
                instance: &b.instance,
                settings,
                ..*ctx
            },
            _ => *ctx,
        };
        // The build's worker is kept until its part of the turn ends.
        let _on_build = handed.as_ref().map(|b| b.plugin.begin_run());
        let plan = Plan::for_run(&here);
        let run = RunTrace::start(&here, &plan.model, &plan.system_prompt, input);
        match steps(&here, &plan, &run, memory, first_step).await {
            Steps::Ended(outcome) => {
                send_unstreamed_answer(&here, &outcome);
                run.end(&outcome);
                break outcome;
            }
            Steps::HandedOff(to, step) => {
                run.handed_off(&to.plugin.manifest.name);
                (handed, first_step) = (Some(to), step + 1);
            }
        }
    };
    close_turn(ctx, memory, turn_start, &outcome);
    trace(
        ctx,
        json!({"kind": "run_end", "session_id": ctx.session_id,
        "duration_ms": started.elapsed().as_millis() as u64,
        "outcome": match &outcome { RunOutcome::Finished { reason, .. } => reason.as_str(), RunOutcome::Failed { .. } => "error", RunOutcome::Cancelled => "cancelled" }}),
    );
    (outcome, handed)
}

/// [`run_turn`] as a child run starts it (see `child.rs`).
fn boxed_turn<'a>(
    ctx: &'a RunContext<'a>,
    memory: &'a mut Memory,
    input: &'a Content,
) -> Turned<'a> {
    Box::pin(run_turn(ctx, memory, input))
}

/// How a run's steps ended: the run is over, or it goes on under another agent from the
/// step after this one.
enum Steps {
    Ended(RunOutcome),
    HandedOff(Bound, u32),
}

/// Think, act, until an answer, `terminate`, a stop, a handoff or `max_steps` (counted over
/// the whole turn: a handoff goes on from `first`).
async fn steps(
    ctx: &RunContext<'_>,
    plan: &Plan,
    run: &RunTrace,
    memory: &mut Memory,
    first: u32,
) -> Steps {
    let mut previous: Vec<String> = Vec::new();
    let mut nudge = false;
    for step in first..=plan.max_steps {
        let step_mark = memory.len();
        let resp = match think(ctx, (plan, run), memory, step, std::mem::take(&mut nudge)).await {
            Thought::Answer(answer) => {
                return Steps::Ended(RunOutcome::Finished {
                    answer,
                    reason: FinishReason::Answer,
                    steps: step,
                });
            }
            Thought::Stop(outcome) => return Steps::Ended(outcome),
            Thought::Act(resp) => resp,
        };
        // Stuck: the same reasoning and calls as an earlier step.
        let signature = signature(&resp);
        if previous.contains(&signature) {
            tracing::info!(step, "duplicate response; nudging the model");
            nudge = true;
        }
        previous.push(signature);
        let acted = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                // Keep memory consistent: drop the unanswered assistant message.
                memory.truncate(step_mark);
                return Steps::Ended(RunOutcome::Cancelled);
            }
            r = act(ctx, &run.span, step, &resp.tool_calls, (memory.usage, boxed_turn)) => r,
        };
        memory.usage.add(&acted.usage);
        if let Some(outcome) = record_results(memory, &resp, acted.texts, step) {
            return Steps::Ended(outcome);
        }
        if let Some(to) = acted.handed {
            return Steps::HandedOff(to, step);
        }
    }
    let max = plan.max_steps;
    Steps::Ended(RunOutcome::Finished {
        answer: format!(
            "I stopped after reaching the step limit (max_steps = {max}) without a final answer."
        ),
        reason: FinishReason::MaxSteps,
        steps: max.max(first.saturating_sub(1)),
    })
}

/// What a step said and asked for, to recognise a repeated one.
fn signature(resp: &ChatResponse) -> String {
    let calls: Vec<_> = resp
        .tool_calls
        .iter()
        .map(|c| (&c.function.name, &c.function.arguments))
        .collect();
    format!("{}|{calls:?}", resp.content)
}

/// An answer from `terminate`, the step limit or the budget was never streamed (the step
/// before it called tools, so its text went out as reasoning): it goes out as one piece.
fn send_unstreamed_answer(ctx: &RunContext<'_>, outcome: &RunOutcome) {
    if let RunOutcome::Finished {
        answer,
        reason,
        steps,
    } = outcome
    {
        if *reason != FinishReason::Answer && !answer.is_empty() {
            ctx.emit(AgentEvent::Answer {
                step: *steps,
                text: answer.clone(),
            });
        }
    }
}

/// One model call with the conversation so far; its text streams out as it comes.
async fn think(
    ctx: &RunContext<'_>,
    (plan, run): (&Plan, &RunTrace),
    memory: &mut Memory,
    step: u32,
    nudge: bool,
) -> Thought {
    ctx.emit(AgentEvent::Thinking {
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
    let mut req = ChatRequest {
        model: plan.model.clone(),
        messages,
        tools: plan.tools.clone(),
        temperature: plan.temperature,
        traceparent: None,
    };
    if let Some(stop) = budget_spent(ctx, memory, step) {
        return stop;
    }
    let t0 = Instant::now();
    let mut stream = StepStream::new(ctx, step, ctx.config.answer_holdback_chars);
    let mut resp = call_model(ctx, run, &mut req, &mut stream).await;
    if let Some(Err(e)) = &resp {
        if e.is_malformed_tool_call() {
            // The provider refused the tool call the model produced (Groq `tool_use_failed`):
            // once more, with the error shown to the model, as other agent frameworks do.
            tracing::info!(session_id = ctx.session_id, step, error = %e, "malformed tool call; retrying once");
            ctx.metrics.llm_errors.inc();
            stream.abandon();
            stream = StepStream::new(ctx, step, ctx.config.answer_holdback_chars);
            let mut retry = req.clone();
            retry.messages.push(ChatMessage::user(format!(
                "Your last tool call was rejected: {}. Call the tool again with arguments that \
                 match its schema, or answer without it.",
                crate::llm::shown(&e.to_string(), 300)
            )));
            resp = call_model(ctx, run, &mut retry, &mut stream).await;
        }
    }
    let Some(resp) = resp else {
        return Thought::Stop(RunOutcome::Cancelled);
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
    account(ctx, &plan.model, &req, &resp, memory);
    trace(
        ctx,
        json!({"kind": "model_call", "session_id": ctx.session_id, "step": step, "model": plan.model,
        "latency_ms": latency.as_millis() as u64,
        "prompt_tokens": resp.usage.map(|u| u.prompt_tokens), "completion_tokens": resp.usage.map(|u| u.completion_tokens),
        "tool_calls": resp.tool_calls.iter().map(|c| c.function.name.clone()).collect::<Vec<_>>()}),
    );
    stream.finish(&resp.content, !resp.tool_calls.is_empty());
    let text = (!resp.content.is_empty()).then(|| resp.content.clone());
    let mut message = ChatMessage::assistant(text, resp.tool_calls.clone());
    if !resp.tool_calls.is_empty() && !resp.reasoning_content.is_empty() {
        message.reasoning_content = Some(resp.reasoning_content.clone());
    }
    memory.push(message);
    if resp.tool_calls.is_empty() {
        Thought::Answer(resp.content)
    } else {
        Thought::Act(resp)
    }
}

/// The session's budget is checked before a model call, never after the money is spent: once
/// it is, the run stops here with `budget_reached` (and the reason closes the turn in memory).
fn budget_spent(ctx: &RunContext<'_>, memory: &mut Memory, step: u32) -> Option<Thought> {
    let why = ctx
        .settings
        .budget(ctx.config.session_budget)
        .spent(&memory.usage)?;
    tracing::info!(session_id = ctx.session_id, step, "session budget reached");
    memory.push(ChatMessage::assistant(Some(why.clone()), Vec::new()));
    Some(Thought::Stop(RunOutcome::Finished {
        answer: why,
        reason: FinishReason::BudgetReached,
        steps: step,
    }))
}

/// Adds a model call's usage to the session (and so the run) and to the metrics.
fn account(
    ctx: &RunContext<'_>,
    model: &str,
    req: &ChatRequest,
    resp: &ChatResponse,
    memory: &mut Memory,
) {
    let call = CallUsage::of(req, resp);
    memory
        .usage
        .add_call(&call, model, ctx.config.prices.as_deref());
    ctx.metrics.llm_prompt_tokens.add(call.input);
    ctx.metrics.llm_completion_tokens.add(call.output);
    ctx.metrics.count_tokens(
        &ctx.manifest.name,
        model,
        [call.input, call.output, call.cached_input, call.reasoning],
    );
}

/// One model call streaming into `stream`, under its own span; `None` when the run was
/// cancelled meanwhile.
async fn call_model(
    ctx: &RunContext<'_>,
    run: &RunTrace,
    req: &mut ChatRequest,
    stream: &mut StepStream<'_>,
) -> Option<Result<ChatResponse, crate::llm::LlmError>> {
    let span = run.chat(ctx, req);
    let mut on_delta = |d: crate::llm::Delta<'_>| stream.on(d);
    // Watched, not polled at each of the stream's wakes (`cancel.rs`).
    let mut cancel = crate::cancel::Watch::new(ctx.cancel);
    let result = tokio::select! {
        biased;
        _ = cancel.done() => None,
        r = ctx.model.chat(req, &mut on_delta) => Some(r),
    };
    // Whatever streamed goes out now, however the call ended.
    ctx.sink.flush();
    if let Some(r) = &result {
        run.chat_ended(&span, r);
    }
    result
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
    memory.forget_reasoning(0);
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
