//! Incremental parser for the OpenAI streaming format: SSE `data:` lines carrying
//! `chat.completion.chunk` objects, ending with `data: [DONE]`.
//!
//! Tool-call deltas are keyed by `index` (the first carries id and name, later ones only
//! argument fragments split anywhere); usage arrives in a last chunk with `choices: []`; an error
//! object can arrive mid-stream. Malformed input is an error value, never a panic.

use std::borrow::Cow;
use std::collections::BTreeMap;

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
    #[serde(default)]
    error: Option<Value>,
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
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionIn<'a>>,
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
}

/// Accumulates a streamed answer from raw bytes.
pub struct StreamParser {
    line: Vec<u8>,
    content: String,
    /// Bytes of text and tool-call data so far, and the most allowed.
    output: usize,
    max_output: usize,
    calls: BTreeMap<u64, ToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
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
            output: 0,
            max_output,
            calls: BTreeMap::new(),
            finish_reason: None,
            usage: None,
            done: false,
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
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| err.to_string());
            return Err(LlmError::Stream(msg));
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(Usage {
                prompt_tokens: u.prompt_tokens.unwrap_or(0),
                completion_tokens: u.completion_tokens.unwrap_or(0),
            });
        }
        let Some(choices) = chunk.choices else {
            return Err(LlmError::Malformed("chunk has no `choices`".into()));
        };
        for choice in choices.into_iter().filter(|c| c.index.unwrap_or(0) == 0) {
            if let Some(delta) = choice.delta.or(choice.message) {
                // Reasoning first: servers that stream it send it before the message.
                let reasoning = delta.reasoning_content.or(delta.reasoning);
                if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
                    self.started = true;
                    self.count(text.len())?;
                    on_delta(Delta::Reasoning(&text));
                }
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.started = true;
                    self.count(text.len())?;
                    self.content.push_str(&text);
                    on_delta(Delta::Text(&text));
                }
                let calls = delta.tool_calls.unwrap_or_default();
                if !calls.is_empty() && !self.announced_calls {
                    self.announced_calls = true;
                    on_delta(Delta::ToolCalls);
                }
                for (pos, call) in calls.into_iter().enumerate() {
                    self.started = true;
                    let index = call.index.unwrap_or(pos as u64);
                    let entry = self.calls.entry(index).or_insert_with(|| ToolCall {
                        id: String::new(),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    });
                    if let Some(id) = call.id {
                        entry.id = id.into_owned();
                    }
                    if let Some(f) = call.function {
                        let name = f.name.unwrap_or_default();
                        let args = f.arguments.unwrap_or_default();
                        entry.function.name.push_str(&name);
                        entry.function.arguments.push_str(&args);
                        self.count(name.len() + args.len())?;
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason.into_owned());
            }
        }
        Ok(())
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
        p.finish()
    }

    /// Whether a `finish_reason` arrived (a stream cut after it is still complete).
    pub fn has_finish(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// The complete answer. Calls without an id get a generated one.
    pub fn finish(self) -> Result<ChatResponse, LlmError> {
        let mut tool_calls: Vec<ToolCall> = self.calls.into_values().collect();
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
            tool_calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
        })
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
                completion_tokens: 5
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
        assert!(matches!(r, Err(LlmError::Stream(m)) if m == "overloaded"));
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
}
