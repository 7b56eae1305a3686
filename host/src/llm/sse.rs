//! Incremental parser for the OpenAI streaming format: SSE `data:` lines carrying
//! `chat.completion.chunk` objects, ending with `data: [DONE]`.
//!
//! Tool-call deltas are keyed by `index` (the first carries id and name, later ones only
//! argument fragments split anywhere); usage arrives in a last chunk with `choices: []`; an error
//! object can arrive mid-stream. Malformed input is an error value, never a panic.

use super::wire::{plain_text, thinking_text, Chunk, ContentIn, MessageIn, ToolCallIn};
use super::{ChatResponse, Delta, FunctionCall, LlmError, OnDelta, ToolCall, Usage};

/// The longest stream line accepted.
const MAX_LINE: usize = 4 << 20;

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
        while let Some(i) = memchr::memchr(b'\n', rest) {
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
        // The common token line is read by hand; anything else by the full reader.
        if let Some(text) = plain_text(data) {
            return text.map_or(Ok(()), |t| self.text(t, on_delta));
        }
        self.full(data, on_delta)
    }

    /// A chunk read by the full reader.
    fn full(&mut self, data: &str, on_delta: &mut OnDelta<'_>) -> Result<(), LlmError> {
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
mod tests;
