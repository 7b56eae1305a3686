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
//!
//! **Architecture Invariant:** the answer fragments a run sends after its last reset add up to
//! the run's final answer ([`finish_answer`] sends what is missing).

use super::{AgentEvent, EventSink};
use crate::llm::Delta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not yet known; the text is held.
    Holding,
    /// Streaming as the answer.
    Answer,
    /// Streaming as reasoning (tool calls follow).
    Reasoning,
}

/// Classifies one model call's stream and sends it to the sink.
pub(super) struct StepStream<'a> {
    sink: &'a dyn EventSink,
    step: u32,
    holdback: usize,
    mode: Mode,
    /// The message text so far (held, or sent as the answer).
    text: String,
}

impl<'a> StepStream<'a> {
    pub fn new(sink: &'a dyn EventSink, step: u32, holdback: usize) -> Self {
        StepStream {
            sink,
            step,
            holdback,
            mode: Mode::Holding,
            text: String::new(),
        }
    }

    pub fn on(&mut self, delta: Delta<'_>) {
        match delta {
            Delta::Reasoning(t) => self.reasoning(t.to_owned()),
            Delta::Text(t) => match self.mode {
                Mode::Reasoning => self.reasoning(t.to_owned()),
                Mode::Answer => {
                    self.text.push_str(t);
                    self.answer(t.to_owned());
                }
                Mode::Holding => {
                    self.text.push_str(t);
                    if self.text.chars().count() >= self.holdback.max(1) || self.holdback == 0 {
                        self.mode = Mode::Answer;
                        self.answer(self.text.clone());
                    }
                }
            },
            Delta::ToolCalls => self.become_reasoning(),
        }
    }

    /// The message ended; `tool_calls` says whether it asked for any. Returns the text sent as
    /// the answer (empty when it was reasoning).
    pub fn finish(mut self, tool_calls: bool) -> String {
        if tool_calls {
            self.become_reasoning();
            return String::new();
        }
        if self.mode == Mode::Holding && !self.text.is_empty() {
            self.answer(self.text.clone());
        }
        if self.mode == Mode::Reasoning {
            return String::new();
        }
        self.text
    }

    /// Tool calls follow: what was held (or streamed as the answer) is reasoning.
    fn become_reasoning(&mut self) {
        let previous = std::mem::replace(&mut self.mode, Mode::Reasoning);
        if previous == Mode::Answer {
            self.sink.emit(AgentEvent::AnswerReset { step: self.step });
        }
        if previous != Mode::Reasoning && !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            self.reasoning(text);
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

/// At a run's end: makes the answer fragments sent (`streamed`, since the last reset) add up to
/// `answer` — the rest of it, or a reset and the whole of it.
pub(super) fn finish_answer(sink: &dyn EventSink, step: u32, streamed: &str, answer: &str) {
    if streamed == answer {
        return;
    }
    let rest = match answer.strip_prefix(streamed) {
        Some(rest) => rest,
        None => {
            sink.emit(AgentEvent::AnswerReset { step });
            answer
        }
    };
    if !rest.is_empty() {
        sink.emit(AgentEvent::Answer {
            step,
            text: rest.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<String>>);
    impl EventSink for Rec {
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
        assert_eq!(s.finish(true), "");
        assert_eq!(rec.take(), ["R:Let me look.", "R: More."]);
    }

    #[test]
    fn a_short_answer_goes_out_when_the_message_ends_a_long_one_streams() {
        let rec = Rec::default();
        let mut s = StepStream::new(&rec, 1, 10);
        s.on(Delta::Text("Sunny."));
        assert_eq!(s.finish(false), "Sunny.");
        assert_eq!(rec.take(), ["A:Sunny."]);

        let mut s = StepStream::new(&rec, 2, 10);
        for t in ["Paris is ", "sunny ", "today."] {
            s.on(Delta::Text(t));
        }
        assert_eq!(s.finish(false), "Paris is sunny today.");
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
        assert_eq!(s.finish(true), "");
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
        s.finish(false);
    }

    #[test]
    fn the_answer_fragments_always_add_up_to_the_final_answer() {
        let rec = Rec::default();
        finish_answer(&rec, 1, "Hello", "Hello");
        assert!(rec.take().is_empty());
        finish_answer(&rec, 1, "", "Done: sunny");
        assert_eq!(rec.take(), ["A:Done: sunny"]);
        finish_answer(&rec, 1, "Hel", "Hello");
        assert_eq!(rec.take(), ["A:lo"]);
        finish_answer(&rec, 1, "Other", "Hello");
        assert_eq!(rec.take(), ["reset", "A:Hello"]);
    }
}
