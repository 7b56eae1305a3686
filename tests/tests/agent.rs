//! The agent runtime and the LLM client, end to end: the real host runs the testkit plugin
//! against the fake model over real HTTP, scripted per test.

use std::time::{Duration, Instant};

use myagent_tests::{plugin_lib, texts_of, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};

async fn setup(extra: &[&str]) -> (FakeLlm, Host, Client, String) {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, extra);
    let (c, sid, _) = Client::with_session(&host.ws_url()).await;
    (llm, host, c, sid)
}

fn tool_messages(req: &Value) -> Vec<String> {
    texts_of(req, "tool")
}

#[tokio::test]
async fn two_parallel_tool_calls_then_an_answer_with_results_in_call_order() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    llm.script(json!([
        {"text": "Working on it.", "chunk_chars": 1, "tool_calls": [
            {"name": "sleep", "arguments": "{\"ms\": 300}"},
            {"name": "echo", "arguments": "{\"text\": \"fast\"}"}
        ]},
        {"text": "Both done."}
    ]));
    let t0 = Instant::now();
    c.ask(&sid, "go").await;
    let answer = c.until("agent.final_answer").await;
    assert_eq!(answer["content"], "Both done.");
    assert_eq!(answer["metadata"]["reason"], "answer");
    let calls = c.named("agent.tool_call");
    let results = c.named("agent.tool_result");
    assert_eq!(calls.len(), 2);
    // The echo finishes first (concurrent), but memory keeps call order.
    assert_eq!(results[0]["metadata"]["tool"], "echo");
    assert_eq!(results[0]["step_id"], calls[1]["step_id"]);
    assert_eq!(results[1]["step_id"], calls[0]["step_id"]);
    assert!(t0.elapsed() < Duration::from_millis(2000));
    let reqs = llm.requests();
    assert_eq!(tool_messages(&reqs[1]), ["slept 300 ms", "fast"]);
    // The text before the tool calls is reasoning, tagged with its step; only the answer is
    // streamed as the answer.
    let reasoning: String = c
        .named("agent.thinking")
        .iter()
        .filter(|e| e["metadata"]["delta"] == true && e["metadata"]["step"] == 1)
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(reasoning, "Working on it.");
    let partials: String = c
        .named("agent.partial_answer")
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(partials, "Both done.");
    // The model was offered the plugin's tools plus terminate.
    let names: Vec<&str> = reqs[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo") && names.contains(&"terminate"));
}

#[tokio::test]
async fn terminate_ends_the_run() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    llm.script(json!([{"tool_calls": [{"name": "terminate", "arguments": "{\"status\":\"success\",\"message\":\"All set.\"}"}]}]));
    c.ask(&sid, "finish").await;
    let a = c.until("agent.final_answer").await;
    assert_eq!(a["content"], "All set.");
    assert_eq!(a["metadata"]["reason"], "terminate");
    assert_eq!(llm.requests().len(), 1);
}

#[tokio::test]
async fn max_steps_ends_with_a_clear_message() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    let step = json!({"tool_calls": [{"name": "echo", "arguments": "{\"text\":\"again\"}"}]});
    llm.script(json!([step, step, step, step, step]));
    c.ask(&sid, "loop").await;
    let a = c.until("agent.final_answer").await;
    assert_eq!(a["metadata"]["reason"], "max_steps");
    assert!(
        a["content"].as_str().unwrap().contains("max_steps = 4"),
        "{a}"
    );
    assert_eq!(llm.requests().len(), 4);
    // Stuck detection: the repeated identical step made the host nudge the model.
    let last = llm.requests().pop().unwrap();
    let prompt = last["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.contains("Observed duplicate responses"), "{prompt}");
}

#[tokio::test]
async fn tool_failures_of_every_kind_are_fed_back_and_the_run_goes_on() {
    let (llm, host, mut c, sid) = setup(&[]).await;
    llm.script(json!([
        {"tool_calls": [
            {"name": "no_such_tool", "arguments": "{}"},
            {"name": "echo", "arguments": "{'text': 'single quotes'}"},
            {"name": "fail", "arguments": "{}"},
            {"name": "panic", "arguments": "{}"},
            {"name": "long_output", "arguments": "{}"}
        ]},
        {"text": "Recovered."}
    ]));
    c.ask(&sid, "break things").await;
    let a = c.until("agent.final_answer").await;
    assert_eq!(a["content"], "Recovered.");
    let results = c.named("agent.tool_result");
    let status: Vec<&str> = results
        .iter()
        .map(|r| r["metadata"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status.iter().filter(|s| **s == "failed").count(),
        4,
        "{results:#?}"
    );
    let fed = tool_messages(&llm.requests()[1]);
    assert!(
        fed[0].contains("no tool named `no_such_tool`") && fed[0].contains("echo"),
        "{}",
        fed[0]
    );
    assert!(fed[1].contains("not a valid JSON object"), "{}", fed[1]);
    assert!(fed[2].contains("this tool always fails"));
    assert!(
        fed[3].contains("panicked: the panic tool panicked"),
        "{}",
        fed[3]
    );
    assert!(fed[4].len() < 9000 && fed[4].contains("output truncated: 100000 characters"));
    // The host survived the panic and still serves.
    let health: Value = serde_json::from_str(&host.http("/health")).unwrap();
    assert_eq!(health["status"], "healthy");
}

#[tokio::test]
async fn a_slow_tool_times_out_without_blocking_other_sessions() {
    let (llm, host, mut c, sid) = setup(&[]).await;
    // The testkit plugin sets a 2 s tool timeout; this tool would take 10 s.
    c.ask(&sid, r#"call:sleep {"ms": 10000}"#).await;
    c.until("agent.tool_call").await;
    let t0 = Instant::now();
    let (mut other, sid2, _) = Client::with_session(&host.ws_url()).await;
    other.ask(&sid2, r#"call:echo {"text": "quick"}"#).await;
    other.until("agent.final_answer").await;
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "other session took {:?}",
        t0.elapsed()
    );
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed");
    assert!(
        r["content"]
            .as_str()
            .unwrap()
            .contains("timed out after 2000 ms"),
        "{r}"
    );
    c.until("agent.final_answer").await;
    let _ = llm;
}

#[tokio::test]
async fn retries_on_429_honouring_retry_after_then_gives_up_clearly() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    llm.script(json!([
        {"status": 429, "headers": [["retry-after-ms", "300"]]},
        {"status": 503},
        {"text": "ok after retries"}
    ]));
    let t0 = Instant::now();
    c.ask(&sid, "x").await;
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "ok after retries"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "retry-after not honoured: {:?}",
        t0.elapsed()
    );
    assert_eq!(llm.requests().len(), 3);

    llm.script(json!([{"status": 500}, {"status": 500}, {"status": 500}]));
    c.ask(&sid, "y").await;
    let e = c.until("agent.error").await;
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("after 3 attempts") && msg.contains("HTTP 500"),
        "{msg}"
    );
    c.until("agent.ready").await;
    // A 400 is not retried.
    llm.script(json!([{"status": 400, "body": "{\"error\":{\"message\":\"bad request body\"}}"}]));
    c.ask(&sid, "z").await;
    let e = c.until("agent.error").await;
    // The status reaches the client; the provider's own text only the server log.
    let text = e["error"].as_str().unwrap();
    assert!(
        text.contains("HTTP 400") && !text.contains("bad request body"),
        "{e}"
    );
}

#[tokio::test]
async fn stalls_mid_stream_errors_garbage_and_resets_are_clear_errors() {
    let (llm, _host, mut c, sid) = setup(&["--llm-idle-timeout", "1"]).await;
    let cases = [
        (
            json!({"text": "abcdefgh", "after_chunks": 2, "stall_ms": 3000}),
            "no data for 1000 ms",
        ),
        (
            json!({"text": "abcdefgh", "after_chunks": 2, "error_message": "model overloaded"}),
            "error mid-stream",
        ),
        (
            json!({"text": "abcdefgh", "after_chunks": 2, "garbage": true}),
            "malformed",
        ),
        (
            json!({"text": "abcdefgh", "after_chunks": 2, "reset": true, "delay_ms": 30}),
            "broke off",
        ),
    ];
    for (step, expect) in cases {
        llm.script(json!([step]));
        c.ask(&sid, "x").await;
        let e = c.until_any(&["agent.error", "agent.final_answer"]).await;
        assert_eq!(e["event"], "agent.error", "{e}");
        assert!(
            e["error"].as_str().unwrap().contains(expect),
            "{e} should contain {expect}"
        );
        c.until("agent.ready").await;
    }
    // A non-streaming JSON answer is accepted too.
    llm.script(json!([{"text": "plain json", "non_streaming": true}]));
    c.ask(&sid, "x").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "plain json");
}

#[tokio::test]
async fn memory_is_trimmed_on_turn_boundaries() {
    let (llm, _host, mut c, sid) = setup(&["--memory-budget", "600"]).await;
    for i in 0..8 {
        c.ask(
            &sid,
            &format!(
                r#"call:echo {{"text": "{}"}} ;; say:turn {i}"#,
                "z".repeat(60)
            ),
        )
        .await;
        c.until("agent.final_answer").await;
    }
    for req in llm.requests() {
        let msgs = req["messages"].as_array().unwrap();
        // Every tool reply directly follows the assistant message that asked for it.
        for (i, m) in msgs.iter().enumerate() {
            if m["role"] == "tool" {
                let mut j = i;
                while msgs[j - 1]["role"] == "tool" {
                    j -= 1;
                }
                let asked = &msgs[j - 1];
                assert_eq!(asked["role"], "assistant");
                assert!(asked["tool_calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["id"] == m["tool_call_id"]));
            }
        }
        assert_eq!(msgs[1]["role"], "user", "history starts at a turn boundary");
    }
    let last = llm.requests().pop().unwrap();
    assert!(
        last["messages"].as_array().unwrap().len() < 20,
        "memory was not trimmed"
    );
}

#[tokio::test]
async fn traces_are_written_as_json_lines() {
    let dir = TempDir::new("trace");
    let trace = dir.path().join("trace.jsonl");
    let (_llm, _host, mut c, sid) = setup(&["--trace-file", trace.to_str().unwrap()]).await;
    c.ask(&sid, r#"call:echo {"text": "t"}"#).await;
    c.until("agent.final_answer").await;
    let kinds: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "run_start",
            "model_call",
            "tool_call",
            "model_call",
            "run_end"
        ]
    );
}

#[tokio::test]
async fn record_then_replay_offline() {
    let dir = TempDir::new("rec");
    let rec = dir.path().join("rec.jsonl");
    let llm = FakeLlm::start();
    {
        let host = Host::start(
            &plugin_lib("weather_agent"),
            &llm,
            &["--record", rec.to_str().unwrap()],
        );
        let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
        c.ask(&sid, "What's the weather in Rome?").await;
        c.until("agent.final_answer").await;
    }
    drop(llm);
    // Replay with no model server at all.
    let offline = FakeLlm::start(); // only its address is used; it is never asked
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &offline,
        &["--replay", rec.to_str().unwrap()],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, "What's the weather in Rome?").await;
    let a = c.until("agent.final_answer").await;
    assert!(a["content"].as_str().unwrap().contains("Rome: "), "{a}");
    assert_eq!(c.named("agent.tool_call").len(), 1);
    assert!(offline.requests().is_empty());
    c.ask(&sid, "Something never recorded").await;
    let e = c.until("agent.error").await;
    assert!(e["error"].as_str().unwrap().contains("rec.jsonl"), "{e}");
}
