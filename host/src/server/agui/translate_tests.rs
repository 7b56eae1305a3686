//! The translation, event by event: order, closing, ids, corrections.

use super::*;
use crate::server::protocol::{
    AnswerMeta, FinalMeta, ServerEvent, ThinkingMeta, ToolCallMeta, ToolResultMeta,
};

// The session's events as the engine encodes them (the translation reads what it sends).

/// `event` as the engine sends it for session `s`, numbered `seq`.
pub(super) fn encoded(seq: u64, event: &ServerEvent) -> String {
    event.frame_in_session("s", seq).to_string()
}

/// The same, read.
pub(super) fn framed(seq: u64, event: &ServerEvent) -> Value {
    serde_json::from_str(&encoded(seq, event)).unwrap()
}

fn step(step: u32) -> ServerEvent {
    let metadata = ThinkingMeta {
        step,
        delta: false,
        agent: Some("weather-assistant".into()),
        parent_step_id: None,
    };
    ServerEvent::Thinking {
        content: String::new(),
        metadata,
    }
}

/// A piece of the answer (`reset`: the answer so far withdrawn).
pub(super) fn piece(content: &str, reset: bool) -> ServerEvent {
    let metadata = AnswerMeta { step: 1, reset };
    ServerEvent::PartialAnswer {
        content: content.into(),
        metadata,
    }
}

fn call(step_id: &str, tool: &str, args: Value) -> ServerEvent {
    let metadata = ToolCallMeta {
        tool: tool.into(),
        args,
        status: "running",
        step: 1,
        client: false,
        agent: "weather-assistant".into(),
        parent_step_id: None,
    };
    ServerEvent::ToolCall {
        step_id: step_id.into(),
        content: format!("Calling tool {tool}"),
        metadata,
    }
}

fn result(step_id: &str, tool: &str, content: &str) -> ServerEvent {
    let metadata = ToolResultMeta {
        tool: tool.into(),
        status: "success",
        step: 1,
        agent: "weather-assistant".into(),
        parent_step_id: None,
    };
    ServerEvent::ToolResult {
        step_id: step_id.into(),
        content: content.into(),
        metadata,
    }
}

pub(super) fn answer(content: &str) -> ServerEvent {
    let metadata = FinalMeta {
        steps: 1,
        reason: "answer",
        usage: Default::default(),
    };
    ServerEvent::FinalAnswer {
        content: content.into(),
        metadata,
    }
}

fn types(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.event["type"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn ids_read_back() {
    assert_eq!(
        FrameId::parse("12"),
        Some(FrameId {
            seq: 12,
            part: LAST
        })
    );
    assert_eq!(FrameId::parse("12.3").unwrap().to_string(), "12.3");
    assert!(FrameId::parse("12.3") < FrameId::parse("12"));
    assert!(FrameId::parse("x").is_none());
}

#[test]
fn a_turn_with_a_call_is_closed_in_order() {
    let mut r = Run::new("t", "r", vec![], 300);
    let mut all = Vec::new();
    let events = [
        step(1),
        piece("Let me look.", false),
        call("s1", "get_weather", json!({"city": "Paris"})),
        result("s1", "get_weather", "sunny"),
        step(2),
        piece("Sunny.", false),
        answer("Sunny."),
        ServerEvent::Ready,
    ];
    for (seq, e) in events.iter().enumerate() {
        all.extend(r.on(&framed(seq as u64 + 2, e)));
    }
    assert_eq!(
        types(&all),
        [
            "STEP_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT",
            "STEP_FINISHED",
            "STEP_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "STEP_FINISHED",
            "RUN_FINISHED"
        ]
    );
    let last = all.last().unwrap();
    assert_eq!(last.event["result"], "Sunny.");
    assert_eq!(last.id.to_string(), "9");
    assert_eq!(all[3].id.to_string(), "4.0");
    assert_eq!(all[4].event["parentMessageId"], all[1].event["messageId"]);
    assert!(r.ended);
}

#[test]
fn a_withdrawn_preamble_is_corrected_by_a_snapshot() {
    let mut r = Run::new(
        "t",
        "r",
        vec![json!({"id": "u", "role": "user", "content": "q"})],
        300,
    );
    let mut all = Vec::new();
    let events = [
        piece("maybe", false),
        piece("", true),
        answer("no"),
        ServerEvent::Ready,
    ];
    for (seq, e) in events.iter().enumerate() {
        all.extend(r.on(&framed(seq as u64 + 1, e)));
    }
    let snap = all
        .iter()
        .find(|f| f.event["type"] == "MESSAGES_SNAPSHOT")
        .unwrap();
    let msgs = snap.event["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[1]["content"], "no");
}
