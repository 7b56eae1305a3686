//! The AG-UI door (`POST /agui`): runs as AG-UI event streams over real HTTP, approvals as
//! interrupts and their resume, reconnecting with `Last-Event-ID`, background runs, refusals —
//! and threads that are our sessions (the WebSocket opens what AG-UI made). Real host, real
//! testkit plugin, the fake model over HTTP. The official tools judge the streams: AG-UI's
//! conformance validator (`ag-ui-validate`, pinned in examples/clients/requirements.txt) and its
//! TypeScript client (`@ag-ui/client`, pinned in examples/clients/package-lock.json, driven by
//! examples/clients/agui_client.mjs).

use std::time::Duration;

use std::process::Command;

use myagent_tests::{plugin_lib, python_env, workspace_root, Client, FakeLlm, Host};
use serde_json::{json, Value};

/// One AG-UI response being read: its status, and its frames (`id`, event) as they come.
struct Stream {
    status: u16,
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    /// The next frame (keep-alive comments skipped); None at the end of the stream.
    async fn next(&mut self) -> Option<(Option<String>, Value)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                match data {
                    Some(d) => return Some((id, d)),
                    None => continue,
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no frame within 20 s; so far: {}", self.buf))
                .ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every frame to the end of the stream.
    async fn all(&mut self) -> Vec<(Option<String>, Value)> {
        let mut out = Vec::new();
        while let Some(f) = self.next().await {
            out.push(f);
        }
        out
    }
}

async fn post(host: &Host, body: &Value, headers: &[(&str, &str)]) -> Stream {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/agui", host.port))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Stream {
        status: resp.status().as_u16(),
        resp,
        buf: String::new(),
    }
}

/// Every frame of one run posted without extra headers.
async fn run(host: &Host, body: &Value) -> Vec<(Option<String>, Value)> {
    post(host, body, &[]).await.all().await
}

fn input(thread: &str, run: &str, messages: Value) -> Value {
    json!({"threadId": thread, "runId": run, "state": {}, "messages": messages, "tools": [], "context": [], "forwardedProps": {}})
}

fn user(id: &str, text: &str) -> Value {
    json!({"id": id, "role": "user", "content": text})
}

fn call(tool: &str, args: Value) -> Value {
    json!({"tool_calls": [{"name": tool, "arguments": args.to_string()}]})
}

fn types(frames: &[(Option<String>, Value)]) -> Vec<&str> {
    frames
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect()
}

fn text_of(frames: &[(Option<String>, Value)]) -> String {
    frames
        .iter()
        .filter(|(_, e)| e["type"] == "TEXT_MESSAGE_CONTENT")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect()
}

fn host(llm: &FakeLlm, extra: &[&str]) -> Host {
    Host::start(&plugin_lib("testkit_agent"), llm, extra)
}

#[tokio::test]
async fn a_run_is_an_agui_stream_and_its_thread_a_session() {
    let llm = FakeLlm::start();
    let h = host(&llm, &[]);
    llm.script(json!([call("echo", json!({"text": "hi"})), {"text": "Echoed: hi."}]));
    let mut s = post(
        &h,
        &input("thread-1", "run-1", json!([user("u1", "echo hi")])),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.resp.headers()["content-type"], "text/event-stream");
    let frames = s.all().await;
    let t = types(&frames);
    assert_eq!(t[0], "RUN_STARTED", "{t:?}");
    assert_eq!(*t.last().unwrap(), "RUN_FINISHED", "{t:?}");
    for want in [
        "STEP_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
    ] {
        assert!(t.contains(&want), "no {want} in {t:?}");
    }
    assert!(
        frames
            .iter()
            .all(|(id, e)| id.is_some() && e["timestamp"].is_u64()),
        "{frames:?}"
    );
    let start = &frames[0].1;
    assert_eq!(
        (start["threadId"].as_str(), start["runId"].as_str()),
        (Some("thread-1"), Some("run-1"))
    );
    let call = frames
        .iter()
        .find(|(_, e)| e["type"] == "TOOL_CALL_START")
        .unwrap();
    assert_eq!(call.1["toolCallName"], "echo");
    let result = frames
        .iter()
        .find(|(_, e)| e["type"] == "TOOL_CALL_RESULT")
        .unwrap();
    assert_eq!(result.1["toolCallId"], call.1["toolCallId"]);
    assert_eq!(text_of(&frames), "Echoed: hi.");
    let end = &frames.last().unwrap().1;
    assert_eq!(end["outcome"]["type"], "success");
    assert_eq!(end["result"], "Echoed: hi.");
    assert!(
        end["usage"][0]["inputTokens"].as_u64().unwrap() > 0,
        "{end}"
    );

    // The thread is a session: the WebSocket resumes it (an anonymous host: the name is its key).
    let (mut c, resumed) = Client::resume(&h.ws_url(), "thread-1", "thread-1", 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    let fin = c.until("agent.final_answer").await;
    assert_eq!(fin["content"], "Echoed: hi.");
    drop(c);
    // A second run on the thread continues the conversation the model sees.
    llm.script(json!([{"text": "Again."}]));
    let msgs = json!([user("u1", "echo hi"), {"id": "a1", "role": "assistant", "content": "Echoed: hi."}, user("u2", "and again?")]);
    let frames = run(&h, &input("thread-1", "run-2", msgs)).await;
    assert_eq!(text_of(&frames), "Again.");
    let sent = llm.requests().last().unwrap()["messages"].to_string();
    assert!(
        sent.contains("echo hi") && sent.contains("and again?"),
        "{sent}"
    );
}

#[tokio::test]
async fn a_websocket_session_is_an_agui_thread() {
    let llm = FakeLlm::start();
    let h = host(&llm, &[]);
    let (mut c, sid, token) = Client::with_session(&h.ws_url()).await;
    llm.script(json!([{"text": "From the socket."}, {"text": "From AG-UI."}]));
    c.ask(&sid, "first").await;
    c.until("agent.ready").await;
    drop(c);
    let thread = format!("{sid}.{token}");
    let frames = run(&h, &input(&thread, "r", json!([user("u", "second")]))).await;
    assert_eq!(text_of(&frames), "From AG-UI.", "{frames:?}");
    let sent = llm.requests().last().unwrap()["messages"].to_string();
    assert!(
        sent.contains("first") && sent.contains("From the socket."),
        "{sent}"
    );
    // Without the token it is nobody's thread to open: a new one by that name is refused.
    let s = post(
        &h,
        &input(&format!("{sid}.wrong"), "r", json!([user("u", "x")])),
        &[],
    )
    .await;
    assert_eq!(s.status, 404);
}

#[tokio::test]
async fn an_approval_is_an_interrupt_and_the_next_run_resumes_it() {
    let llm = FakeLlm::start();
    // A short resume window: the refusals below must not let it cancel the waiting call.
    let h = host(&llm, &["--resume-window", "1"]);
    llm.script(json!([
        call("guarded", json!({"text": "first"})), {"text": "Sent."},
        call("guarded", json!({"text": "second"})), {"text": "Not sent."},
    ]));
    let msgs = json!([user("u1", "send it")]);
    let frames = run(&h, &input("t-approve", "r1", msgs.clone())).await;
    let t = types(&frames);
    assert_eq!(
        &t[t.len() - 2..],
        ["MESSAGES_SNAPSHOT", "RUN_FINISHED"],
        "{t:?}"
    );
    let end = &frames.last().unwrap().1;
    assert_eq!(end["outcome"]["type"], "interrupt", "{end}");
    let interrupt = &end["outcome"]["interrupts"][0];
    assert_eq!(interrupt["reason"], "tool_call");
    assert_eq!(interrupt["metadata"]["tool"], "guarded");
    assert!(interrupt["expiresAt"].is_string());
    let id = interrupt["id"].as_str().unwrap().to_owned();

    // A new message while it waits: refused as the interrupt contract says.
    let frames = run(
        &h,
        &input("t-approve", "r2", json!([user("u2", "never mind")])),
    )
    .await;
    assert_eq!(types(&frames), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(frames[1].1["code"], "interrupt_pending");
    // A stale interrupt id: refused too.
    let mut stale = input("t-approve", "r3", msgs.clone());
    stale["resume"] =
        json!([{"interruptId": "nope", "status": "resolved", "payload": {"approved": true}}]);
    let frames = run(&h, &stale).await;
    assert_eq!(frames.last().unwrap().1["code"], "invalid_resume");

    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Approved: the call runs, the run goes on to its answer.
    let mut ok = input("t-approve", "r4", msgs.clone());
    ok["resume"] =
        json!([{"interruptId": id, "status": "resolved", "payload": {"approved": true}}]);
    let frames = run(&h, &ok).await;
    let t = types(&frames);
    assert!(t.contains(&"TOOL_CALL_RESULT"), "{t:?}");
    let result = frames
        .iter()
        .find(|(_, e)| e["type"] == "TOOL_CALL_RESULT")
        .unwrap();
    assert_eq!(result.1["toolCallId"], id.as_str());
    assert!(
        result.1["content"].as_str().unwrap().contains("first"),
        "{result:?}"
    );
    assert_eq!(frames.last().unwrap().1["outcome"]["type"], "success");
    assert_eq!(text_of(&frames), "Sent.");

    // Denied (cancelled): the model hears it was not run.
    let frames = run(&h, &input("t-approve", "r5", json!([user("u3", "again")]))).await;
    let id = frames.last().unwrap().1["outcome"]["interrupts"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut no = input("t-approve", "r6", json!([user("u3", "again")]));
    no["resume"] = json!([{"interruptId": id, "status": "cancelled"}]);
    let frames = run(&h, &no).await;
    let result = frames
        .iter()
        .find(|(_, e)| e["type"] == "TOOL_CALL_RESULT")
        .unwrap();
    assert!(
        result.1["content"].as_str().unwrap().contains("denied"),
        "{result:?}"
    );
    assert_eq!(text_of(&frames), "Not sent.");
}

#[tokio::test]
async fn a_frontend_tool_is_offered_called_and_answered_by_the_client() {
    let llm = FakeLlm::start();
    let h = host(&llm, &[]);
    llm.script(json!([call("confirm_with_user", json!({"question": "Ship it?"})), {"text": "Shipped, as you confirmed."}]));
    let tools = json!([{"name": "confirm_with_user", "description": "Ask the user a yes/no question in the page",
        "parameters": {"type": "object", "properties": {"question": {"type": "string"}}}}]);
    let mut body = input("t-front", "r1", json!([user("u1", "ship it")]));
    body["tools"] = tools.clone();
    let frames = run(&h, &body).await;
    let t = types(&frames);
    // The call, then the end of the run: no result (the client runs it).
    assert!(!t.contains(&"TOOL_CALL_RESULT"), "{t:?}");
    let end = &frames.last().unwrap().1;
    assert_eq!(end["outcome"]["type"], "success", "{end}");
    let call = frames
        .iter()
        .find(|(_, e)| e["type"] == "TOOL_CALL_START")
        .unwrap();
    assert_eq!(call.1["toolCallName"], "confirm_with_user");
    let id = call.1["toolCallId"].as_str().unwrap().to_owned();
    assert_eq!(end["outcome"]["pendingToolCallIds"], json!([id]));
    let offered = llm.requests()[0]["tools"].to_string();
    assert!(
        offered.contains("confirm_with_user") && offered.contains("get_time")
            || offered.contains("echo"),
        "{offered}"
    );
    // The next run brings the result; the model sees it and answers.
    let msgs = json!([user("u1", "ship it"),
        {"id": "a1", "role": "assistant", "toolCalls": [{"id": id, "type": "function", "function": {"name": "confirm_with_user", "arguments": "{\"question\":\"Ship it?\"}"}}]},
        {"id": "t1", "role": "tool", "toolCallId": id, "content": "yes"}]);
    let mut body = input("t-front", "r2", msgs);
    body["tools"] = tools;
    let frames = run(&h, &body).await;
    assert_eq!(text_of(&frames), "Shipped, as you confirmed.", "{frames:?}");
    assert!(
        !types(&frames).contains(&"TOOL_CALL_RESULT"),
        "the result is the client's own message"
    );
    let reqs = llm.requests();
    let tool_msg = reqs.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .cloned()
        .unwrap();
    assert_eq!(tool_msg["content"], "yes");
    // A result for no waiting call: refused as a run error.
    let stray =
        json!([user("u", "x"), {"id": "t9", "role": "tool", "toolCallId": "nope", "content": "?"}]);
    let frames = run(&h, &input("t-front", "r3", stray)).await;
    assert_eq!(
        frames.last().unwrap().1["code"],
        "invalid_tool_result",
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_dropped_stream_reconnects_with_last_event_id_and_misses_nothing() {
    let llm = FakeLlm::start();
    let h = host(&llm, &[]);
    let answer = "word ".repeat(40);
    llm.script(json!([{"text": answer, "chunk_chars": 5, "delay_ms": 25}]));
    let mut body = input("t-reconnect", "r1", json!([user("u", "long")]));
    body["forwardedProps"]["background"] = true.into();
    let mut s = post(&h, &body, &[]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.next().await.unwrap());
    }
    drop(s);
    let last = got[2].0.clone().unwrap();
    let rest = post(&h, &body, &[("last-event-id", &last)])
        .await
        .all()
        .await;
    assert!(!rest.is_empty());
    assert_eq!(rest.last().unwrap().1["type"], "RUN_FINISHED");
    // No duplicate and no gap: the three frames and the rest are one whole run.
    let mut all = got.clone();
    all.extend(rest.iter().cloned());
    assert_eq!(text_of(&all), answer);
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_deref().unwrap()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "{ids:?}");
    // Asked again after the run ended: the very same frames (the ids are the log's).
    let again = post(&h, &body, &[("last-event-id", &last)])
        .await
        .all()
        .await;
    let strip = |f: &[(Option<String>, Value)]| {
        f.iter()
            .map(|(i, e)| (i.clone(), e.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&again), strip(&rest));
    // A malformed id is refused.
    let bad = post(&h, &body, &[("last-event-id", "yesterday")]).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_dropped_stream_cancels_its_run_unless_it_runs_in_the_background() {
    let llm = FakeLlm::start();
    let h = host(&llm, &[]);
    let long = json!({"text": "x".repeat(200), "chunk_chars": 2, "delay_ms": 20});
    llm.script(json!([long, {"text": "y".repeat(40), "chunk_chars": 2, "delay_ms": 20}]));
    // How a run whose stream dropped after two frames ended, seen from the WebSocket.
    let dropped = |thread: &'static str, background: bool| {
        let h = &h;
        async move {
            let mut body = input(thread, "r1", json!([user("u", "a")]));
            body["forwardedProps"]["background"] = background.into();
            let mut s = post(h, &body, &[]).await;
            s.next().await.unwrap();
            s.next().await.unwrap();
            drop(s);
            // The host learns of the drop when hyper sees the connection close (at most a
            // write or two later). A client resuming the session before that takes it over,
            // and the run is then that client's, not cancelled — so this one comes back once
            // the host has seen the drop.
            h.proc
                .wait_stderr_async(
                    &["AG-UI stream ended before its run", thread],
                    std::time::Duration::from_secs(10),
                )
                .await;
            let (mut c, _) = Client::resume(&h.ws_url(), thread, thread, 0).await;
            let e = c
                .until_any(&["agent.interrupted", "agent.final_answer"])
                .await;
            e["event"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(dropped("t-drop", false).await, "agent.interrupted");
    assert_eq!(dropped("t-bg", true).await, "agent.final_answer");
}

#[tokio::test]
async fn refusals_are_http_answers_with_reasons() {
    let llm = FakeLlm::start();
    let h = host(&llm, &["--auth-token", "s3cret-agui"]);
    let body = input("t-auth", "r", json!([user("u", "hi")]));
    assert_eq!(post(&h, &body, &[]).await.status, 401);
    assert_eq!(
        post(&h, &body, &[("authorization", "Bearer nope")])
            .await
            .status,
        401
    );
    let evil = [
        ("authorization", "Bearer s3cret-agui"),
        ("origin", "https://evil.example"),
    ];
    assert_eq!(post(&h, &body, &evil).await.status, 403);
    let auth = [("authorization", "Bearer s3cret-agui")];
    let bad = post(&h, &json!({"runId": "r", "messages": []}), &auth).await;
    assert_eq!(bad.status, 400);
    let text = bad.resp.text().await.unwrap();
    assert!(text.contains("threadId"), "{text}");
    // A busy thread: the second message is refused (on_busy reject) with 409 and a JSON body.
    llm.script(json!([{"text": "z".repeat(100), "chunk_chars": 2, "delay_ms": 20}]));
    let mut first = post(&h, &body, &auth).await;
    assert_eq!(first.status, 200);
    first.next().await.unwrap();
    let busy = post(
        &h,
        &input("t-auth", "r2", json!([user("u2", "and?")])),
        &auth,
    )
    .await;
    assert_eq!(busy.status, 409);
    let text = busy.resp.text().await.unwrap();
    assert!(text.contains("already_running"), "{text}");
    let frames = first.all().await;
    assert_eq!(frames.last().unwrap().1["type"], "RUN_FINISHED");
}

/// The example client on the official `@ag-ui/client`, if `npm ci` has run in examples/clients.
fn agui_client() -> Option<std::path::PathBuf> {
    let dir = workspace_root().join("examples/clients");
    if dir.join("node_modules/@ag-ui/client").is_dir() {
        return Some(dir.join("agui_client.mjs"));
    }
    if std::env::var("MYAGENT_REQUIRE_NODE_CLIENT").as_deref() == Ok("1") {
        panic!("@ag-ui/client is required (MYAGENT_REQUIRE_NODE_CLIENT=1): run npm ci in examples/clients");
    }
    eprintln!("SKIPPED: the @ag-ui/client test needs Node.js and npm ci in examples/clients");
    None
}

#[tokio::test]
async fn the_official_validator_and_client_accept_our_streams() {
    let llm = FakeLlm::start();
    let h = host(&llm, &[]);
    let url = format!("http://127.0.0.1:{}/agui", h.port);
    if let Some(py) = python_env("the AG-UI conformance validator") {
        let validator = workspace_root().join(&py).with_file_name("ag-ui-validate");
        for script in [
            json!([{"text": "Hello there."}]),
            json!([call("echo", json!({"text": "hi"})), {"reasoning": "Echo it back.", "text": "Echoed: hi."}]),
        ] {
            llm.script(script.clone());
            let out = Command::new(&validator)
                .args(["--no-color", "--max-warnings", "0", &url])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.contains("no conformance violations"),
                "ag-ui-validate on {script}:\n{said}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let Some(client) = agui_client() else { return };
    let script =
        json!([call("echo", json!({"text": "hi"})), {"text": "Echoed: hi.", "chunk_chars": 3}]);
    llm.script(script.clone());
    let out = Command::new("node")
        .arg(&client)
        .args([&format!("http://127.0.0.1:{}", h.port), "echo hi"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "agui_client.mjs:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("tool call: echo {\"text\":\"hi\"}"), "{said}");
    let answer = said
        .lines()
        .find_map(|l| l.strip_prefix("answer: "))
        .unwrap_or_default();
    // The same script over the WebSocket: the same answer.
    llm.script(script);
    let (mut c, sid, _) = Client::with_session(&h.ws_url()).await;
    c.ask(&sid, "echo hi").await;
    let fin = c.until("agent.final_answer").await;
    assert_eq!(answer, fin["content"].as_str().unwrap(), "{said}");
}
