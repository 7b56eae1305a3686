//! The model client: OpenAI-compatible `/chat/completions` with streaming and tools, plus
//! record (every exchange appended to a file) and replay (answer from such a file, offline).
//!
//! Covers OpenAI, DeepSeek, vLLM, Ollama, llama.cpp server and LM Studio: they all speak this
//! wire format. The API key is held in [`ApiKey`], whose `Debug` never prints it.

pub(crate) mod http;
mod pump;
pub(crate) mod replay;
pub mod sse;
mod wire;

use serde::{Deserialize, Serialize};

pub use http::{HttpModel, LlmConfig};
pub use replay::{Recorder, ReplayModel};

/// What a model stream reports as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta<'a> {
    /// A fragment of the message text (`delta.content`).
    Text(&'a str),
    /// A fragment of the model's separate reasoning (`delta.reasoning_content`, as DeepSeek,
    /// vLLM and others stream it; never sent back to the model).
    Reasoning(&'a str),
    /// The first tool-call data arrived: the text of this message precedes tool calls.
    ToolCalls,
    /// The model has sent nothing more yet: what its stream gave so far may go out now. (A
    /// model read holds many tokens under load; their events reach a client in one write.)
    Pause,
}

/// Receives a model stream's [`Delta`]s.
pub type OnDelta<'a> = dyn FnMut(Delta<'_>) + Send + 'a;

/// A message's content: text, or (a user's message) OpenAI content parts — `{"type": "text",
/// "text"}` and `{"type": "image_url", "image_url": {"url", "detail"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part, holding only the fields the host validated: whatever else a client put
/// in a part is not kept, sent to the model or stored (a part weighs exactly what it holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    /// `auto`, `low` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Part {
    /// Bytes it holds (text, or the URL and detail — data URLs included), plus its framing.
    pub fn size(&self) -> usize {
        32 + match self {
            Part::Text { text } => text.len(),
            Part::ImageUrl { image_url } => {
                image_url.url.len() + image_url.detail.as_ref().map_or(0, String::len)
            }
        }
    }
}

impl Content {
    /// The text: all of it, or the text parts joined (images left out).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(t) => t.into(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    Part::ImageUrl { .. } => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
                .into(),
        }
    }

    /// Bytes it takes (text, or the parts' text and URLs, data URLs included).
    pub fn size(&self) -> usize {
        match self {
            Content::Text(t) => t.len(),
            Content::Parts(parts) => parts.iter().map(Part::size).sum(),
        }
    }

    /// The image URLs among the parts.
    pub fn image_urls(&self) -> impl Iterator<Item = &str> {
        let parts = match self {
            Content::Text(_) => &[][..],
            Content::Parts(p) => &p[..],
        };
        parts.iter().filter_map(|p| match p {
            Part::ImageUrl { image_url } => Some(image_url.url.as_str()),
            Part::Text { .. } => None,
        })
    }
}

impl From<String> for Content {
    fn from(t: String) -> Content {
        Content::Text(t)
    }
}

impl From<&str> for Content {
    fn from(t: &str) -> Content {
        Content::Text(t.to_owned())
    }
}

/// A chat message in the OpenAI shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The step's `reasoning_content`, kept on an assistant message with tool calls and sent
    /// back (DeepSeek's thinking mode refuses the next request without it); only where the
    /// model sent it in that field, and only until the turn ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    pub fn system(text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: Some(Content::Text(text.into())),
            tool_calls: vec![],
            tool_call_id: None,
            reasoning_content: None,
        }
    }
    pub fn user(content: impl Into<Content>) -> Self {
        ChatMessage {
            role: Role::User,
            content: Some(content.into()),
            tool_calls: vec![],
            tool_call_id: None,
            reasoning_content: None,
        }
    }
    pub fn assistant(text: Option<String>, tool_calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: text.map(Content::Text),
            tool_calls,
            tool_call_id: None,
            reasoning_content: None,
        }
    }
    pub fn tool(call_id: &str, text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Tool,
            content: Some(Content::Text(text.into())),
            tool_calls: vec![],
            tool_call_id: Some(call_id.into()),
            reasoning_content: None,
        }
    }
    /// The text of the message, if any.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.content.as_ref().map(Content::text)
    }

    /// Characters of text in the message, a cheap stand-in for its token cost (an image counts
    /// its encoded size, so the memory budget also bounds the bytes a session holds).
    pub fn weight(&self) -> usize {
        self.content.as_ref().map_or(0, Content::size)
            + self
                .tool_calls
                .iter()
                .map(|c| c.function.name.len() + c.function.arguments.len())
                .sum::<usize>()
            + self.reasoning_content.as_ref().map_or(0, String::len)
            + 16
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
    /// Provider-specific fields of the call the provider needs back on the next request
    /// (Gemini: `{"google": {"thought_signature": …}}`), kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_content: Option<serde_json::Value>,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text as the model produced it (may be invalid: the agent loop checks).
    pub arguments: String,
}

/// A tool as sent to the model: the same type a plugin's manifest lists.
pub use myagent_plugin_api::ToolSpec;

/// One model call.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub temperature: Option<f32>,
    /// The W3C trace context of the call, sent as the `traceparent` header (not in the body).
    pub traceparent: Option<String>,
}

impl ChatRequest {
    /// The request body in the wire format.
    pub fn to_body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": self.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !self.tools.is_empty() {
            body["tools"] = self
                .tools
                .iter()
                .map(|t| serde_json::json!({"type": "function", "function": t}))
                .collect();
            body["tool_choice"] = "auto".into();
        }
        if let Some(t) = self.temperature {
            body["temperature"] = t.into();
        }
        body
    }
}

/// Token counts reported by the model. `completion_tokens` includes reasoning tokens (as
/// OpenAI counts them; added where a provider reports them apart, as xAI does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Input tokens served from the provider's cache (`prompt_tokens_details.cached_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    /// Output tokens spent reasoning (`completion_tokens_details.reasoning_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// A complete model answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub content: String,
    /// What the model streamed as `reasoning_content` (empty when none, or sent otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reasoning_content: String,
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Why a model call failed. Messages are safe to show to clients: they never contain the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("the model endpoint answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the model endpoint failed after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: Box<LlmError> },
    #[error("cannot reach the model endpoint: {0}")]
    Connect(String),
    #[error("the model sent no data for {0} ms (stalled)")]
    Stalled(u64),
    /// The provider's error object mid-stream: its `code` (or `type`) and message.
    #[error("the model reported an error mid-stream{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Stream {
        code: Option<String>,
        message: String,
    },
    #[error("the model sent a malformed response: {0}")]
    Malformed(String),
    #[error("{0}")]
    Replay(String),
    /// The answer (text and tool-call arguments together) grew past the host's limit.
    #[error("the model's answer exceeded the host's output limit of {0} bytes")]
    TooLong(usize),
    /// One attempt took longer than the host's per-call deadline.
    #[error("the model call took longer than {0} s")]
    Deadline(u64),
}

impl LlmError {
    /// A low-cardinality name for the failure (a trace's `error.type`): the HTTP status, the
    /// provider's own code, or what went wrong.
    pub fn kind(&self) -> String {
        match self {
            LlmError::Status { status, .. } => status.to_string(),
            LlmError::RetriesExhausted { last, .. } => last.kind(),
            LlmError::Connect(_) => "connection_failed".into(),
            LlmError::Stalled(_) | LlmError::Deadline(_) => "timeout".into(),
            LlmError::Stream { code, .. } => code
                .as_deref()
                .map_or("stream_error".into(), |c| shown(c, 40)),
            LlmError::Malformed(_) => "malformed_response".into(),
            LlmError::Replay(_) => "replay".into(),
            LlmError::TooLong(_) => "output_too_long".into(),
        }
    }

    /// The text a client may see: what failed, without what the provider said (an OpenAI 401
    /// quotes the end of the key; error bodies can name accounts and URLs). The full error goes
    /// to the server log.
    pub fn public(&self) -> String {
        match self {
            LlmError::Status { status, .. } => format!("the model endpoint answered HTTP {status}"),
            LlmError::RetriesExhausted { attempts, last } => {
                format!(
                    "the model endpoint failed after {attempts} attempts: {}",
                    last.public()
                )
            }
            LlmError::Stream { code, message } => format!(
                "the model reported an error mid-stream{}: {}",
                code.as_deref()
                    .map(|c| format!(" ({})", shown(c, 40)))
                    .unwrap_or_default(),
                shown(message, 200)
            ),
            LlmError::Connect(_) => "cannot reach the model endpoint (connection failed)".into(),
            other => other.to_string(),
        }
    }

    /// A provider's mid-stream `{"error": {...}}`: `code` (a string, or else `type`; Groq
    /// `tool_use_failed`) and `message`.
    pub fn stream_error(err: &serde_json::Value) -> LlmError {
        let message = err
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| err.to_string());
        let code = ["code", "type"].iter().find_map(|k| match err.get(*k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
        LlmError::Stream { code, message }
    }

    /// True when the model produced a tool call the provider refused as malformed (Groq's
    /// `tool_use_failed`): worth one more try with the error shown to the model.
    pub fn is_malformed_tool_call(&self) -> bool {
        matches!(self, LlmError::Stream { code: Some(c), .. } if c == "tool_use_failed")
    }

    /// True for failures the official client retries (before any output was streamed).
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            LlmError::Connect(_) | LlmError::Stalled(_) => true,
            _ => false,
        }
    }
}

/// A provider's text made safe to show a client: at most `max` characters, one line, with
/// URLs and anything that looks like a key or token (a long unbroken run of letters, digits,
/// `-` and `_`, or `sk-…`) replaced by `…`.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        let bare = word.trim_matches(|c: char| !c.is_alphanumeric());
        let secretish = word.contains("://")
            || bare.starts_with("sk-")
            || (bare.len() >= 24
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && bare.chars().any(|c| c.is_ascii_digit()));
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(if secretish { "…" } else { word });
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect();
        out.push('…');
    }
    out
}

/// The model backend a host uses.
pub enum Model {
    Http(HttpModel),
    Replay(ReplayModel),
}

impl Model {
    /// Streams one answer; `on_delta` gets each fragment as it arrives.
    pub async fn chat(
        &self,
        req: &ChatRequest,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        match self {
            Model::Http(m) => m.chat(req, on_delta).await,
            Model::Replay(m) => m.chat(req, on_delta).await,
        }
    }

    /// Where answers come from, for the start-up banner (never includes the key).
    pub fn describe(&self) -> String {
        match self {
            Model::Http(m) => m.describe(),
            Model::Replay(m) => m.describe(),
        }
    }
}

/// An API key; `Debug` and `Display` print a placeholder so it cannot leak into logs.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        ApiKey(key)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_text_shown_to_clients_is_bounded_and_secret_free() {
        let t = super::shown(
            "Invalid key sk-abc123 for https://api.example.com/v1 (org org_9f8e7d6c5b4a3f2e1d0c9b8a)",
            200,
        );
        assert_eq!(t, "Invalid key … for … (org …");
        assert_eq!(super::shown(&"word ".repeat(100), 20).chars().count(), 21);
    }
}
