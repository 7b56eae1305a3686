//! Real providers' stream shapes, end to end: the fake model sends a fixture stream byte for byte
//! (`tests/fixtures/providers/NAME.sse`, each written here after one provider's shape and naming
//! it), a real host runs the turn, and a WebSocket client checks what users see — the tool call's
//! name, arguments and id; reasoning as `agent.thinking` deltas and never in the answer or the
//! memory; answer pieces adding up to the final answer; usage counted — and the fake model's
//! record shows the request the host sent next.

use myagent_tests::{plugin_lib, workspace_root, Client, FakeLlm, Host};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    let path = workspace_root().join(format!("tests/fixtures/providers/{name}.sse"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn raw(name: &str) -> Value {
    json!({"raw_sse": fixture(name)})
}

async fn setup() -> (FakeLlm, Host, Client, String) {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let (c, sid, _) = Client::with_session(&host.ws_url()).await;
    (llm, host, c, sid)
}

/// What one turn showed the client.
struct Turn {
    thinking: String,
    partials: String,
    final_answer: Value,
    calls: Vec<Value>,
    results: Vec<Value>,
}

/// Asks, and gathers the turn's events up to `agent.ready`.
async fn turn(c: &mut Client, sid: &str, text: &str) -> Turn {
    let from = c.seen.len();
    c.ask(sid, text).await;
    c.until("agent.ready").await;
    let events = &c.seen[from..];
    let of = |name: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    };
    let mut partials = String::new();
    for e in of("agent.partial_answer") {
        if e["metadata"]["reset"] == true {
            partials.clear();
        } else {
            partials.push_str(e["content"].as_str().unwrap());
        }
    }
    Turn {
        thinking: of("agent.thinking")
            .iter()
            .filter(|e| e["metadata"]["delta"] == true)
            .map(|e| e["content"].as_str().unwrap().to_owned())
            .collect(),
        partials,
        final_answer: of("agent.final_answer")
            .into_iter()
            .next()
            .unwrap_or(Value::Null),
        calls: of("agent.tool_call"),
        results: of("agent.tool_result"),
    }
}

/// The assistant messages of a request the fake model received.
fn assistant_messages(request: &Value) -> Vec<Value> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .cloned()
        .collect()
}

#[tokio::test]
async fn deepseek_thinking_mode_gets_its_reasoning_back_with_the_tool_call() {
    let (llm, host, mut c, sid) = setup().await;
    llm.script(json!([
        raw("deepseek_thinking_tool_call"),
        raw("deepseek_thinking_answer")
    ]));
    let t = turn(&mut c, &sid, "echo the weather").await;
    assert_eq!(t.final_answer["content"], "The echo says: sunny.");
    assert_eq!(t.partials, "The echo says: sunny.");
    assert_eq!(t.thinking, "The user wants an echo.It said sunny.");
    assert_eq!(t.calls.len(), 1);
    assert_eq!(t.calls[0]["metadata"]["tool"], "echo");
    assert_eq!(t.calls[0]["metadata"]["args"], json!({"text": "sunny"}));
    assert!(
        t.calls[0]["step_id"]
            .as_str()
            .unwrap()
            .ends_with("call_00_dsk1"),
        "{}",
        t.calls[0]
    );
    assert_eq!(t.results[0]["content"], "sunny");

    // The second request carries the step's reasoning on the assistant message with the call.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2);
    let asst = assistant_messages(&reqs[1]);
    assert_eq!(asst.len(), 1);
    assert_eq!(asst[0]["reasoning_content"], "The user wants an echo.");
    assert_eq!(asst[0]["tool_calls"][0]["id"], "call_00_dsk1");
    let tool_msg = reqs[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap();
    assert_eq!(tool_msg["tool_call_id"], "call_00_dsk1");

    // Usage of both calls counted.
    assert_eq!(host.metric("myagent_llm_prompt_tokens_total"), 660);
    assert_eq!(host.metric("myagent_llm_completion_tokens_total"), 60);

    // The next turn: reasoning of the finished turn is not sent again, nor is it in the answer
    // the model sees.
    llm.script(json!([{"text": "ok"}]));
    turn(&mut c, &sid, "thanks").await;
    let reqs = llm.requests();
    for m in assistant_messages(&reqs[2]) {
        assert!(m.get("reasoning_content").is_none(), "{m}");
        assert!(!m.to_string().contains("The user wants"), "{m}");
    }
}

#[tokio::test]
async fn mistral_content_parts_thinking_is_reasoning_text_is_the_answer() {
    let (llm, host, mut c, sid) = setup().await;
    llm.script(json!([raw("mistral_magistral_parts"), {"text": "ok"}]));
    let t = turn(&mut c, &sid, "hello").await;
    assert_eq!(t.thinking, "Okay, the user greets me.");
    assert_eq!(t.final_answer["content"], "Hello there, how can I help?");
    assert_eq!(t.partials, "Hello there, how can I help?");
    assert_eq!(host.metric("myagent_llm_completion_tokens_total"), 42);
    // Memory holds the answer only.
    turn(&mut c, &sid, "again").await;
    let asst = assistant_messages(&llm.requests()[1]);
    assert_eq!(asst[0]["content"], "Hello there, how can I help?");
}

#[tokio::test]
async fn inline_think_tags_are_reasoning_never_the_answer_and_groq_usage_is_read() {
    let (llm, host, mut c, sid) = setup().await;
    llm.script(json!([raw("groq_r1_think_tags"), {"text": "ok"}]));
    let t = turn(&mut c, &sid, "hello").await;
    assert_eq!(t.thinking, "\nOkay, a greeting; 2 < 3, I answer.\n");
    assert_eq!(
        t.final_answer["content"],
        "Hello! How can I help you today?"
    );
    assert_eq!(t.partials, "Hello! How can I help you today?");
    assert!(!t.partials.contains("think"));
    // Usage only under x_groq.
    assert_eq!(host.metric("myagent_llm_prompt_tokens_total"), 21);
    assert_eq!(host.metric("myagent_llm_completion_tokens_total"), 88);
    // The history the model gets next has no <think> block.
    turn(&mut c, &sid, "again").await;
    let asst = assistant_messages(&llm.requests()[1]);
    assert_eq!(asst[0]["content"], "Hello! How can I help you today?");
    // So does the client's history.
    c.send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    let h = c.until("agent.history").await;
    assert!(!h.to_string().contains("<think>"), "{h}");
}

#[tokio::test]
async fn xai_reasoning_tokens_outside_completion_tokens_are_counted() {
    let (llm, host, mut c, sid) = setup().await;
    llm.script(json!([raw("xai_reasoning_tokens")]));
    let t = turn(&mut c, &sid, "hi").await;
    assert_eq!(t.thinking, "Just say hi.");
    assert_eq!(t.final_answer["content"], "Hi");
    assert_eq!(host.metric("myagent_llm_prompt_tokens_total"), 12);
    assert_eq!(host.metric("myagent_llm_completion_tokens_total"), 291);
}

#[tokio::test]
async fn dashscope_empty_ids_in_later_fragments_keep_the_real_id() {
    let (llm, _host, mut c, sid) = setup().await;
    llm.script(json!([raw("dashscope_empty_ids"), {"text": "done"}]));
    let t = turn(&mut c, &sid, "echo").await;
    assert_eq!(t.calls.len(), 1);
    assert!(t.calls[0]["step_id"]
        .as_str()
        .unwrap()
        .ends_with("-call_dash_1"));
    assert_eq!(t.calls[0]["metadata"]["args"], json!({"text": "from qwen"}));
    let asst = assistant_messages(&llm.requests()[1]);
    assert_eq!(asst[0]["tool_calls"][0]["id"], "call_dash_1");
}

#[tokio::test]
async fn reasoning_details_are_reasoning_when_nothing_else_carries_it() {
    let (llm, _host, mut c, sid) = setup().await;
    llm.script(json!([raw("snowflake_reasoning_details")]));
    let t = turn(&mut c, &sid, "15*27?").await;
    assert_eq!(t.thinking, "15 * 27 = 405");
    assert_eq!(t.final_answer["content"], "15 × 27 = 405");
    assert_eq!(t.partials, "15 × 27 = 405");
}

#[tokio::test]
async fn parallel_calls_all_at_index_0_or_without_index_stay_apart() {
    let (llm, _host, mut c, sid) = setup().await;
    llm.script(json!([raw("ollama_parallel_index0"), {"text": "both done"}]));
    let t = turn(&mut c, &sid, "echo twice").await;
    let args: Vec<&Value> = t.calls.iter().map(|e| &e["metadata"]["args"]).collect();
    assert_eq!(args, [&json!({"text": "one"}), &json!({"text": "two"})]);
    let results: Vec<&Value> = t.results.iter().map(|e| &e["content"]).collect();
    assert_eq!(results, [&json!("one"), &json!("two")]);
    let asst = assistant_messages(&llm.requests()[1]);
    let ids: Vec<&Value> = asst[0]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&json!("call_ol_a"), &json!("call_ol_b")]);

    // Gemini: no index at all, and a thought signature to send back.
    llm.script(json!([raw("gemini_no_index_signature"), {"text": "done"}]));
    let t = turn(&mut c, &sid, "echo twice more").await;
    let args: Vec<&Value> = t.calls.iter().map(|e| &e["metadata"]["args"]).collect();
    assert_eq!(args, [&json!({"text": "alpha"}), &json!({"text": "beta"})]);
    let reqs = llm.requests();
    let asst = assistant_messages(reqs.last().unwrap());
    let calls = asst.last().unwrap()["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "function-call-1");
    assert_eq!(
        calls[0]["extra_content"]["google"]["thought_signature"],
        "c2lnLW9uZQ=="
    );
    assert!(calls[1].get("extra_content").is_none(), "{}", calls[1]);
}

#[tokio::test]
async fn a_malformed_tool_call_is_retried_once_with_the_error_shown_to_the_model() {
    let (llm, _host, mut c, sid) = setup().await;
    llm.script(json!([
        raw("groq_tool_use_failed"),
        {"tool_calls": [{"name": "echo", "arguments": "{\"text\": \"fixed\"}"}]},
        {"text": "It said fixed."}
    ]));
    let t = turn(&mut c, &sid, "echo").await;
    assert_eq!(t.final_answer["content"], "It said fixed.");
    assert_eq!(t.results[0]["content"], "fixed");
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    let last_user = reqs[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap();
    let shown = last_user["content"].as_str().unwrap();
    assert!(
        shown.contains("tool_use_failed") && shown.contains("did not match schema"),
        "{shown}"
    );
    // The retry prompt is not kept in the conversation.
    assert!(!reqs[2].to_string().contains("was rejected"));

    // Twice in a row: the run fails, and the client is told the provider's error type.
    llm.script(json!([
        raw("groq_tool_use_failed"),
        raw("groq_tool_use_failed")
    ]));
    c.ask(&sid, "echo again").await;
    let e = c.until_any(&["agent.error", "agent.final_answer"]).await;
    assert_eq!(e["event"], "agent.error", "{e}");
    let text = e["error"].as_str().unwrap();
    assert!(
        text.contains("tool_use_failed") && text.contains("did not match schema"),
        "{text}"
    );
}

#[tokio::test]
async fn a_providers_mid_stream_error_reaches_the_client_with_its_code_and_message() {
    let (llm, _host, mut c, sid) = setup().await;
    llm.script(json!([raw("openrouter_midstream_error")]));
    c.ask(&sid, "long question").await;
    let e = c.until_any(&["agent.error", "agent.final_answer"]).await;
    assert_eq!(e["event"], "agent.error", "{e}");
    let text = e["error"].as_str().unwrap();
    assert!(
        text.contains("(400)") && text.contains("Token limit reached"),
        "{text}"
    );
    c.until("agent.ready").await;
    assert_eq!(llm.requests().len(), 1, "not retried");
}
