//! Which of a model step's text is reasoning and which is the answer.
//!
//! A model's message text is the answer only if no tool calls follow it; text before tool calls
//! ("Let me look that up…") is the agent reasoning. The stream does not say which until a tool
//! call arrives or the message ends, so [`StepStream`] holds the start of each message back:
//!
//! - a tool call arrives while the text is held → the text goes out as reasoning, and so does
//!   any later text of the message;
//! - the message ends while held → it goes out as the answer;
//! - the held text reaches the hold-back limit (`--answer-holdback`, characters) → it is taken
//!   to be the answer and streams on as such. Should a tool call still follow (a preamble longer
//!   than the limit), the streamed answer is withdrawn with an [`AgentEvent::AnswerReset`] and
//!   the text is sent again as reasoning.
//!
//! Reasoning the model streams separately (`reasoning_content`) always goes out as reasoning.
//! Only the held start of a message is copied; the message itself is the model's response, so
//! what is re-sent after a withdrawal comes from there ([`StepStream::finish`]).
//!
//! **Architecture Invariant:** the answer fragments a run sends after its last reset add up to
//! the run's final answer (a run that ends by `terminate` or `max_steps` sends its answer as one
//! fragment: see `run_agent`).

use super::{AgentEvent, RunContext};
use crate::llm::Delta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not yet known; the text is held.
    Holding,
    /// Streaming as the answer.
    Answer,
    /// Streamed as the answer, then tool calls came: withdrawn; re-sent as reasoning at the end.
    Withdrawn,
    /// Streaming as reasoning (tool calls follow).
    Reasoning,
}

/// Where a step's stream goes: a run's events (its [`RunContext`]).
pub(super) trait Emit: Sync {
    fn emit(&self, event: AgentEvent);
    /// The model paused: streamed pieces emitted so far may go out ([`EventSink::flush`]).
    ///
    /// [`EventSink::flush`]: super::EventSink::flush
    fn flush(&self);
}

impl Emit for RunContext<'_> {
    fn emit(&self, event: AgentEvent) {
        RunContext::emit(self, event)
    }
    fn flush(&self) {
        self.sink.flush()
    }
}

/// Classifies one model call's stream and sends it to the run's events.
pub(super) struct StepStream<'a> {
    sink: &'a dyn Emit,
    step: u32,
    holdback: usize,
    mode: Mode,
    /// The start of the message while it is held (at most `holdback` characters and a delta).
    held: String,
}

impl<'a> StepStream<'a> {
    pub(super) fn new(sink: &'a dyn Emit, step: u32, holdback: usize) -> Self {
        StepStream {
            sink,
            step,
            holdback,
            mode: Mode::Holding,
            held: String::new(),
        }
    }

    pub(super) fn on(&mut self, delta: Delta<'_>) {
        match (delta, self.mode) {
            (Delta::Reasoning(t), _) | (Delta::Text(t), Mode::Reasoning) => {
                self.reasoning(t.to_owned())
            }
            (Delta::Text(t), Mode::Answer) => self.answer(t.to_owned()),
            (Delta::Text(_), Mode::Withdrawn) => {} // re-sent whole at the end
            (Delta::Text(t), Mode::Holding) => {
                self.held.push_str(t);
                if self.held.chars().count() >= self.holdback {
                    self.mode = Mode::Answer;
                    let text = std::mem::take(&mut self.held);
                    self.answer(text);
                }
            }
            (Delta::ToolCalls, _) => self.tool_calls_follow(),
            (Delta::Pause, _) => self.sink.flush(),
        }
    }

    /// The message ended: `content` is all of its text, `tool_calls` whether it asked for any.
    pub(super) fn finish(mut self, content: &str, tool_calls: bool) {
        if tool_calls {
            self.tool_calls_follow();
        }
        match self.mode {
            Mode::Holding if !self.held.is_empty() => {
                let text = std::mem::take(&mut self.held);
                self.answer(text);
            }
            Mode::Withdrawn if tool_calls => self.reasoning(content.to_owned()),
            // Text that went out as reasoning or was withdrawn, yet no call came: it is the answer.
            Mode::Withdrawn | Mode::Reasoning if !tool_calls && !content.is_empty() => {
                self.answer(content.to_owned())
            }
            _ => {}
        }
        self.sink.flush();
    }

    /// The call is given up (it will be made again): an answer it streamed is withdrawn.
    pub(super) fn abandon(self) {
        if self.mode == Mode::Answer {
            self.sink.emit(AgentEvent::AnswerReset { step: self.step });
        }
    }

    /// Tool calls follow: what is held is reasoning; what streamed as the answer is withdrawn.
    fn tool_calls_follow(&mut self) {
        match self.mode {
            Mode::Holding => {
                self.mode = Mode::Reasoning;
                if !self.held.is_empty() {
                    let text = std::mem::take(&mut self.held);
                    self.reasoning(text);
                }
            }
            Mode::Answer => {
                self.mode = Mode::Withdrawn;
                self.sink.emit(AgentEvent::AnswerReset { step: self.step });
            }
            Mode::Withdrawn | Mode::Reasoning => {}
        }
    }

    fn reasoning(&self, text: String) {
        self.sink.emit(AgentEvent::Reasoning {
            step: self.step,
            text,
        });
    }

    fn answer(&self, text: String) {
        self.sink.emit(AgentEvent::Answer {
            step: self.step,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<String>>);
    impl Emit for Rec {
        fn flush(&self) {}
        fn emit(&self, e: AgentEvent) {
            let s = match e {
                AgentEvent::Reasoning { text, .. } => format!("R:{text}"),
                AgentEvent::Answer { text, .. } => format!("A:{text}"),
                AgentEvent::AnswerReset { .. } => "reset".into(),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(s);
        }
    }
    impl Rec {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    #[test]
    fn text_before_tool_calls_is_reasoning() {
        let rec = Rec::default();
        let mut s = StepStream::new(&rec, 1, 100);
        s.on(Delta::Text("Let me "));
        s.on(Delta::Text("look."));
        assert!(rec.take().is_empty(), "held until known");
        s.on(Delta::ToolCalls);
        s.on(Delta::Text(" More."));
        s.finish("Let me look. More.", true);
        assert_eq!(rec.take(), ["R:Let me look.", "R: More."]);
    }

    #[test]
    fn a_short_answer_goes_out_when_the_message_ends_a_long_one_streams() {
        let rec = Rec::default();
        let mut s = StepStream::new(&rec, 1, 10);
        s.on(Delta::Text("Sunny."));
        s.finish("Sunny.", false);
        assert_eq!(rec.take(), ["A:Sunny."]);

        let mut s = StepStream::new(&rec, 2, 10);
        for t in ["Paris is ", "sunny ", "today."] {
            s.on(Delta::Text(t));
        }
        s.finish("Paris is sunny today.", false);
        assert_eq!(rec.take(), ["A:Paris is sunny ", "A:today."]);
    }

    #[test]
    fn a_long_preamble_is_withdrawn_when_tool_calls_follow() {
        let rec = Rec::default();
        let mut s = StepStream::new(&rec, 1, 5);
        s.on(Delta::Reasoning("think"));
        s.on(Delta::Text("I will check "));
        s.on(Delta::Text("the weather."));
        s.on(Delta::ToolCalls);
        s.finish("I will check the weather.", true);
        assert_eq!(
            rec.take(),
            [
                "R:think",
                "A:I will check ",
                "A:the weather.",
                "reset",
                "R:I will check the weather."
            ]
        );
        // Hold-back 0 streams at once.
        let mut s = StepStream::new(&rec, 1, 0);
        s.on(Delta::Text("a"));
        assert_eq!(rec.take(), ["A:a"]);
        s.finish("a", false);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn text_sent_as_reasoning_without_a_call_after_all_is_the_answer() {
        // A stream that announced tool calls but delivered none: the answer pieces still add
        // up to the response.
        let rec = Rec::default();
        let mut s = StepStream::new(&rec, 1, 3);
        s.on(Delta::Text("Hello"));
        s.on(Delta::ToolCalls);
        s.finish("Hello", false);
        assert_eq!(rec.take(), ["A:Hello", "reset", "A:Hello"]);
    }
}
