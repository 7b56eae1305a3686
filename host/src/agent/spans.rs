//! What a run's trace spans say: the run's own span (`invoke_agent`), one `chat` span per
//! model call (its `traceparent` sent with the request), and, with `--otel-capture-content`,
//! messages in the GenAI conventions' shape (role and parts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::{FinishReason, RunContext, RunOutcome};
use crate::llm::{ChatMessage, ChatRequest, ChatResponse, Content, LlmError, Part, Role};
use crate::otel::{RunSpan, Span};

/// A run's span and the tokens its model calls spent.
pub(super) struct RunTrace {
    pub(super) span: Span,
    tokens: [AtomicU64; 2],
    /// The last model call's failure (`error.type`, description): the run's, if it fails —
    /// a failure the run got past (a retried malformed tool call) is not the run's.
    failure: Mutex<Option<(String, String)>>,
}

impl RunTrace {
    pub(super) fn start(
        ctx: &RunContext<'_>,
        model: &str,
        system_prompt: &str,
        input: &Content,
    ) -> RunTrace {
        let m = ctx.manifest;
        let span = ctx.telemetry.run_span(
            ctx.trace_parent,
            RunSpan {
                agent: &m.name,
                version: &m.version,
                description: &m.description,
                conversation: ctx.session_id,
                model,
            },
        );
        span.content("gen_ai.system_instructions", || {
            json!([{"type": "text", "content": system_prompt}]).to_string()
        });
        span.content("gen_ai.input.messages", || {
            Value::Array(vec![message(&ChatMessage::user(input.clone()))]).to_string()
        });
        RunTrace {
            span,
            tokens: [AtomicU64::new(0), AtomicU64::new(0)],
            failure: Mutex::new(None),
        }
    }

    /// The run is over: its tokens, how it ended and (captured) its answer.
    pub(super) fn end(self, outcome: &RunOutcome) {
        let [input, output] = &self.tokens;
        self.span.usage(
            input.load(Ordering::Relaxed),
            output.load(Ordering::Relaxed),
        );
        match outcome {
            RunOutcome::Finished { answer, reason, .. } => {
                self.span.finish_reasons(&[reason.as_str()]);
                self.span.content("gen_ai.output.messages", || {
                    json!([{"role": "assistant", "parts": [{"type": "text", "content": answer}],
                        "finish_reason": finish_reason(*reason)}])
                    .to_string()
                });
            }
            RunOutcome::Failed { message } => {
                let failure = self
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match failure {
                    Some((kind, description)) => self.span.fail(&kind, &description),
                    None => self.span.fail("run_failed", message),
                }
            }
            RunOutcome::Cancelled => self.span.finish_reasons(&["cancelled"]),
        }
    }

    /// This agent's part of the turn ended in a handoff to `to` (the turn goes on under a span
    /// of its own).
    pub(super) fn handed_off(self, to: &str) {
        let [input, output] = &self.tokens;
        self.span.usage(
            input.load(Ordering::Relaxed),
            output.load(Ordering::Relaxed),
        );
        self.span.finish_reasons(&["handoff"]);
        self.span.content("gen_ai.output.messages", || {
            json!([{"role": "assistant", "parts": [{"type": "text", "content": format!("(handed over to {to})")}],
                "finish_reason": "handoff"}])
            .to_string()
        });
    }

    /// A model call's span; `req` gets its `traceparent`.
    pub(super) fn chat(&self, ctx: &RunContext<'_>, req: &mut ChatRequest) -> Span {
        let span = ctx
            .telemetry
            .chat_span(&self.span, &req.model, ctx.session_id, req.temperature);
        req.traceparent = span.traceparent();
        span.content("gen_ai.input.messages", || {
            Value::Array(req.messages.iter().map(message).collect()).to_string()
        });
        span
    }

    /// What the model call came to, on its span (and its tokens to the run's).
    pub(super) fn chat_ended(&self, span: &Span, result: &Result<ChatResponse, LlmError>) {
        match result {
            Ok(resp) => {
                if let Some(u) = resp.usage {
                    span.usage(u.prompt_tokens, u.completion_tokens);
                    self.tokens[0].fetch_add(u.prompt_tokens, Ordering::Relaxed);
                    self.tokens[1].fetch_add(u.completion_tokens, Ordering::Relaxed);
                }
                let reason =
                    resp.finish_reason
                        .as_deref()
                        .unwrap_or(if resp.tool_calls.is_empty() {
                            "stop"
                        } else {
                            "tool_calls"
                        });
                span.finish_reasons(&[reason]);
                span.content("gen_ai.output.messages", || {
                    let mut m = message(&ChatMessage::assistant(
                        (!resp.content.is_empty()).then(|| resp.content.clone()),
                        resp.tool_calls.clone(),
                    ));
                    m["finish_reason"] = reason.into();
                    Value::Array(vec![m]).to_string()
                });
            }
            Err(e) => {
                let kind = e.kind();
                span.fail(&kind, &e.public());
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((kind, e.public()));
            }
        }
    }
}

/// The conventions' finish reason for how a run ended.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Answer | FinishReason::Terminated => "stop",
        FinishReason::MaxSteps | FinishReason::BudgetReached => "length",
    }
}

/// One message as the conventions write it: `{role, parts: [...]}`.
fn message(m: &ChatMessage) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut parts = Vec::new();
    match (&m.content, &m.tool_call_id) {
        (Some(c), Some(id)) => {
            parts.push(json!({"type": "tool_call_response", "id": id, "result": c.text()}))
        }
        (Some(Content::Text(t)), None) => parts.push(json!({"type": "text", "content": t})),
        (Some(Content::Parts(ps)), None) => parts.extend(ps.iter().map(|p| match p {
            Part::Text { text } => json!({"type": "text", "content": text}),
            Part::ImageUrl { image_url } if image_url.url.starts_with("data:") => {
                json!({"type": "blob", "modality": "image", "content": format!("({} bytes, not recorded)", image_url.url.len())})
            }
            Part::ImageUrl { image_url } => json!({"type": "uri", "modality": "image", "uri": image_url.url}),
        })),
        (None, _) => {}
    }
    for call in &m.tool_calls {
        let args = serde_json::from_str::<Value>(&call.function.arguments)
            .unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
        parts.push(json!({"type": "tool_call", "id": call.id, "name": call.function.name, "arguments": args}));
    }
    json!({"role": role, "parts": parts})
}
