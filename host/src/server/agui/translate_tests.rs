//! The translation, event by event: order, closing, ids, corrections.

use super::*;

fn ev(seq: u64, v: Value) -> Value {
    let mut v = v;
    v["seq"] = seq.into();
    v["timestamp"] = "2026-12-02T06:38:40.611Z".into();
    v
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
    for (seq, e) in [
        json!({"event": "agent.thinking", "content": "", "metadata": {"step": 1, "delta": false}}),
        json!({"event": "agent.partial_answer", "content": "Let me look.", "metadata": {"step": 1}}),
        json!({"event": "agent.tool_call", "step_id": "s1", "content": "", "metadata": {"tool": "get_weather", "args": {"city": "Paris"}}}),
        json!({"event": "agent.tool_result", "step_id": "s1", "content": "sunny", "metadata": {"tool": "get_weather"}}),
        json!({"event": "agent.thinking", "content": "", "metadata": {"step": 2, "delta": false}}),
        json!({"event": "agent.partial_answer", "content": "Sunny.", "metadata": {"step": 2}}),
        json!({"event": "agent.final_answer", "content": "Sunny.", "metadata": {}}),
        json!({"event": "agent.ready"}),
    ]
    .into_iter()
    .enumerate()
    {
        all.extend(r.on(&ev(seq as u64 + 2, e)));
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
    assert!(r.ended.is_some());
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
    for (seq, e) in [
        json!({"event": "agent.partial_answer", "content": "maybe", "metadata": {"step": 1}}),
        json!({"event": "agent.partial_answer", "content": "", "metadata": {"step": 1, "reset": true}}),
        json!({"event": "agent.final_answer", "content": "no", "metadata": {}}),
        json!({"event": "agent.ready"}),
    ]
    .into_iter()
    .enumerate()
    {
        all.extend(r.on(&ev(seq as u64 + 1, e)));
    }
    let snap = all
        .iter()
        .find(|f| f.event["type"] == "MESSAGES_SNAPSHOT")
        .unwrap();
    let msgs = snap.event["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[1]["content"], "no");
}
