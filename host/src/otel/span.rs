//! The spans the host records, in the GenAI semantic conventions: `invoke_agent {agent}` per
//! run, `chat {model}` per model call, `execute_tool {tool}` per tool call. A [`Span`] is a
//! recording span when tracing is on, and only the trace context to pass on when it is off.

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};

use super::{header_of, Telemetry, TraceParent};

/// The model's server, as the conventions name it.
#[derive(Clone)]
pub(super) struct ModelServer {
    provider: &'static str,
    address: Option<String>,
    port: Option<i64>,
}

impl ModelServer {
    /// From the model's base URL. The API is OpenAI's whoever serves it; a few hosts are
    /// known by their own provider names.
    pub(super) fn of(url: &str) -> ModelServer {
        let parsed = reqwest::Url::parse(url).ok();
        let host = parsed
            .as_ref()
            .and_then(|u| u.host_str())
            .map(str::to_owned);
        let known = [
            ("anthropic.com", "anthropic"),
            ("groq.com", "groq"),
            ("deepseek.com", "deepseek"),
            ("mistral.ai", "mistral_ai"),
            ("x.ai", "x_ai"),
            ("googleapis.com", "gcp.gemini"),
            ("azure.com", "azure.ai.openai"),
            ("perplexity.ai", "perplexity"),
        ];
        let provider = host
            .as_deref()
            .and_then(|h| {
                known
                    .iter()
                    .find(|(d, _)| h == *d || h.ends_with(&format!(".{d}")))
            })
            .map_or("openai", |(_, p)| p);
        ModelServer {
            provider,
            port: parsed
                .as_ref()
                .and_then(|u| u.port_or_known_default())
                .map(i64::from),
            address: host,
        }
    }
}

/// What a run's span says of it.
pub struct RunSpan<'a> {
    pub agent: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub conversation: &'a str,
    pub model: &'a str,
}

/// Where a tool runs: `function` (the plugin's, or the client's), `extension` (an MCP
/// server's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolKind {
    Function,
    Extension,
}

/// A span in progress (ended when dropped), or the context to pass on when nothing records.
pub struct Span {
    cx: Context,
    recording: bool,
    capture: bool,
}

impl Span {
    fn passive(cx: Context) -> Span {
        Span {
            cx,
            recording: false,
            capture: false,
        }
    }

    /// The `traceparent` for what this span calls (none without a trace).
    pub fn traceparent(&self) -> Option<String> {
        header_of(&self.cx)
    }

    fn set(&self, kv: KeyValue) {
        if self.recording {
            self.cx.span().set_attribute(kv);
        }
    }

    /// Token counts (`gen_ai.usage.*`).
    pub fn usage(&self, input: u64, output: u64) {
        self.set(KeyValue::new("gen_ai.usage.input_tokens", input as i64));
        self.set(KeyValue::new("gen_ai.usage.output_tokens", output as i64));
    }

    /// `gen_ai.response.finish_reasons`.
    pub fn finish_reasons(&self, reasons: &[&str]) {
        let values: Vec<StringValue> = reasons.iter().map(|r| r.to_string().into()).collect();
        self.set(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(values)),
        ));
    }

    /// Prompt, answer or tool text — only with `--otel-capture-content` (`text` is not
    /// computed otherwise).
    pub fn content(&self, key: &'static str, text: impl FnOnce() -> String) {
        if self.recording && self.capture {
            self.set(KeyValue::new(key, text()));
        }
    }

    /// The operation failed: `error.type` (low-cardinality) and an error status — described by
    /// `description` only with content capture on (a tool's or a provider's error text can
    /// quote what users wrote), else by the type.
    pub fn fail(&self, error_type: &str, description: &str) {
        if self.recording {
            self.set(KeyValue::new("error.type", error_type.to_owned()));
            let text = if self.capture {
                description
            } else {
                error_type
            };
            self.cx.span().set_status(Status::error(text.to_owned()));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if self.recording {
            self.cx.span().end();
        }
    }
}

impl Telemetry {
    /// The run's span (`invoke_agent`), a child of the client's trace when it sent one.
    pub fn run_span(&self, parent: Option<&TraceParent>, run: RunSpan<'_>) -> Span {
        let parent = match parent {
            Some(p) => Context::new().with_remote_span_context((*p.0).clone()),
            None => Context::new(),
        };
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.provider.name", self.model.provider),
            KeyValue::new("gen_ai.agent.name", run.agent.to_owned()),
            KeyValue::new("gen_ai.agent.version", run.version.to_owned()),
            KeyValue::new("gen_ai.conversation.id", run.conversation.to_owned()),
            KeyValue::new("gen_ai.request.model", run.model.to_owned()),
        ];
        if !run.description.is_empty() {
            attrs.push(KeyValue::new(
                "gen_ai.agent.description",
                run.description.to_owned(),
            ));
        }
        let name = format!("invoke_agent {}", run.agent);
        self.open(&parent, name, SpanKind::Internal, attrs)
    }

    /// A model call's span (`chat`), a child of the run's.
    pub fn chat_span(
        &self,
        run: &Span,
        model: &str,
        conversation: &str,
        temperature: Option<f32>,
    ) -> Span {
        if self.tracer.is_none() {
            return Span::passive(run.cx.clone());
        }
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", self.model.provider),
            KeyValue::new("gen_ai.request.model", model.to_owned()),
            KeyValue::new("gen_ai.conversation.id", conversation.to_owned()),
            KeyValue::new("gen_ai.request.stream", true),
            KeyValue::new("gen_ai.output.type", "text"),
        ];
        if let Some(t) = temperature {
            attrs.push(KeyValue::new("gen_ai.request.temperature", f64::from(t)));
        }
        if let Some(a) = &self.model.address {
            attrs.push(KeyValue::new("server.address", a.clone()));
        }
        if let Some(p) = self.model.port {
            attrs.push(KeyValue::new("server.port", p));
        }
        self.open(&run.cx, format!("chat {model}"), SpanKind::Client, attrs)
    }

    /// A tool call's span (`execute_tool`), a child of the run's.
    pub fn tool_span(&self, run: &Span, tool: &str, call_id: &str, kind: ToolKind) -> Span {
        if self.tracer.is_none() {
            return Span::passive(run.cx.clone());
        }
        let attrs = vec![
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", tool.to_owned()),
            KeyValue::new("gen_ai.tool.call.id", call_id.to_owned()),
            KeyValue::new(
                "gen_ai.tool.type",
                match kind {
                    ToolKind::Function => "function",
                    ToolKind::Extension => "extension",
                },
            ),
        ];
        self.open(
            &run.cx,
            format!("execute_tool {tool}"),
            SpanKind::Internal,
            attrs,
        )
    }

    fn open(&self, parent: &Context, name: String, kind: SpanKind, attrs: Vec<KeyValue>) -> Span {
        let Some(tracer) = &self.tracer else {
            return Span::passive(parent.clone());
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(tracer, parent);
        let cx = parent.with_span(span);
        let recording = cx.span().is_recording();
        Span {
            cx,
            recording,
            capture: self.capture_content,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_by_host() {
        let m = ModelServer::of("https://api.groq.com/openai/v1");
        assert_eq!(
            (m.provider, m.address.as_deref(), m.port),
            ("groq", Some("api.groq.com"), Some(443))
        );
        assert_eq!(
            ModelServer::of("http://127.0.0.1:9000/v1").provider,
            "openai"
        );
        assert_eq!(ModelServer::of("http://127.0.0.1:9000/v1").port, Some(9000));
        assert_eq!(ModelServer::of("https://evilx.ai/v1").provider, "openai");
    }

    #[test]
    fn off_passes_the_clients_context_on() {
        let t = Telemetry::off();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(tp, None).unwrap();
        let run_of = |parent| {
            let run = RunSpan {
                agent: "a",
                version: "1",
                description: "",
                conversation: "s",
                model: "m",
            };
            t.run_span(parent, run)
        };
        let chat = t.chat_span(&run_of(Some(&parent)), "m", "s", None);
        assert_eq!(chat.traceparent().as_deref(), Some(tp));
        let none = run_of(None);
        assert_eq!(none.traceparent(), None);
    }
}
