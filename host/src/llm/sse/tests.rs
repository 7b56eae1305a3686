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
        Delta::ToolCalls | Delta::Pause => {}
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

mod plain;
