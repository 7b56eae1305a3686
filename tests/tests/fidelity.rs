//! The MyAgent design's payloads, as its clients read them: reasoning is `agent.thinking`, the
//! answer is `agent.partial_answer` (and adds up to `agent.final_answer`), timestamps are
//! ISO-8601, `user.cancel` on an idle session is `agent.interrupted`, `connection_id` is a UUID,
//! `/health` says when the server drains. Each test starts its own host and fake model.

use std::time::Duration;

use myagent_tests::{http_get_raw, plugin_lib, Client, FakeLlm, Host};
use serde_json::{json, Value};

async fn setup(extra: &[&str]) -> (FakeLlm, Host, Client, String) {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, extra);
    let (c, sid, _) = Client::with_session(&host.ws_url()).await;
    (llm, host, c, sid)
}

/// The thinking deltas of `step`, joined.
fn reasoning(c: &Client, step: u64) -> String {
    c.named("agent.thinking")
        .iter()
        .filter(|e| e["metadata"]["delta"] == true && e["metadata"]["step"] == step)
        .map(|e| e["content"].as_str().unwrap())
        .collect()
}

/// The answer pieces after the last reset, joined — what a client shows as the streamed answer.
fn streamed_answer(events: &[Value]) -> String {
    let mut out = String::new();
    for e in events
        .iter()
        .filter(|e| e["event"] == "agent.partial_answer")
    {
        if e["metadata"]["reset"] == true {
            assert_eq!(e["content"], "", "a reset carries no text");
            out.clear();
        } else {
            out.push_str(e["content"].as_str().unwrap());
        }
    }
    out
}

#[tokio::test]
async fn reasoning_streams_as_thinking_and_the_answer_pieces_add_up_to_the_final_answer() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    let answer = "It is sunny in Paris today, 17 degrees, with a light breeze from the west; \
                  no rain is expected before the evening.";
    llm.script(json!([
        {"reasoning": "The user wants the weather.", "text": "Let me check that.", "chunk_chars": 3,
         "tool_calls": [{"name": "echo", "arguments": "{\"text\": \"sunny\"}"}]},
        {"text": answer, "chunk_chars": 5}
    ]));
    c.ask(&sid, "weather?").await;
    let fin = c.until("agent.final_answer").await;
    assert_eq!(fin["content"], answer);

    // Step 1: its start, then the model's reasoning and the text before the call, as deltas.
    let starts: Vec<&Value> = c
        .named("agent.thinking")
        .into_iter()
        .filter(|e| e["metadata"]["delta"] == false)
        .collect();
    assert_eq!(starts.len(), 2, "one start per step");
    assert_eq!(
        reasoning(&c, 1),
        "The user wants the weather.Let me check that."
    );
    assert_eq!(reasoning(&c, 2), "");
    // Only the answer is streamed as the answer: several pieces (it is longer than the
    // hold-back), all in step 2, adding up to the final answer.
    let partials = c.named("agent.partial_answer");
    assert!(partials.len() > 3, "{partials:?}");
    assert!(partials
        .iter()
        .all(|e| e["metadata"]["step"] == 2 && e["metadata"].get("reset").is_none()));
    let all: String = partials
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(all, answer);
    // Order: reasoning before the tool call, answer after the result.
    let pos = |pred: &dyn Fn(&Value) -> bool| c.seen.iter().position(pred).unwrap();
    let last_reasoning = c
        .seen
        .iter()
        .rposition(|e| e["event"] == "agent.thinking" && e["metadata"]["delta"] == true)
        .unwrap();
    assert!(last_reasoning < pos(&|e| e["event"] == "agent.tool_call"));
    assert!(
        pos(&|e| e["event"] == "agent.tool_result")
            < pos(&|e| e["event"] == "agent.partial_answer")
    );

    // A short answer comes in one piece; a terminate call's message is streamed as the answer.
    llm.script(json!([{"text": "Yes.", "chunk_chars": 1}]));
    c.seen.clear();
    c.ask(&sid, "again").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "Yes.");
    assert_eq!(c.named("agent.partial_answer").len(), 1);
    assert_eq!(streamed_answer(&c.seen), "Yes.");

    llm.script(json!([{"text": "Wrapping up.", "tool_calls": [{"name": "terminate", "arguments": "{\"status\":\"success\",\"message\":\"All set.\"}"}]}]));
    c.seen.clear();
    c.ask(&sid, "finish").await;
    let fin = c.until("agent.final_answer").await;
    assert_eq!(streamed_answer(&c.seen), fin["content"].as_str().unwrap());
    assert_eq!(reasoning(&c, 1), "Wrapping up.");
}

#[tokio::test]
async fn a_preamble_longer_than_the_hold_back_is_withdrawn_when_tool_calls_follow() {
    let (llm, _host, mut c, sid) = setup(&["--answer-holdback", "10"]).await;
    let preamble = "I will look this up for you with the echo tool, one moment.";
    llm.script(json!([
        {"text": preamble, "chunk_chars": 4, "tool_calls": [{"name": "echo", "arguments": "{\"text\": \"x\"}"}]},
        {"text": "Done, the echo said x.", "chunk_chars": 4}
    ]));
    c.ask(&sid, "go").await;
    let fin = c.until("agent.final_answer").await;
    // Some of the preamble went out as answer before the call showed; then it was withdrawn
    // and sent again as reasoning.
    let resets: Vec<&Value> = c
        .named("agent.partial_answer")
        .into_iter()
        .filter(|e| e["metadata"]["reset"] == true)
        .collect();
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0]["metadata"]["step"], 1);
    assert_eq!(reasoning(&c, 1), preamble);
    assert_eq!(streamed_answer(&c.seen), fin["content"].as_str().unwrap());
}

fn is_iso_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    ts.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn timestamps_are_iso_8601_utc_and_clients_may_send_either_form() {
    let (llm, host, mut c, sid) = setup(&[]).await;
    llm.script(json!([{"text": "one"}, {"text": "two"}]));
    // The design's Python client sends datetime.now().isoformat(); others send Unix seconds.
    c.send(json!({"event": "user.message", "session_id": sid, "content": "a", "timestamp": "2026-11-30T09:30:00.123456"})).await;
    c.until("agent.ready").await;
    c.send(json!({"event": "user.message", "session_id": sid, "content": "b", "timestamp": 1796000102.5})).await;
    c.until("agent.ready").await;
    assert_eq!(c.named("agent.final_answer").len(), 2);
    assert!(
        c.named("agent.error").is_empty(),
        "{:?}",
        c.named("agent.error")
    );
    for e in &c.seen {
        let ts = e["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no string timestamp: {e}"));
        assert!(is_iso_utc(ts), "{ts}");
    }
    let health: Value = serde_json::from_str(&host.http("/health")).unwrap();
    let ts = health["timestamp"].as_str().unwrap();
    assert!(is_iso_utc(ts), "{ts}");
    // This machine's clock is after 2026 (the formatter itself is unit-tested in the host).
    let year: u64 = ts[..4].parse().unwrap();
    assert!((2026..2100).contains(&year), "{ts}");
}

#[tokio::test]
async fn cancel_on_an_idle_session_is_interrupted_and_the_connection_id_is_a_uuid() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let mut c = Client::connect(&host.ws_url()).await;
    let hello = c.recv().await;
    let id = hello["connection_id"].as_str().unwrap();
    assert!(uuid_like(id), "{id}");
    let mut other = Client::connect(&host.ws_url()).await;
    assert_ne!(other.recv().await["connection_id"], hello["connection_id"]);

    let (sid, _) = c.create_session().await;
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    let e = c.until_any(&["agent.interrupted", "agent.error"]).await;
    assert_eq!(e["event"], "agent.interrupted", "{e}");
    assert_eq!(e["session_id"], sid.as_str());
    // The session still works.
    llm.script(json!([{"text": "still here"}]));
    c.ask(&sid, "hi").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "still here");
}

fn uuid_like(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn health_says_shutting_down_while_the_server_drains() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--shutdown-timeout", "20"],
    );
    let url = format!("http://127.0.0.1:{}/health", host.port);
    assert!(http_get_raw(&url).starts_with("HTTP/1.1 200"));
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    // Session work that shutdown waits for: a custom-event hook sleeping (up to the 2 s tool
    // timeout of the testkit plugin).
    c.send(json!({"event": "testkit.sleep", "session_id": sid, "data": {"ms": 60000}}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = http_get_raw(&url);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("\"status\":\"shutting_down\""), "{resp}");
    // New WebSocket sessions are refused meanwhile.
    assert!(tokio_tungstenite::connect_async(host.ws_url())
        .await
        .is_err());
}
