//! The model client: OpenAI-compatible `/chat/completions` with streaming and tools, plus
//! record (every exchange appended to a file) and replay (answer from such a file, offline).
//!
//! Covers OpenAI, DeepSeek, vLLM, Ollama, llama.cpp server and LM Studio: they all speak this
//! wire format. The API key is held in [`ApiKey`], whose `Debug` never prints it.

pub mod http;
pub mod replay;
pub mod sse;

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
}

/// Receives a model stream's [`Delta`]s.
pub type OnDelta<'a> = dyn FnMut(Delta<'_>) + Send + 'a;

/// A message's content: text, or (a user's message) OpenAI content parts — `{"type": "text",
/// "text"}` and `{"type": "image_url", "image_url": {"url"}}` — passed to the model as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

impl Content {
    /// The text: all of it, or the text parts joined (images left out).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(t) => t.into(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
                .into(),
        }
    }

    /// Bytes it takes (text, or the parts' text and URLs, data URLs included).
    pub fn size(&self) -> usize {
        match self {
            Content::Text(t) => t.len(),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| {
                    p.get("text")
                        .and_then(serde_json::Value::as_str)
                        .map_or(0, str::len)
                        + p.pointer("/image_url/url")
                            .and_then(serde_json::Value::as_str)
                            .map_or(0, str::len)
                        + 32
                })
                .sum(),
        }
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
}

impl ChatMessage {
    pub fn system(text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: Some(Content::Text(text.into())),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }
    pub fn user(content: impl Into<Content>) -> Self {
        ChatMessage {
            role: Role::User,
            content: Some(content.into()),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }
    pub fn assistant(text: Option<String>, tool_calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: text.map(Content::Text),
            tool_calls,
            tool_call_id: None,
        }
    }
    pub fn tool(call_id: &str, text: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Tool,
            content: Some(Content::Text(text.into())),
            tool_calls: vec![],
            tool_call_id: Some(call_id.into()),
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

/// Token counts reported by the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A complete model answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub content: String,
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
    #[error("the model reported an error mid-stream: {0}")]
    Stream(String),
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
            LlmError::Stream(_) => "the model reported an error mid-stream".into(),
            LlmError::Connect(_) => "cannot reach the model endpoint (connection failed)".into(),
            other => other.to_string(),
        }
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
