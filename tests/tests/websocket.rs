//! End-to-end tests of the WebSocket service: the real host process, real plugins built by
//! cargo, the fake model over real HTTP, and a real WebSocket client.

use std::time::{Duration, Instant};

use myagent_tests::{plugin_lib, Client, FakeLlm, Host};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_documents_flow_reaches_a_final_answer_with_a_tool_call() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let mut c = Client::connect(&host.ws_url()).await;
    let hello = c.recv().await;
    assert_eq!(hello["event"], "system.connected");
    assert!(
        hello["connection_id"].is_string()
            && hello["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
    );
    c.send(json!({"event": "user.create_session", "timestamp": 1}))
        .await;
    let created = c.until("agent.session_created").await;
    let sid = created["session_id"].as_str().unwrap().to_owned();
    c.ask(&sid, "What's the weather in Paris?").await;
    let answer = c.until("agent.final_answer").await;

    let thinking = c.named("agent.thinking");
    assert!(thinking[0]["metadata"]["step"] == 1);
    let call = c.named("agent.tool_call")[0].clone();
    assert_eq!(call["metadata"]["tool"], "get_weather");
    assert_eq!(call["metadata"]["args"], json!({"city": "Paris"}));
    assert_eq!(call["metadata"]["status"], "running");
    let result = c.named("agent.tool_result")[0].clone();
    assert_eq!(result["step_id"], call["step_id"]);
    assert_eq!(result["metadata"]["status"], "success");
    assert!(result["content"].as_str().unwrap().starts_with("Paris: "));
    assert!(answer["content"]
        .as_str()
        .unwrap()
        .contains(result["content"].as_str().unwrap()));
    // Streamed partials add up to the final answer of the last step.
    let last_step = answer["metadata"]["steps"].as_u64().unwrap();
    let streamed: String = c
        .named("agent.partial_answer")
        .iter()
        .filter(|e| e["metadata"]["step"] == last_step)
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, answer["content"].as_str().unwrap());
    // (This answer is shorter than the hold-back, so it comes in one piece; fidelity.rs streams
    // a longer one.)
    assert!(!c.named("agent.partial_answer").is_empty());
    // Every session event is numbered 1, 2, 3... and timestamped.
    let seqs: Vec<u64> = c
        .seen
        .iter()
        .filter(|e| e["session_id"] == sid.as_str() && e["seq"].is_u64())
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(c.seen.iter().all(|e| e["timestamp"].is_string()));
    // Order: thinking (the step, then the reasoning before the call), tool_call, tool_result,
    // thinking, the answer, usage, final_answer, ready.
    let mut order: Vec<&str> = c
        .seen
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    order.dedup();
    assert_eq!(
        order,
        [
            "system.connected",
            "agent.session_created",
            "agent.thinking",
            "agent.tool_call",
            "agent.tool_result",
            "agent.thinking",
            "agent.partial_answer",
            "agent.usage",
            "agent.final_answer"
        ]
    );
    assert_eq!(c.until("agent.ready").await["event"], "agent.ready");

    // The same session remembers the conversation: the model sees the first turn.
    c.ask(&sid, "say:thanks").await;
    c.until("agent.final_answer").await;
    let reqs = llm.requests();
    let last = reqs.last().unwrap()["messages"].as_array().unwrap().clone();
    assert!(last
        .iter()
        .any(|m| m["content"] == "What's the weather in Paris?"));
    assert_eq!(last[0]["role"], "system");
    assert_eq!(
        last.last().unwrap()["content"],
        "To look up weather, use the get_weather tool."
    );
}

#[tokio::test]
async fn messages_up_to_a_mebibyte_are_accepted_by_default() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let mut c = Client::connect(&host.ws_url()).await;
    let hello = c.until("system.connected").await;
    assert_eq!(hello["max_message_bytes"], 1 << 20);
    let (sid, _) = c.create_session().await;
    // A 700 KB image as a content part: a run, not `message_too_large`.
    let image = format!("data:image/png;base64,{}", "A".repeat(700_000));
    c.send(
        json!({"event": "user.message", "session_id": sid, "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": image}}]}),
    )
    .await;
    let end = c.until_any(&["agent.final_answer", "agent.error"]).await;
    assert_eq!(end["event"], "agent.final_answer", "{end}");
    // Past the limit, the clear error.
    let huge = "x".repeat((1 << 20) + 1);
    c.send(json!({"event": "user.message", "session_id": sid, "content": huge}))
        .await;
    let err = c.until("agent.error").await;
    assert_eq!(err["code"], "message_too_large", "{err}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_connection_goes_on() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--max-message-bytes", "1000"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    let cases: Vec<(Message, &str, &str)> = vec![
        (Message::text("{not json"), "invalid_json", "Invalid JSON"),
        (Message::text("[1,2]"), "invalid_message", "JSON object"),
        (
            Message::text("{}"),
            "missing_event",
            "Missing field `event`",
        ),
        (
            Message::text(r#"{"event":"user.fly"}"#),
            "unknown_event",
            "user.fly",
        ),
        (
            Message::text(r#"{"event":"user.message","session_id":"x"}"#),
            "missing_field",
            "content",
        ),
        (
            Message::text(r#"{"event":"user.message","session_id":7,"content":"x"}"#),
            "invalid_field",
            "session_id",
        ),
        (
            Message::binary(vec![1u8, 2, 3]),
            "binary_frame",
            "Binary frames",
        ),
        (
            Message::text(format!(
                r#"{{"event":"user.message","session_id":"{sid}","content":"{}"}}"#,
                "x".repeat(2000)
            )),
            "message_too_large",
            "limit is 1000",
        ),
        (
            Message::text(r#"{"event":"user.message","session_id":"nope","content":"hi"}"#),
            "session_not_found",
            "Session not found",
        ),
        (
            Message::text(r#"{"event":"user.cancel","session_id":"nope"}"#),
            "session_not_found",
            "Session not found",
        ),
    ];
    for (msg, code, text) in cases {
        c.send_raw(msg).await;
        let e = c.until("agent.error").await;
        assert_eq!(e["code"], code, "{e}");
        assert!(
            e["error"].as_str().unwrap().contains(text),
            "{e} should mention {text}"
        );
    }
    // Still usable.
    c.ask(&sid, "say:still here").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "still here");
}

#[tokio::test]
async fn a_running_session_refuses_a_second_message_and_cancel_stops_it() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    // A slow model stream: 200 pieces, 20 ms apart.
    llm.script(json!([{"text": "x".repeat(800), "delay_ms": 20}]));
    c.ask(&sid, "long answer").await;
    c.until("agent.partial_answer").await;
    c.ask(&sid, "another").await;
    let e = c.until("agent.error").await;
    assert_eq!(e["error"], "Agent is already running");
    let t0 = Instant::now();
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "cancel took {:?}",
        t0.elapsed()
    );
    c.until("agent.ready").await;
    // No more partials after the interruption.
    let late = c.recv_timeout(Duration::from_millis(300)).await;
    assert!(late.is_none(), "unexpected event after interrupt: {late:?}");
    // Usable again.
    c.ask(&sid, "say:again").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "again");

    // Cancel during a slow tool.
    c.ask(&sid, r#"call:sleep {"ms": 1500}"#).await;
    c.until("agent.tool_call").await;
    let t0 = Instant::now();
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "cancel took {:?}",
        t0.elapsed()
    );
    c.ask(&sid, "say:after tool cancel").await;
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "after tool cancel"
    );
}

#[tokio::test]
async fn sessions_belong_to_their_connection() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let (mut a, sid, _) = Client::with_session(&host.ws_url()).await;
    let mut b = Client::connect(&host.ws_url()).await;
    b.recv().await;
    for ev in [
        json!({"event": "user.message", "session_id": sid, "content": "hi"}),
        json!({"event": "user.cancel", "session_id": sid}),
        json!({"event": "user.resume_session", "session_id": sid, "resume_token": "wrong", "last_seq": 0}),
    ] {
        b.send(ev).await;
        let e = b.until("agent.error").await;
        assert_eq!(e["error"], "Session not found");
    }
    // A sees nothing of B's attempts and still works.
    a.ask(&sid, "say:mine").await;
    assert_eq!(a.until("agent.final_answer").await["content"], "mine");
    assert!(a.named("agent.error").is_empty());
}

#[tokio::test]
async fn resume_replays_missed_events_then_goes_live() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--resume-window", "30"],
    );
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(
        json!([{"text": "abcdefghijklmnopqrstuvwxyz".repeat(4), "chunk_chars": 2, "delay_ms": 15}]),
    );
    c.ask(&sid, "stream please").await;
    let first = c.until("agent.partial_answer").await;
    let last_seq = first["seq"].as_u64().unwrap();
    drop(c); // the connection drops mid-stream; the run goes on
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut c2 = Client::connect(&host.ws_url()).await;
    c2.recv().await;
    c2.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": last_seq})).await;
    let resumed = c2.until("agent.session_resumed").await;
    assert_eq!(resumed["recovered"], true);
    assert!(resumed["replayed"].as_u64().unwrap() > 0);
    let answer = c2.until("agent.final_answer").await;
    // Every event after last_seq arrived exactly once, in order.
    let seqs: Vec<u64> = c2.seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (last_seq + 1..=answer["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    );
    let text: String = std::iter::once(first["content"].as_str().unwrap())
        .chain(
            c2.named("agent.partial_answer")
                .iter()
                .map(|e| e["content"].as_str().unwrap()),
        )
        .collect();
    assert_eq!(text, answer["content"].as_str().unwrap());

    // A gap that fell out of the buffer is reported.
    let host2 = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--replay-buffer-bytes", "600"],
    );
    let (mut d, sid2, token2) = Client::with_session(&host2.ws_url()).await;
    d.ask(&sid2, "stream:60").await;
    d.until("agent.final_answer").await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d2 = Client::connect(&host2.ws_url()).await;
    d2.recv().await;
    d2.send(json!({"event": "user.resume_session", "session_id": sid2, "resume_token": token2, "last_seq": 1})).await;
    let resumed = d2.until("agent.session_resumed").await;
    assert_eq!(resumed["recovered"], false);
    let e = d2.until("agent.error").await;
    assert_eq!(e["code"], "resume_gap");
}

#[tokio::test]
async fn health_and_metrics() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, "weather in Oslo").await;
    c.until("agent.ready").await;
    let health: serde_json::Value = serde_json::from_str(&host.http("/health")).unwrap();
    assert_eq!(health["status"], "healthy");
    assert!(health["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(health["active_sessions"], 1);
    assert_eq!(health["connections"], 1);
    assert_eq!(health["plugin"]["name"], "weather-assistant");
    let metrics = host.http("/metrics");
    for line in [
        "myagent_connections 1",
        "myagent_sessions 1",
        "myagent_runs_finished_total 1",
        "myagent_tool_calls_total 1",
        "myagent_llm_calls_total 2",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
    assert!(metrics.contains("myagent_llm_call_seconds_count 2"));
    // Every event of the session's log the client got is counted as sent, streamed pieces
    // included (they are counted when their model read is handed to the connection).
    let numbered = c.seen.iter().filter(|e| e["seq"].is_u64()).count() as u64;
    assert!(c.seen.iter().any(|e| e["event"] == "agent.partial_answer"));
    assert_eq!(host.metric("myagent_events_sent_total"), numbered);
}

#[tokio::test]
async fn auth_accepts_valid_tokens_and_refuses_others() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--auth-token", "s3cret", "--auth-token", "other"],
    );
    // No token at all: the first message must carry one.
    let mut c = Client::connect(&host.ws_url()).await;
    assert_eq!(c.recv().await["auth_required"], true);
    c.send(json!({"event": "user.create_session"})).await;
    let e = c.recv().await;
    assert_eq!(
        e,
        json!({"event": "auth.error", "error": "Invalid token", "timestamp": e["timestamp"]})
    );
    assert!(
        c.recv_timeout(Duration::from_secs(2)).await.is_none(),
        "connection should close"
    );
    // Token on the first message.
    let mut c = Client::connect(&host.ws_url()).await;
    c.recv().await;
    c.send(json!({"event": "user.create_session", "token": "other"}))
        .await;
    assert_eq!(c.recv().await["event"], "agent.session_created");
    // Query token, good and bad.
    let mut c = Client::connect(&format!("{}/?token=s3cret", host.ws_url())).await;
    assert_eq!(c.recv().await["auth_required"], false);
    c.create_session().await;
    let mut c = Client::connect(&format!("{}/ws?token=nope", host.ws_url())).await;
    assert_eq!(c.recv().await["event"], "auth.error");
    // Bearer header.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = host.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer s3cret".parse().unwrap());
    let mut c = Client::connect_req(req).await.unwrap();
    assert_eq!(c.recv().await["auth_required"], false);
    c.create_session().await;
}

#[tokio::test]
async fn custom_events_round_trip_through_the_plugin() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.send(json!({"event": "testkit.ping", "session_id": sid, "data": {"n": 42}}))
        .await;
    let pong = c.until("testkit.pong").await;
    assert_eq!(pong["echo"], json!({"n": 42}));
    assert_eq!(pong["session_id"], sid.as_str());
    assert!(pong["seq"].is_u64());
    // A panicking hook is an error event, not a crash.
    c.send(json!({"event": "testkit.panic", "session_id": sid}))
        .await;
    let e = c.until("agent.error").await;
    assert!(e["error"].as_str().unwrap().contains("panicked"), "{e}");
    c.ask(&sid, "say:alive").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "alive");
}

#[tokio::test]
async fn a_slow_client_is_disconnected_and_can_resume() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--outbound-queue", "16"],
    );
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, "stream:20000").await;
    // Do not read for a while: the queue (16 events) overflows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let close_code = c.close_code(Duration::from_secs(10)).await;
    assert_eq!(close_code, Some(4008));
    // Other clients are unaffected, and the slow one can resume.
    let (mut other, sid2, _) = Client::with_session(&host.ws_url()).await;
    other.ask(&sid2, "say:fine").await;
    assert_eq!(other.until("agent.final_answer").await["content"], "fine");
    let mut c2 = Client::connect(&host.ws_url()).await;
    c2.recv().await;
    c2.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": 0})).await;
    c2.until("agent.session_resumed").await;
    let health = host.http("/metrics");
    assert!(
        health.contains("myagent_slow_client_disconnects_total 1"),
        "{health}"
    );
}

#[tokio::test]
async fn sigterm_interrupts_running_sessions_and_closes_with_1001() {
    let llm = FakeLlm::start();
    let mut host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--shutdown-timeout", "5"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "y".repeat(4000), "delay_ms": 20}]));
    c.ask(&sid, "long").await;
    c.until("agent.partial_answer").await;
    let t0 = Instant::now();
    host.terminate();
    c.until("agent.interrupted").await;
    let code = c.close_code(Duration::from_secs(5)).await;
    assert_eq!(code, Some(1001));
    let status = loop {
        if let Some(s) = host.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(6), "host did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[tokio::test]
async fn keepalive_drops_a_peer_that_stops_answering_pings() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--ping-interval", "1", "--pong-timeout", "1"],
    );
    // A client that keeps reading answers the pings (tungstenite does it while polled) and stays.
    let (mut live, sid, _) = Client::with_session(&host.ws_url()).await;
    // A client that stops reading cannot answer them.
    let mut dead = Client::connect(&host.ws_url()).await;
    dead.recv().await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        let _ = live.recv_timeout(Duration::from_millis(200)).await;
    }
    live.ask(&sid, "say:still here").await;
    assert_eq!(
        live.until("agent.final_answer").await["content"],
        "still here"
    );
    assert_eq!(dead.close_code(Duration::from_secs(5)).await, Some(4000));
    assert!(host.http("/health").contains("\"connections\":1"));
}

#[tokio::test]
async fn origins_outside_the_allowed_list_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--allowed-origin", "https://app.example.com"],
    );
    let with_origin = |o: &str| {
        let mut req = host.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("Origin", o.parse().unwrap());
        req
    };
    match Client::connect_req(with_origin("https://evil.example.net")).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("expected HTTP 403, got {e}"),
        Ok(_) => panic!("a foreign origin was accepted"),
    }
    let mut ok = Client::connect_req(with_origin("https://app.example.com"))
        .await
        .expect("allowed origin");
    assert_eq!(ok.recv().await["event"], "system.connected");
    // No Origin header: not a browser page; allowed (tokens guard those clients).
    let mut plain = Client::connect(&host.ws_url()).await;
    assert_eq!(plain.recv().await["event"], "system.connected");
    assert!(host
        .http("/metrics")
        .contains("myagent_connections_refused_total 1"));
}

#[tokio::test]
async fn the_connection_cap_refuses_extra_connections_and_frees_slots() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--max-connections", "3"],
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&host.ws_url()).await;
        assert_eq!(c.recv().await["event"], "system.connected");
        held.push(c);
    }
    // The fourth is dropped at accept: the handshake fails.
    let extra = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(host.ws_url()),
    )
    .await
    .expect("refusal should be prompt");
    assert!(extra.is_err(), "a connection over the cap was accepted");
    // The ones held keep working.
    held[0].send(json!({"event": "user.create_session"})).await;
    assert_eq!(
        held[0].until("agent.session_created").await["event"],
        "agent.session_created"
    );
    // Closing one frees its slot.
    let mut gone = held.pop().unwrap();
    gone.ws.close(None).await.unwrap();
    while gone.recv_timeout(Duration::from_secs(2)).await.is_some() {}
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect(&host.ws_url()).await;
    assert_eq!(again.recv().await["event"], "system.connected");
    drop(held);
    drop(again);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = host.http("/metrics");
    assert!(
        metrics.contains("myagent_connections_refused_total 1"),
        "{metrics}"
    );
}
