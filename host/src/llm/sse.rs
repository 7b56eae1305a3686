//! Incremental parser for the OpenAI streaming format: SSE `data:` lines carrying
//! `chat.completion.chunk` objects, ending with `data: [DONE]`.
//!
//! Tool-call deltas are keyed by `index` (the first carries id and name, later ones only
//! argument fragments split anywhere); usage arrives in a last chunk with `choices: []`; an error
//! object can arrive mid-stream. Malformed input is an error value, never a panic.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::{ChatResponse, Delta, FunctionCall, LlmError, OnDelta, ToolCall, Usage};

/// The longest stream line accepted.
const MAX_LINE: usize = 4 << 20;

// The wire shapes, read without building a `Value` tree; strings borrow from the line unless
// they hold escapes. Unknown fields are ignored; `null` reads as absent.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    /// Groq (2025) reports usage only here.
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<MessageIn<'a>>,
    /// Non-streamed responses carry `message` instead of `delta`.
    #[serde(default, borrow)]
    message: Option<MessageIn<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    /// A string, or (Mistral's Magistral) a list of `thinking` and `text` parts.
    #[serde(default, borrow)]
    content: ContentIn<'a>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    /// OpenRouter and Snowflake Cortex (Claude): `[{type: "reasoning.text", text}]`.
    #[serde(default, borrow)]
    reasoning_details: Option<Vec<ReasoningDetail<'a>>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct ReasoningDetail<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    summary: Option<Cow<'a, str>>,
}

/// `delta.content`: absent, a string (every provider), or content parts (Mistral).
#[derive(Default)]
enum ContentIn<'a> {
    #[default]
    None,
    Text(Cow<'a, str>),
    Parts(Vec<PartIn<'a>>),
}

/// A content part: `{"type": "text", "text"}` or `{"type": "thinking", "thinking": [parts] or
/// "text"}`.
#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thinking: Option<Value>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ContentIn<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = ContentIn<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ContentIn::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ContentIn::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(ContentIn::Text(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ContentIn::None)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(ContentIn::None)
            }
            fn visit_some<D2: serde::Deserializer<'de>>(
                self,
                d: D2,
            ) -> Result<Self::Value, D2::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<PartIn<'a>>()? {
                    parts.push(p);
                }
                Ok(ContentIn::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The text of a `thinking` part: a string, or parts whose `text` fields are joined.
fn thinking_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionIn<'a>>,
    /// Provider fields the provider needs back (Gemini: `{"google": {"thought_signature"}}`).
    #[serde(default)]
    extra_content: Option<Value>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    completion_tokens_details: Option<TokenDetails>,
}

#[derive(Deserialize)]
struct TokenDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageIn {
    /// Usage as the host counts it: reasoning tokens are output tokens. OpenAI counts them
    /// inside `completion_tokens`; xAI outside it (then `total_tokens` says so) — added then.
    fn counted(&self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let mut completion = self.completion_tokens.unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        if reasoning > 0 && self.total_tokens == Some(prompt + completion + reasoning) {
            completion += reasoning;
        }
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: reasoning,
        }
    }
}

/// Where a message's text is, with respect to a leading `<think>…</think>` block (models that
/// write their reasoning inline: DeepSeek-R1 distills on Groq or Together, Ollama and vLLM
/// without a reasoning parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Think {
    /// Only whitespace (or the start of `<think>`) so far: held.
    Start,
    /// Inside the block: reasoning.
    Inside,
    /// The first text after `</think>`: leading whitespace is dropped.
    After,
    /// The message text.
    Text,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Accumulates a streamed answer from raw bytes.
pub struct StreamParser {
    line: Vec<u8>,
    content: String,
    /// Reasoning sent as `reasoning_content` (DeepSeek and others want it back with the
    /// message's tool calls).
    reasoning_content: String,
    /// Bytes of text and tool-call data so far, and the most allowed.
    output: usize,
    max_output: usize,
    /// Tool calls in the order they began; `slots` maps a stream `index` to the call it is
    /// extending now (a new `id` on an index starts a new call: Ollama sends every parallel
    /// call as index 0, Gemini sends no index).
    calls: Vec<ToolCall>,
    slots: Vec<(u64, usize)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
    /// The inline `<think>` state of the message text, and text held while it is undecided
    /// (at most a tag's length).
    think: Think,
    held: String,
    /// True once any text or tool-call data arrived (a retry would then repeat output).
    pub started: bool,
    /// True once [`Delta::ToolCalls`] was reported.
    announced_calls: bool,
}

impl Default for StreamParser {
    fn default() -> Self {
        StreamParser::with_limit(usize::MAX)
    }
}

impl StreamParser {
    /// A parser that fails once the answer (text and tool-call data) passes `max_output` bytes.
    pub fn with_limit(max_output: usize) -> StreamParser {
        StreamParser {
            line: Vec::new(),
            content: String::new(),
            reasoning_content: String::new(),
            output: 0,
            max_output,
            calls: Vec::new(),
            slots: Vec::new(),
            finish_reason: None,
            usage: None,
            done: false,
            think: Think::Start,
            held: String::new(),
            started: false,
            announced_calls: false,
        }
    }

    fn count(&mut self, bytes: usize) -> Result<(), LlmError> {
        self.output = self.output.saturating_add(bytes);
        if self.output > self.max_output {
            return Err(LlmError::TooLong(self.max_output));
        }
        Ok(())
    }

    /// Feeds bytes; text, reasoning and the first sign of tool calls go to `on_delta`. Returns `Ok(true)` once `[DONE]` was seen.
    pub fn feed(&mut self, bytes: &[u8], on_delta: &mut OnDelta<'_>) -> Result<bool, LlmError> {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (part, tail) = rest.split_at(i);
            rest = &tail[1..];
            // A line wholly inside this read is parsed in place; only a line split across
            // reads is gathered in `self.line`.
            if self.line.is_empty() {
                self.check_line(part.len())?;
                self.line_done(part, on_delta)?;
            } else {
                self.check_line(self.line.len() + part.len())?;
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(part);
                self.line_done(&line, on_delta)?;
                line.clear();
                self.line = line; // keep the capacity for the next split line
            }
            if self.done {
                return Ok(true);
            }
        }
        self.check_line(self.line.len() + rest.len())?;
        self.line.extend_from_slice(rest);
        Ok(self.done)
    }

    fn check_line(&self, len: usize) -> Result<(), LlmError> {
        if len > MAX_LINE {
            return Err(LlmError::Malformed("a stream line exceeded 4 MiB".into()));
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], on_delta: &mut OnDelta<'_>) -> Result<(), LlmError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| LlmError::Malformed("stream is not UTF-8".into()))?;
        let line = line.trim_end_matches('\r');
        let Some(data) = line.strip_prefix("data:") else {
            // Blank separators, comments (`: keep-alive`), `event:`/`id:` fields: nothing to do.
            return Ok(());
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| {
            LlmError::Malformed(format!(
                "chunk is not a chat completion chunk ({e}): {}",
                preview(data)
            ))
        })?;
        self.chunk(chunk, on_delta)
    }

    /// Applies one parsed chunk (also used for non-streamed responses via [`Self::whole`]).
    fn chunk(&mut self, chunk: Chunk<'_>, on_delta: &mut OnDelta<'_>) -> Result<(), LlmError> {
        if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
            return Err(LlmError::stream_error(&err));
        }
        if let Some(u) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
            self.usage = Some(u.counted());
        }
        let Some(choices) = chunk.choices else {
            return Err(LlmError::Malformed("chunk has no `choices`".into()));
        };
        for choice in choices.into_iter().filter(|c| c.index.unwrap_or(0) == 0) {
            if let Some(delta) = choice.delta.or(choice.message) {
                self.message(delta, on_delta)?;
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason.into_owned());
            }
        }
        Ok(())
    }

    fn message(
        &mut self,
        delta: MessageIn<'_>,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<(), LlmError> {
        // Reasoning first: servers that stream it send it before the message.
        if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
            self.reasoning_content.push_str(&text);
            self.reasoning(&text, on_delta)?;
        } else if let Some(text) = delta.reasoning.filter(|t| !t.is_empty()) {
            self.reasoning(&text, on_delta)?;
        } else if let Some(details) = delta.reasoning_details {
            for d in details {
                if let Some(text) = d.text.or(d.summary).filter(|t| !t.is_empty()) {
                    self.reasoning(&text, on_delta)?;
                }
            }
        }
        match delta.content {
            ContentIn::None => {}
            ContentIn::Text(text) => self.text(&text, on_delta)?,
            ContentIn::Parts(parts) => {
                for part in parts {
                    match (part.kind.as_deref(), part.thinking, part.text) {
                        (Some("thinking"), Some(t), _) => {
                            self.reasoning(&thinking_text(&t), on_delta)?
                        }
                        (Some("text") | None, _, Some(text)) => self.text(&text, on_delta)?,
                        _ => {} // images, references: not text
                    }
                }
            }
        }
        let calls = delta.tool_calls.unwrap_or_default();
        if !calls.is_empty() && !self.announced_calls {
            self.announced_calls = true;
            on_delta(Delta::ToolCalls);
        }
        for (pos, call) in calls.into_iter().enumerate() {
            self.tool_call(pos as u64, call)?;
        }
        Ok(())
    }

    fn reasoning(&mut self, text: &str, on_delta: &mut OnDelta<'_>) -> Result<(), LlmError> {
        if text.is_empty() {
            return Ok(());
        }
        self.started = true;
        self.count(text.len())?;
        on_delta(Delta::Reasoning(text));
        Ok(())
    }

    /// Message text: a leading `<think>` block is reasoning, the rest is the message.
    fn text(&mut self, text: &str, on_delta: &mut OnDelta<'_>) -> Result<(), LlmError> {
        if text.is_empty() {
            return Ok(());
        }
        self.started = true;
        self.count(text.len())?;
        if self.think == Think::Text {
            self.content.push_str(text);
            on_delta(Delta::Text(text));
            return Ok(());
        }
        self.held.push_str(text);
        self.think_step(on_delta);
        Ok(())
    }

    /// Moves held text on as far as the `<think>` state allows.
    fn think_step(&mut self, on_delta: &mut OnDelta<'_>) {
        loop {
            match self.think {
                Think::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.held = rest.to_owned();
                        self.think = Think::Inside;
                    } else if THINK_OPEN.starts_with(t) {
                        return; // undecided
                    } else {
                        self.think = Think::Text;
                        let held = std::mem::take(&mut self.held);
                        self.content.push_str(&held);
                        on_delta(Delta::Text(&held));
                        return;
                    }
                }
                Think::Inside => {
                    if let Some(at) = self.held.find(THINK_CLOSE) {
                        let rest = self.held.split_off(at);
                        let thought =
                            std::mem::replace(&mut self.held, rest[THINK_CLOSE.len()..].to_owned());
                        if !thought.is_empty() {
                            on_delta(Delta::Reasoning(&thought));
                        }
                        self.think = Think::After;
                        continue;
                    }
                    // Send all but what could be the start of `</think>`.
                    let mut keep = self.held.len().saturating_sub(THINK_CLOSE.len() - 1);
                    while !self.held.is_char_boundary(keep) {
                        keep -= 1;
                    }
                    if let Some(lt) = self.held[keep..].find('<') {
                        keep += lt;
                    } else {
                        keep = self.held.len();
                    }
                    if keep > 0 {
                        let rest = self.held.split_off(keep);
                        let thought = std::mem::replace(&mut self.held, rest);
                        on_delta(Delta::Reasoning(&thought));
                    }
                    return;
                }
                Think::After => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return;
                    }
                    self.held = t.to_owned();
                    self.think = Think::Text;
                    let held = std::mem::take(&mut self.held);
                    self.content.push_str(&held);
                    on_delta(Delta::Text(&held));
                    return;
                }
                Think::Text => return,
            }
        }
    }

    fn tool_call(&mut self, pos: u64, call: ToolCallIn<'_>) -> Result<(), LlmError> {
        self.started = true;
        let index = call.index.unwrap_or(pos);
        let id = call.id.filter(|id| !id.is_empty());
        let slot = self.slots.iter().position(|(i, _)| *i == index);
        let at = match slot {
            // A fragment of the call this index is extending, unless it brings a new id.
            Some(s)
                if id.as_deref().is_none_or(|id| {
                    let current = &self.calls[self.slots[s].1].id;
                    current.is_empty() || current == id
                }) =>
            {
                self.slots[s].1
            }
            _ => {
                self.calls.push(ToolCall {
                    id: String::new(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: String::new(),
                        arguments: String::new(),
                    },
                    extra_content: None,
                });
                let at = self.calls.len() - 1;
                match slot {
                    Some(s) => self.slots[s].1 = at,
                    None => self.slots.push((index, at)),
                }
                at
            }
        };
        let entry = &mut self.calls[at];
        if let Some(id) = id {
            entry.id = id.into_owned();
        }
        if let Some(extra) = call.extra_content.filter(|v| !v.is_null()) {
            entry.extra_content = Some(extra);
        }
        let mut added = 0;
        if let Some(f) = call.function {
            // Continuation fragments may repeat the name or send it empty (DashScope).
            if let Some(name) = f
                .name
                .filter(|n| !n.is_empty() && **n != *entry.function.name)
            {
                entry.function.name.push_str(&name);
                added += name.len();
            }
            let args = f.arguments.unwrap_or_default();
            entry.function.arguments.push_str(&args);
            added += args.len();
        }
        self.count(added)
    }

    /// Parses a whole non-streamed `chat.completion` (some servers ignore `stream: true`).
    pub fn whole(
        body: &[u8],
        max_output: usize,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let v: Chunk<'_> = serde_json::from_slice(body)
            .map_err(|e| LlmError::Malformed(format!("response is not a chat completion ({e})")))?;
        let mut p = StreamParser::with_limit(max_output);
        p.chunk(v, on_delta)?;
        p.done = true;
        p.finish_with(on_delta)
    }

    /// Whether a `finish_reason` arrived (a stream cut after it is still complete).
    pub fn has_finish(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// The complete answer; text still held (a message that was only whitespace, or the start
    /// of a `<think>` that never came) goes to `on_delta` first. Calls without an id get a
    /// generated one.
    pub fn finish_with(mut self, on_delta: &mut OnDelta<'_>) -> Result<ChatResponse, LlmError> {
        let held = std::mem::take(&mut self.held);
        match self.think {
            Think::Start if !held.is_empty() => {
                self.content.push_str(&held);
                on_delta(Delta::Text(&held));
            }
            Think::Inside if !held.is_empty() => on_delta(Delta::Reasoning(&held)),
            _ => {}
        }
        let mut tool_calls = self.calls;
        for (i, call) in tool_calls.iter_mut().enumerate() {
            if call.function.name.is_empty() {
                return Err(LlmError::Malformed(format!(
                    "tool call #{i} has no function name"
                )));
            }
            if call.id.is_empty() {
                call.id = format!("call_{i}");
            }
        }
        Ok(ChatResponse {
            content: self.content,
            reasoning_content: self.reasoning_content,
            tool_calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
        })
    }

    /// [`Self::finish_with`] where nothing can be held (tests).
    pub fn finish(self) -> Result<ChatResponse, LlmError> {
        self.finish_with(&mut |_| {})
    }
}

fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(120).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> (Result<ChatResponse, LlmError>, String) {
        let mut p = StreamParser::default();
        let mut out = String::new();
        let r = p.feed(input.as_bytes(), &mut |d: Delta<'_>| {
            if let Delta::Text(t) = d {
                out.push_str(t)
            }
        });
        (r.and_then(|_| p.finish()), out)
    }

    #[test]
    fn tool_call_fragments_are_joined_by_index() {
        let s = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"echo\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\": \\\"Paris\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5}}\n\n",
            "data: [DONE]\n\n"
        );
        let (r, _) = run(s);
        let r = r.unwrap();
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].function.arguments, "{\"city\": \"Paris\"}");
        assert_eq!(r.tool_calls[1].function.name, "echo");
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn text_is_streamed_and_bytes_may_split_anywhere() {
        let s = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let mut p = StreamParser::default();
        let mut out = String::new();
        for b in s.as_bytes().chunks(3) {
            p.feed(b, &mut |d: Delta<'_>| {
                if let Delta::Text(t) = d {
                    out.push_str(t)
                }
            })
            .unwrap();
        }
        assert_eq!(out, "Hello");
        assert_eq!(p.finish().unwrap().content, "Hello");
    }

    #[test]
    fn errors_and_garbage_are_values() {
        let (r, _) = run("data: {\"error\":{\"message\":\"overloaded\"}}\n");
        assert!(matches!(r, Err(LlmError::Stream { message, .. }) if message == "overloaded"));
        let (r, _) = run("data: {not json\n");
        assert!(matches!(r, Err(LlmError::Malformed(_))));
        let (r, _) = run("data: {\"foo\":1}\n");
        assert!(matches!(r, Err(LlmError::Malformed(_))));
    }

    #[test]
    fn reasoning_and_the_first_tool_call_are_reported_in_order() {
        let s = concat!(
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"The user wants \"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning\":\"weather.\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Let me look.\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut p = StreamParser::default();
        let mut seen = Vec::new();
        p.feed(s.as_bytes(), &mut |d: Delta<'_>| {
            seen.push(format!("{d:?}"))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "Reasoning(\"The user wants \")",
                "Reasoning(\"weather.\")",
                "Text(\"Let me look.\")",
                "ToolCalls"
            ]
        );
        let r = p.finish().unwrap();
        assert_eq!(
            r.content, "Let me look.",
            "reasoning is not part of the message"
        );
        assert_eq!(r.tool_calls[0].function.arguments, "{}");
    }
    /// Everything a stream reported, as `R:` reasoning and `T:` text pieces (joined per kind).
    fn classify(input: &str, split: usize) -> (String, String, ChatResponse) {
        let mut p = StreamParser::default();
        let (mut r, mut t) = (String::new(), String::new());
        let mut on = |d: Delta<'_>| match d {
            Delta::Reasoning(x) => r.push_str(x),
            Delta::Text(x) => t.push_str(x),
            Delta::ToolCalls => {}
        };
        for b in input.as_bytes().chunks(split) {
            p.feed(b, &mut on).unwrap();
        }
        let resp = p.finish_with(&mut on).unwrap();
        (r, t, resp)
    }

    fn data(delta: &str) -> String {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n")
    }

    #[test]
    fn a_leading_think_block_is_reasoning_wherever_the_tags_split() {
        let stream = [
            data(r#"{"content":"  <th"}"#),
            data(r#"{"content":"ink>I think"}"#),
            data(r#"{"content":" a < b </thi"}"#),
            data(r#"{"content":"nk>\n\nThe answer"}"#),
            data(r#"{"content":" <think>is literal</think>"}"#),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        for split in [1, 3, 7, 1000] {
            let (r, t, resp) = classify(&stream, split);
            assert_eq!(r, "I think a < b ", "split {split}");
            assert_eq!(t, "The answer <think>is literal</think>", "split {split}");
            assert_eq!(resp.content, t);
        }
        // No think block: text untouched, leading whitespace kept; "<" alone is not a tag.
        let (r, t, _) = classify(&[data(r#"{"content":" <b>hi</b>"}"#)].concat(), 2);
        assert_eq!((r.as_str(), t.as_str()), ("", " <b>hi</b>"));
        // A block never closed is all reasoning; a message of only whitespace is text.
        let (r, t, _) = classify(&data(r#"{"content":"<think>still going"}"#), 4);
        assert_eq!((r.as_str(), t.as_str()), ("still going", ""));
        let (_, t, _) = classify(&data(r#"{"content":"\n"}"#), 4);
        assert_eq!(t, "\n");
    }

    #[test]
    fn content_parts_reasoning_details_and_usage_shapes() {
        let stream = [
            data(r#"{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hmm"}]}]}"#),
            data(r#"{"content":[{"type":"text","text":"Hi"}]}"#),
            data(r#"{"content":" there","reasoning_details":[{"type":"reasoning.text","text":"!"}]}"#),
            data(r#"{"reasoning":"r","reasoning_details":[{"type":"reasoning.text","text":"r"}]}"#),
            // xAI: reasoning outside completion_tokens.
            r#"data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":303,"prompt_tokens_details":{"cached_tokens":11},"completion_tokens_details":{"reasoning_tokens":290}}}"#.to_owned() + "\n\n",
        ]
        .concat();
        let (r, t, resp) = classify(&stream, 5);
        assert_eq!(
            r, "hmm!r",
            "details only when nothing else carries reasoning"
        );
        assert_eq!(t, "Hi there");
        assert_eq!(
            resp.usage.unwrap(),
            Usage {
                prompt_tokens: 12,
                completion_tokens: 291,
                cached_tokens: 11,
                reasoning_tokens: 290
            }
        );
        // OpenAI counts reasoning inside completion_tokens: not added twice.
        let s = r#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":50,"total_tokens":55,"completion_tokens_details":{"reasoning_tokens":30}}}"#.to_owned() + "\n";
        let (_, _, resp) = classify(&s, 100);
        assert_eq!(resp.usage.unwrap().completion_tokens, 50);
        // Groq 2025: usage only under x_groq.
        let s = r#"data: {"choices":[],"x_groq":{"id":"r","usage":{"prompt_tokens":3,"completion_tokens":4}}}"#.to_owned() + "\n";
        let (_, _, resp) = classify(&s, 100);
        assert_eq!(resp.usage.unwrap().completion_tokens, 4);
    }

    #[test]
    fn new_ids_start_new_calls_and_empty_ids_or_names_do_not_overwrite() {
        let stream = [
            // DashScope: empty id and name in continuation fragments.
            data(r#"{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{"}}]}"#),
            data(r#"{"tool_calls":[{"index":0,"id":"","function":{"name":"","arguments":"}"}}]}"#),
            // Ollama: the next call also at index 0, with a new id.
            data(r#"{"tool_calls":[{"index":0,"id":"b","function":{"name":"g","arguments":"[]"}}]}"#),
            // Gemini: no index, extra_content kept.
            data(r#"{"tool_calls":[{"id":"c","function":{"name":"h","arguments":"1"},"extra_content":{"google":{"thought_signature":"s"}}}]}"#),
        ]
        .concat();
        let (_, _, resp) = classify(&stream, 9);
        let got: Vec<(&str, &str, &str)> = resp
            .tool_calls
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.function.name.as_str(),
                    c.function.arguments.as_str(),
                )
            })
            .collect();
        assert_eq!(got, [("a", "f", "{}"), ("b", "g", "[]"), ("c", "h", "1")]);
        assert_eq!(
            resp.tool_calls[2].extra_content,
            Some(serde_json::json!({"google": {"thought_signature": "s"}}))
        );
        assert_eq!(resp.tool_calls[0].extra_content, None);
    }

    #[test]
    fn a_mid_stream_error_keeps_its_code() {
        let (r, _) = run("event: error\ndata: {\"error\":{\"message\":\"bad call\",\"type\":\"invalid_request_error\",\"code\":\"tool_use_failed\"}}\n");
        let e = r.unwrap_err();
        assert!(e.is_malformed_tool_call());
        assert!(
            e.public().contains("(tool_use_failed): bad call"),
            "{}",
            e.public()
        );
        let (r, _) = run(
            "data: {\"error\":{\"code\":400,\"message\":\"Token limit reached\"},\"choices\":[]}\n",
        );
        assert_eq!(
            r.unwrap_err().public(),
            "the model reported an error mid-stream (400): Token limit reached"
        );
    }
}
