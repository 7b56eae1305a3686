//! Our session events as AG-UI events, for one AG-UI run. A pure function of the events it is
//! fed (so that a reconnect, fed the same events again, makes the same frames with the same
//! ids): every frame's `id` is the `seq` of the session event it comes from — `seq.k` for all
//! but the last of several frames one event makes — and every message, step and tool call it
//! opens is closed before the run's end (RUN_FINISHED or RUN_ERROR), as AG-UI's verifier asks.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::time::{unix_millis, Timestamp};

pub(crate) use super::frame::{Frame, FrameId, LAST};

mod piece;

/// The translation of one run.
pub(crate) struct Run {
    thread_id: String,
    run_id: String,
    /// The client's messages (the start of every MESSAGES_SNAPSHOT).
    input: Vec<Value>,
    step: Option<u32>,
    reasoning: Option<String>,
    text: Option<String>,
    /// The assistant message a tool call of this step belongs to.
    parent: Option<String>,
    /// The messages this run made, as AG-UI messages (for MESSAGES_SNAPSHOT).
    made: Vec<Value>,
    /// Answer pieces the fast path streamed and not yet added to the open text message in
    /// `made` (added before anything else reads or changes the run: [`Run::settle`]).
    unsettled: String,
    calls: HashSet<String>,
    /// Calls begun before this run (waiting for approval when it started).
    earlier: HashSet<String>,
    /// Calls the client runs (frontend tools): their results are the client's own message.
    client_calls: HashSet<String>,
    /// A preamble was withdrawn: the client's view needs a MESSAGES_SNAPSHOT before the end.
    withdrawn: bool,
    answer: Option<String>,
    usage: Option<Value>,
    /// Approval timeout, for `expiresAt`.
    approval_secs: u64,
    /// RUN_FINISHED (with any outcome: success, interrupt, cancelled) or RUN_ERROR went out.
    pub ended: bool,
}

impl Run {
    pub(crate) fn new(thread_id: &str, run_id: &str, input: Vec<Value>, approval_secs: u64) -> Run {
        Run {
            thread_id: thread_id.to_owned(),
            run_id: run_id.to_owned(),
            input,
            step: None,
            reasoning: None,
            text: None,
            parent: None,
            made: Vec::new(),
            unsettled: String::new(),
            calls: HashSet::new(),
            earlier: HashSet::new(),
            client_calls: HashSet::new(),
            withdrawn: false,
            answer: None,
            usage: None,
            approval_secs,
            ended: false,
        }
    }

    /// The translation of the run after this one (on the same thread and request).
    pub(crate) fn next(&self) -> Run {
        let mut r = Run::new(
            &self.thread_id,
            &self.run_id,
            self.input.clone(),
            self.approval_secs,
        );
        r.earlier = self.calls.clone();
        r.client_calls = self.client_calls.clone();
        r
    }

    /// Calls that waited for approval when the run started (from `agent.session_resumed`).
    /// Frontend tool calls the client answers with this run.
    pub(crate) fn answered_by_client<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str> + Clone,
    ) {
        self.begun_earlier(ids.clone());
        self.client_calls.extend(ids.into_iter().map(str::to_owned));
    }

    pub(crate) fn begun_earlier<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        self.earlier.extend(ids.into_iter().map(str::to_owned));
    }

    /// RUN_STARTED, as frame `at` (the seq the run starts after).
    pub(crate) fn start(&self, at: u64, parent_run_id: Option<&str>) -> Frame {
        let mut e =
            json!({"type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id});
        if let Some(p) = parent_run_id {
            e["parentRunId"] = p.into();
        }
        e["timestamp"] = unix_millis().into();
        Frame {
            id: FrameId {
                seq: at,
                part: LAST,
            },
            event: e,
        }
    }

    /// A run refused before it began: RUN_ERROR alone (the verifier accepts it first).
    pub(crate) fn refused(message: &str, code: &str) -> Value {
        json!({"type": "RUN_ERROR", "message": message, "code": code, "timestamp": unix_millis()})
    }

    /// The end of a stream another request took over: what is open closed, then RUN_FINISHED
    /// (cancelled: this stream will not see the run go on).
    pub(crate) fn cut(&mut self) -> Vec<Value> {
        self.settle();
        let mut out = Vec::new();
        if !self.ended {
            self.close_open(&mut out);
            out.push(self.finished(json!({"type": "cancelled"}), None));
        }
        let ts = unix_millis();
        for e in &mut out {
            e["timestamp"] = ts.into();
        }
        out
    }

    /// The frames one session event makes (none once the run has ended).
    pub(crate) fn on(&mut self, ev: &Value) -> Vec<Frame> {
        self.settle();
        let Some(seq) = ev["seq"].as_u64() else {
            return Vec::new();
        };
        if self.ended {
            return Vec::new();
        }
        let ts = ev["timestamp"]
            .as_str()
            .and_then(Timestamp::parse_millis)
            .unwrap_or_else(unix_millis);
        let mut out = Vec::new();
        self.map(ev, seq, &mut out);
        let n = out.len();
        out.into_iter()
            .enumerate()
            .map(|(i, mut event)| {
                event["timestamp"] = ts.into();
                let part = if i + 1 == n { LAST } else { i as u32 };
                Frame {
                    id: FrameId { seq, part },
                    event,
                }
            })
            .collect()
    }

    fn map(&mut self, ev: &Value, seq: u64, out: &mut Vec<Value>) {
        let text = ev["content"].as_str().unwrap_or("");
        let meta = &ev["metadata"];
        match ev["event"].as_str().unwrap_or("") {
            "agent.thinking" if meta["delta"] == true => self.reasoned(text, seq, out),
            "agent.thinking" => {
                self.close_open(out);
                let step = meta["step"].as_u64().unwrap_or(0) as u32;
                out.push(json!({"type": "STEP_STARTED", "stepName": format!("step {step}")}));
                self.step = Some(step);
                self.parent = None;
            }
            "agent.partial_answer" if meta["reset"] == true => {
                // A preamble withdrawn: close it; the snapshot before the end corrects it.
                if let Some(id) = self.text.take() {
                    out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": id}));
                    self.set_content(&id, "");
                    self.withdrawn = true;
                }
            }
            "agent.partial_answer" if !text.is_empty() => {
                self.close_reasoning(out);
                let id = self.open_text(seq, out);
                self.append(&id, text);
                out.push(json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": text}));
            }
            "agent.tool_call" => {
                let id = ev["step_id"].as_str().unwrap_or("").to_owned();
                let tool = meta["tool"].as_str().unwrap_or("").to_owned();
                self.call(&id, &tool, &meta["args"], out);
                if meta["client"] == true {
                    self.client_calls.insert(id.clone());
                    // The client runs it: the run ends here; the next brings the result.
                    self.close_open(out);
                    let outcome = json!({"type": "success", "pendingToolCallIds": [id]});
                    out.push(self.finished(outcome, None));
                    self.ended = true;
                }
            }
            "agent.tool_result" => self.result(ev, seq, out),
            "agent.tool_approval_required" => self.interrupt(ev, out),
            "agent.final_answer" => self.answered(text, seq, out),
            "agent.usage" => self.usage = Some(token_usage(&ev["run"])),
            "agent.error" => {
                self.close_open(out);
                let mut e =
                    json!({"type": "RUN_ERROR", "message": ev["error"], "code": ev["code"]});
                if let Some(u) = self.usage.take() {
                    e["usage"] = json!([u]);
                }
                out.push(e);
                self.ended = true;
            }
            "agent.interrupted" => {
                self.close_open(out);
                out.push(self.finished(json!({"type": "cancelled"}), None));
            }
            "agent.ready" => {
                self.close_open(out);
                self.snapshot_if_withdrawn(out);
                let outcome = json!({"type": "success"});
                let result = self.answer.clone().map(Value::String);
                out.push(self.finished(outcome, result));
            }
            "agent.message_queued" => out.push(custom(
                "message_queued",
                json!({"position": ev["position"]}),
            )),
            "agent.session_created"
            | "agent.session_resumed"
            | "agent.session_closed"
            | "agent.history"
            | "agent.partial_answer" => {}
            name => {
                // The plugin's own events and our notices: CUSTOM, named `myagent.<event>`.
                let mut value = ev.clone();
                if let Some(o) = value.as_object_mut() {
                    for k in ["session_id", "seq", "timestamp"] {
                        o.remove(k);
                    }
                }
                out.push(custom(name, value));
            }
        }
    }

    /// A piece of the agent's reasoning (the first opens the reasoning message).
    fn reasoned(&mut self, text: &str, seq: u64, out: &mut Vec<Value>) {
        self.close_text(out);
        if text.is_empty() {
            return;
        }
        let id = match &self.reasoning {
            Some(id) => id.clone(),
            None => {
                let id = format!("reasoning-{seq}");
                out.push(json!({"type": "REASONING_START", "messageId": id}));
                out.push(json!({"type": "REASONING_MESSAGE_START", "messageId": id, "role": "reasoning"}));
                self.made
                    .push(json!({"id": id, "role": "reasoning", "content": ""}));
                self.reasoning = Some(id.clone());
                id
            }
        };
        self.append(&id, text);
        out.push(json!({"type": "REASONING_MESSAGE_CONTENT", "messageId": id, "delta": text}));
    }

    /// A call's result. A call begun in the run an approval interrupted is the client's
    /// already (sending it again would double its arguments there): only its result comes.
    fn result(&mut self, ev: &Value, seq: u64, out: &mut Vec<Value>) {
        let id = ev["step_id"].as_str().unwrap_or("").to_owned();
        if self.client_calls.contains(&id) {
            return;
        }
        if !self.calls.contains(&id) && !self.earlier.remove(&id) {
            let tool = ev["metadata"]["tool"].as_str().unwrap_or("").to_owned();
            self.call(&id, &tool, &json!({}), out);
        }
        let text = ev["content"].as_str().unwrap_or("");
        let mid = format!("result-{seq}");
        out.push(json!({"type": "TOOL_CALL_RESULT", "messageId": mid, "toolCallId": id, "content": text, "role": "tool"}));
        self.made
            .push(json!({"id": mid, "role": "tool", "toolCallId": id, "content": text}));
    }

    /// A call: START, ARGS, END. Its parent is the text the step said before it, if any; a
    /// call with none is its own assistant message (id = the call's, as AG-UI's client makes).
    fn call(&mut self, id: &str, tool: &str, args: &Value, out: &mut Vec<Value>) {
        self.close_reasoning(out);
        if let Some(t) = self.text.take() {
            out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": t}));
            self.parent = Some(t);
        }
        let args = args.to_string();
        let mut start = json!({"type": "TOOL_CALL_START", "toolCallId": id, "toolCallName": tool});
        let holder = match &self.parent {
            Some(p) => {
                start["parentMessageId"] = p.as_str().into();
                p.clone()
            }
            None => {
                self.made.push(json!({"id": id, "role": "assistant"}));
                id.to_owned()
            }
        };
        out.push(start);
        out.push(json!({"type": "TOOL_CALL_ARGS", "toolCallId": id, "delta": args}));
        out.push(json!({"type": "TOOL_CALL_END", "toolCallId": id}));
        self.calls.insert(id.to_owned());
        if let Some(m) = self.made.iter_mut().find(|m| m["id"] == holder.as_str()) {
            let call = json!({"id": id, "type": "function", "function": {"name": tool, "arguments": args}});
            match m["toolCalls"].as_array_mut() {
                Some(calls) => calls.push(call),
                None => m["toolCalls"] = json!([call]),
            }
        }
    }

    /// A call waits for a person: the run ends with it as an interrupt.
    fn interrupt(&mut self, ev: &Value, out: &mut Vec<Value>) {
        self.close_open(out);
        out.push(json!({"type": "MESSAGES_SNAPSHOT", "messages": self.snapshot()}));
        let id = ev["step_id"].as_str().unwrap_or("");
        let expires = Timestamp::at(std::time::Duration::from_millis(
            unix_millis() + self.approval_secs * 1000,
        ));
        let interrupt = json!({
            "id": id,
            "reason": "tool_call",
            "toolCallId": id,
            "message": ev["content"],
            "responseSchema": {
                "type": "object",
                "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
                "required": ["approved"],
            },
            "expiresAt": expires.as_str(),
            "metadata": {"tool": ev["metadata"]["tool"], "args": ev["metadata"]["args"]},
        });
        out.push(self.finished(
            json!({"type": "interrupt", "interrupts": [interrupt]}),
            None,
        ));
        self.ended = true;
    }

    fn answered(&mut self, answer: &str, seq: u64, out: &mut Vec<Value>) {
        self.close_reasoning(out);
        let streamed = self
            .text
            .as_ref()
            .and_then(|id| self.made.iter().find(|m| m["id"] == id.as_str()))
            .and_then(|m| m["content"].as_str())
            .map(str::to_owned);
        match streamed {
            Some(s) if s == answer => {}
            Some(s) if answer.starts_with(&s) && !s.is_empty() => {
                let id = self.text.clone().unwrap_or_default();
                self.append(&id, &answer[s.len()..]);
                out.push(json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": &answer[s.len()..]}));
            }
            _ if answer.is_empty() => {}
            other => {
                // Not streamed (or streamed otherwise): the answer as one message.
                if other.is_some() {
                    self.close_text(out);
                    self.withdrawn = true;
                }
                let id = self.open_text(seq, out);
                self.append(&id, answer);
                out.push(json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": answer}));
            }
        }
        self.close_text(out);
        self.answer = Some(answer.to_owned());
    }

    fn finished(&mut self, outcome: Value, result: Option<Value>) -> Value {
        let mut e = json!({"type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.run_id, "outcome": outcome});
        if let Some(r) = result {
            e["result"] = r;
        }
        if let Some(u) = self.usage.take() {
            e["usage"] = json!([u]);
        }
        self.ended = true;
        e
    }

    fn snapshot(&self) -> Vec<Value> {
        let mut all = self.input.clone();
        all.extend(
            self.made
                .iter()
                .filter(|m| {
                    // Withdrawn text with no calls is no message at all.
                    !(m["role"] == "assistant"
                        && m["content"] == ""
                        && m.get("toolCalls").is_none())
                })
                .cloned(),
        );
        all
    }

    fn snapshot_if_withdrawn(&mut self, out: &mut Vec<Value>) {
        if self.withdrawn {
            out.push(json!({"type": "MESSAGES_SNAPSHOT", "messages": self.snapshot()}));
        }
    }

    fn open_text(&mut self, seq: u64, out: &mut Vec<Value>) -> String {
        if let Some(id) = &self.text {
            return id.clone();
        }
        let id = format!("answer-{seq}");
        out.push(json!({"type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant"}));
        self.made
            .push(json!({"id": id, "role": "assistant", "content": ""}));
        self.text = Some(id.clone());
        id
    }

    /// Adds the fast path's pieces to the open text message.
    fn settle(&mut self) {
        if let (Some(id), false) = (&self.text, self.unsettled.is_empty()) {
            append_to(&mut self.made, id, &self.unsettled);
        }
        self.unsettled.clear();
    }

    fn append(&mut self, id: &str, delta: &str) {
        append_to(&mut self.made, id, delta);
    }

    fn set_content(&mut self, id: &str, content: &str) {
        if let Some(m) = self.made.iter_mut().find(|m| m["id"] == id) {
            m["content"] = content.into();
        }
    }

    fn close_text(&mut self, out: &mut Vec<Value>) {
        if let Some(id) = self.text.take() {
            out.push(json!({"type": "TEXT_MESSAGE_END", "messageId": id}));
        }
    }

    fn close_reasoning(&mut self, out: &mut Vec<Value>) {
        if let Some(id) = self.reasoning.take() {
            out.push(json!({"type": "REASONING_MESSAGE_END", "messageId": id}));
            out.push(json!({"type": "REASONING_END", "messageId": id}));
        }
    }

    /// Closes whatever is open: reasoning, text, the step.
    fn close_open(&mut self, out: &mut Vec<Value>) {
        self.close_reasoning(out);
        self.close_text(out);
        if let Some(step) = self.step.take() {
            out.push(json!({"type": "STEP_FINISHED", "stepName": format!("step {step}")}));
        }
    }
}

fn custom(name: &str, value: Value) -> Value {
    let name = name.strip_prefix("agent.").unwrap_or(name);
    json!({"type": "CUSTOM", "name": format!("myagent.{name}"), "value": value})
}

/// Our run usage as AG-UI's TokenUsage.
fn token_usage(u: &Value) -> Value {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    json!({
        "inputTokens": n("input_tokens"),
        "outputTokens": n("output_tokens"),
        "totalTokens": n("input_tokens") + n("output_tokens"),
        "reasoningTokens": n("reasoning_tokens"),
        "cachedInputTokens": n("cached_input_tokens"),
    })
}

/// Appends `delta` to the content of message `id` among `made` (the newest, in practice).
fn append_to(made: &mut [Value], id: &str, delta: &str) {
    if let Some(m) = made.iter_mut().rev().find(|m| m["id"] == id) {
        match &mut m["content"] {
            Value::String(s) => s.push_str(delta),
            other => *other = delta.into(),
        }
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
