//! Incremental parser for the OpenAI streaming format: SSE `data:` lines carrying
//! `chat.completion.chunk` objects, ending with `data: [DONE]`.
//!
//! Tool-call deltas are keyed by `index` (the first carries id and name, later ones only
//! argument fragments split anywhere); usage arrives in a last chunk with `choices: []`; an error
//! object can arrive mid-stream. Malformed input is an error value, never a panic.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ChatResponse, Delta, FunctionCall, LlmError, OnDelta, ToolCall, Usage};

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
    pub fn feed(
        &mut self,
        bytes: &[u8],
        on_delta: &mut OnDelta<'_>,
    ) -> Result<bool, LlmError> {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, on_delta)?;
                if self.done {
                    return Ok(true);
                }
            } else if self.line.len() < 4 << 20 {
                self.line.push(b);
            } else {
                return Err(LlmError::Malformed("a stream line exceeded 4 MiB".into()));
            }
        }
        Ok(self.done)
    }

    fn line_done(
        &mut self,
        line: &[u8],
        on_delta: &mut OnDelta<'_>,
    ) -> Result<(), LlmError> {
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
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            LlmError::Malformed(format!("chunk is not JSON ({e}): {}", preview(data)))
        })?;
        self.chunk(&chunk, on_delta)
    }

    /// Applies one parsed chunk (also used for non-streamed responses via [`Self::whole`]).
    fn chunk(
        &mut self,
        chunk: &Value,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<(), LlmError> {
        if let Some(err) = chunk.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| err.to_string());
            return Err(LlmError::Stream(msg));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage {
                prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
                completion_tokens: u
                    .get("completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            });
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Err(LlmError::Malformed(format!(
                "chunk has no `choices`: {}",
                preview(&chunk.to_string())
            )));
        };
        for choice in choices
            .iter()
            .filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        {
            let delta = choice
                .get("delta")
                .or_else(|| choice.get("message"))
                .unwrap_or(&Value::Null);
            // Reasoning first: servers that stream it send it before the message.
            let reasoning = delta
                .get("reasoning_content")
                .or_else(|| delta.get("reasoning"))
                .and_then(Value::as_str);
            if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
                self.started = true;
                self.count(text.len())?;
                on_delta(Delta::Reasoning(text));
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                if !text.is_empty() {
                    self.started = true;
                    self.count(text.len())?;
                    self.content.push_str(text);
                    on_delta(Delta::Text(text));
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                if !calls.is_empty() && !self.announced_calls {
                    self.announced_calls = true;
                    on_delta(Delta::ToolCalls);
                }
                for (pos, call) in calls.iter().enumerate() {
                    self.started = true;
                    let index = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(pos as u64);
                    let entry = self.calls.entry(index).or_insert_with(|| ToolCall {
                        id: String::new(),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    });
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        entry.id = id.to_owned();
                    }
                    if let Some(f) = call.get("function") {
                        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
                        let n = name.len() + args.len();
                        entry.function.name.push_str(name);
                        entry.function.arguments.push_str(args);
                        self.count(n)?;
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_owned());
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
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| LlmError::Malformed(format!("response is not JSON ({e})")))?;
        let mut p = StreamParser::with_limit(max_output);
        p.chunk(&v, on_delta)?;
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
        let r = p.feed(input.as_bytes(), &mut |d: Delta<'_>| if let Delta::Text(t) = d { out.push_str(t) });
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
            p.feed(b, &mut |d: Delta<'_>| if let Delta::Text(t) = d { out.push_str(t) }).unwrap();
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
        p.feed(s.as_bytes(), &mut |d: Delta<'_>| seen.push(format!("{d:?}"))).unwrap();
        assert_eq!(
            seen,
            ["Reasoning(\"The user wants \")", "Reasoning(\"weather.\")", "Text(\"Let me look.\")", "ToolCalls"]
        );
        let r = p.finish().unwrap();
        assert_eq!(r.content, "Let me look.", "reasoning is not part of the message");
        assert_eq!(r.tool_calls[0].function.arguments, "{}");
    }
}
