//! Conversation features beyond the MyAgent design: double texting (`on_busy`: reject, enqueue,
//! interrupt) and `user.get_history`. Each test starts its own host and fake model.

use myagent_tests::{plugin_lib, texts_of, Client, FakeLlm, Host};
use serde_json::{json, Value};

async fn setup(extra: &[&str]) -> (FakeLlm, Host, Client, String) {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, extra);
    let (c, sid, _) = Client::with_session(&host.ws_url()).await;
    (llm, host, c, sid)
}

async fn say(c: &mut Client, sid: &str, content: &str, on_busy: Option<&str>) {
    let mut m = json!({"event": "user.message", "session_id": sid, "content": content});
    if let Some(p) = on_busy {
        m["on_busy"] = p.into();
    }
    c.send(m).await;
}

/// The user inputs the model was asked about, in order (the last user message of each
/// request that is not the plugin's next-step prompt).
fn inputs(llm: &FakeLlm) -> Vec<String> {
    llm.requests()
        .iter()
        .map(|r| texts_of(r, "user").pop().expect("a user message"))
        .collect()
}

/// ~1.8 s: long enough that messages sent meanwhile find the run busy, even on a loaded machine.
const SLOW: &str = r#"{"text": "slow answer", "chunk_chars": 2, "delay_ms": 300}"#;

#[tokio::test]
async fn enqueued_messages_run_in_order_after_the_current_run() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    let slow: Value = serde_json::from_str(SLOW).unwrap();
    llm.script(json!([slow, {"text": "second"}, {"text": "third"}]));
    say(&mut c, &sid, "one", None).await;
    c.until("agent.thinking").await;
    say(&mut c, &sid, "two", Some("enqueue")).await;
    assert_eq!(c.until("agent.message_queued").await["position"], 1);
    say(&mut c, &sid, "three", Some("enqueue")).await;
    assert_eq!(c.until("agent.message_queued").await["position"], 2);
    // Without on_busy the server default applies: reject.
    say(&mut c, &sid, "four", None).await;
    assert_eq!(c.until("agent.error").await["code"], "already_running");

    let mut finals = Vec::new();
    while finals.len() < 3 {
        let e = c.until_any(&["agent.final_answer", "agent.ready"]).await;
        if e["event"] == "agent.ready" {
            panic!(
                "agent.ready between a run and the queued message after it: {:?}",
                c.seen
            );
        }
        finals.push(e["content"].as_str().unwrap().to_owned());
    }
    assert_eq!(finals, ["slow answer", "second", "third"]);
    c.until("agent.ready").await;
    assert_eq!(inputs(&llm), ["one", "two", "three"]);
    // Every event is in one numbered log: seq has no gap.
    let seqs: Vec<u64> = c.seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn interrupt_cancels_the_run_and_answers_the_new_message() {
    // The server default here is enqueue; the message asks to interrupt.
    let (llm, _host, mut c, sid) = setup(&["--on-busy", "enqueue"]).await;
    let slow = json!({"text": "a very long answer ".repeat(20), "chunk_chars": 2, "delay_ms": 40});
    llm.script(json!([slow, {"text": "the new answer"}]));
    say(&mut c, &sid, "long", None).await;
    c.until("agent.partial_answer").await;
    say(&mut c, &sid, "queued", None).await; // server default: enqueue
    assert_eq!(c.until("agent.message_queued").await["position"], 1);
    say(&mut c, &sid, "instead", Some("interrupt")).await;
    assert_eq!(
        c.until("agent.message_queued").await["position"],
        1,
        "the queue was replaced"
    );
    c.until("agent.interrupted").await;
    let fin = c.until("agent.final_answer").await;
    assert_eq!(fin["content"], "the new answer");
    c.until("agent.ready").await;
    // The model saw "long", then "instead" — "queued" was dropped by the interrupt.
    assert_eq!(inputs(&llm), ["long", "instead"]);
    // The interrupted turn is in memory as such (the model's next request shows it).
    let last = &llm.requests()[1];
    let texts: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(texts.iter().any(|t| t.contains("interrupted")), "{texts:?}");
}

#[tokio::test]
async fn the_queue_is_bounded_and_cancel_drops_it() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    // Slow enough (~1.8 s) that the queueing below happens while it runs, even on a busy machine.
    llm.script(json!([{"text": "slow answer", "chunk_chars": 2, "delay_ms": 300}]));
    say(&mut c, &sid, "one", None).await;
    // The step starts before its model request leaves; wait until the model has it.
    let t0 = std::time::Instant::now();
    while llm.requests().is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "the model was never asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in 1..=4 {
        say(&mut c, &sid, &format!("q{i}"), Some("enqueue")).await;
        assert_eq!(c.until("agent.message_queued").await["position"], i);
    }
    say(&mut c, &sid, "q5", Some("enqueue")).await;
    let e = c.until("agent.error").await;
    assert_eq!(e["code"], "already_running");
    assert!(e["error"].as_str().unwrap().contains("4 messages"), "{e}");
    // Cancel stops the run and drops what waits: the session is idle after one interruption.
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    c.until("agent.ready").await;
    assert_eq!(inputs(&llm), ["one"]);
    // A bad policy is a clear error.
    say(&mut c, &sid, "x", Some("later")).await;
    let e = c.until("agent.error").await;
    assert_eq!(e["code"], "invalid_field");
    assert!(e["error"].as_str().unwrap().contains("on_busy"));
}

#[tokio::test]
async fn get_history_returns_the_conversation_with_tool_calls_and_results() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    // The second answer is longer than the answer hold-back, so it streams while the run goes on.
    let second = "Second answer. ".repeat(12);
    llm.script(json!([
        {"text": "Checking.", "tool_calls": [{"name": "echo", "arguments": "{\"text\": \"hello\"}"}]},
        {"text": "The echo said hello."},
        {"text": second, "chunk_chars": 2, "delay_ms": 20}
    ]));
    c.ask(&sid, "first question").await;
    c.until("agent.ready").await;
    c.send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    let h = c.until("agent.history").await;
    assert_eq!(h["session_id"], sid.as_str());
    assert!(h.get("seq").is_none());
    assert_eq!(h["dropped_turns"], 0);
    let m = h["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(m[0]["content"], "first question");
    assert_eq!(m[1]["tool_calls"][0]["function"]["name"], "echo");
    assert_eq!(m[2]["tool_call_id"], m[1]["tool_calls"][0]["id"]);
    assert_eq!(m[2]["content"], "hello");
    assert_eq!(m[3]["content"], "The echo said hello.");

    // Asked during a run, it answers once the turn is whole.
    c.ask(&sid, "second question").await;
    c.until("agent.partial_answer").await;
    c.send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    assert_eq!(
        c.named("agent.final_answer").len(),
        1,
        "asked while the run goes on"
    );
    // One waiting request per session (security round 3, item 3): more are refused at once
    // instead of queueing without bound behind the turn.
    for _ in 0..3 {
        c.send(json!({"event": "user.get_history", "session_id": sid}))
            .await;
        assert_eq!(c.until("agent.error").await["code"], "history_pending");
    }
    let h = c.until("agent.history").await;
    assert_eq!(
        c.named("agent.final_answer").len(),
        2,
        "history came before the run ended"
    );
    assert_eq!(
        c.named("agent.history").len(),
        2,
        "the first turn's and the one waiting request's"
    );
    assert_eq!(h["messages"].as_array().unwrap().len(), 6);
    assert_eq!(h["messages"][5]["content"], second.as_str());

    // A client that lost its state (a new connection) cannot read it without the session's
    // token; after resuming it can.
    let mut other = Client::connect(&host.ws_url()).await;
    other.recv().await;
    other
        .send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    assert_eq!(
        other.until("agent.error").await["code"],
        "session_not_found"
    );
    other
        .send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": 0}))
        .await;
    other.until("agent.session_resumed").await;
    other
        .send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    assert_eq!(
        other.until("agent.history").await["messages"],
        h["messages"]
    );
}

#[tokio::test]
async fn agent_config_sets_a_sessions_model_temperature_steps_and_instructions_within_limits() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let mut c = Client::connect(&host.ws_url()).await;
    c.recv().await;
    let config = json!({"model": "model-b", "temperature": 0.3, "max_steps": 1, "instructions": "Answer in French."});
    c.send(json!({"event": "user.create_session", "agent_config": config}))
        .await;
    let created = c.until("agent.session_created").await;
    assert_eq!(created["agent_config"]["model"], "model-b");
    let sid = created["session_id"].as_str().unwrap().to_owned();
    // max_steps 1: a tool call uses the only step, and the run stops at the limit.
    llm.script(json!([{"tool_calls": [{"name": "echo", "arguments": "{\"text\": \"x\"}"}]}]));
    c.ask(&sid, "hi").await;
    let fin = c.until("agent.final_answer").await;
    assert_eq!(fin["metadata"]["reason"], "max_steps");
    assert_eq!(fin["metadata"]["steps"], 1);
    let req = &llm.requests()[0];
    assert_eq!(req["model"], "model-b");
    assert!((req["temperature"].as_f64().unwrap() - 0.3).abs() < 1e-6);
    let system = req["messages"][0]["content"].as_str().unwrap();
    assert_eq!(system, "You are a test agent.\n\nAnswer in French.");

    // A session without agent_config keeps the agent's own settings.
    let (plain, _) = c.create_session().await;
    llm.script(json!([{"text": "ok"}]));
    c.ask(&plain, "hi").await;
    c.until("agent.ready").await;
    let req = llm.requests().pop().unwrap();
    assert_eq!(req["messages"][0]["content"], "You are a test agent.");
    assert_ne!(req["model"], "model-b");

    // Outside the plugin's limits: a clear invalid_field, and no session.
    let before = host.http_health_sessions();
    for (cfg, want) in [
        (json!({"model": "gpt-9"}), "allowed: model-a, model-b"),
        (json!({"temperature": 2.0}), "range"),
        (json!({"max_steps": 7}), "limit of 6"),
        (json!({"instructions": "x".repeat(201)}), "at most 200"),
        (
            json!({"colour": "blue"}),
            "Unknown field `agent_config.colour`",
        ),
        (json!("fast"), "must be an object"),
    ] {
        c.send(json!({"event": "user.create_session", "agent_config": cfg}))
            .await;
        let e = c.until("agent.error").await;
        assert_eq!(e["code"], "invalid_field", "{e}");
        assert!(e["error"].as_str().unwrap().contains(want), "{cfg}: {e}");
    }
    assert_eq!(host.http_health_sessions(), before);
}

#[tokio::test]
async fn content_parts_with_images_reach_the_model_as_sent() {
    let (llm, _host, mut c, sid) = setup(&[]).await;
    llm.script(json!([{"text": "A red square."}]));
    let image = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4z8CAFWEXHbQSACj/P8Fu7N9hAAAAAElFTkSuQmCC";
    let parts = json!([
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "low"}}
    ]);
    // Security round 3, item 2: fields the host does not validate are not kept — not sent to
    // the model, not stored, not weighed as nothing against the memory budget.
    let zeros = vec![0; 10_000]; // 20 KB on the wire, ~320 KB as JSON values
    let pad = "x".repeat(10_000);
    let padded = json!([
        {"type": "text", "text": "What is this?", "pad": zeros},
        {"type": "image_url", "image_url": {"url": image, "detail": "low", "pad": pad}, "more": pad}
    ]);
    c.send(json!({"event": "user.message", "session_id": sid, "content": padded}))
        .await;
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "A red square."
    );
    let req = llm.requests().pop().unwrap();
    let user = req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap()
        .clone();
    assert_eq!(
        user["content"], parts,
        "passed through as validated, extra fields dropped"
    );
    // The history keeps the parts too.
    c.send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    assert_eq!(
        c.until("agent.history").await["messages"][0]["content"],
        parts
    );

    // Parts the model could not take, or URLs the host will not pass on, are refused.
    for bad in [
        json!([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]),
        json!([{"type": "input_audio", "input_audio": {"data": "AAAA"}}]),
        json!([]),
        // Security round 3, item 12: a self-hosted model server could fetch these from inside
        // the operator's network (`--image-urls public`, the default).
        json!([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}]),
        json!([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:6379/x.png"}}]),
        json!([{"type": "image_url", "image_url": {"url": "http://[::ffff:10.0.0.1]/x.png"}}]),
    ] {
        c.send(json!({"event": "user.message", "session_id": sid, "content": bad}))
            .await;
        let e = c.until("agent.error").await;
        assert_eq!(e["code"], "invalid_field", "{bad}: {e}");
    }
    let requests = llm.requests().len();
    // A public URL goes through; `--image-urls data` refuses it too.
    llm.script(json!([{"text": "A cat."}]));
    let public =
        json!([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]);
    c.send(json!({"event": "user.message", "session_id": sid, "content": public}))
        .await;
    assert_eq!(c.until("agent.final_answer").await["content"], "A cat.");
    assert_eq!(
        llm.requests().len(),
        requests + 1,
        "refused URLs never reached the model"
    );
    let (_llm2, _host2, mut c2, sid2) = setup(&["--image-urls", "data"]).await;
    c2.send(json!({"event": "user.message", "session_id": sid2, "content": public}))
        .await;
    assert_eq!(c2.until("agent.error").await["code"], "invalid_field");
}
