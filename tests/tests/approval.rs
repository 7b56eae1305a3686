//! Human approval of tool calls: a call to a tool that needs approval (the plugin's `guarded`,
//! or any tool named with `--require-approval`) waits for `user.tool_approval`. Real host, real
//! testkit plugin, the fake model over HTTP.

use std::time::Duration;

use myagent_tests::{plugin_lib, Client, FakeLlm, Host};
use serde_json::{json, Value};

async fn setup(extra: &[&str]) -> (FakeLlm, Host, Client, String, String) {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, extra);
    let (c, sid, token) = Client::with_session(&host.ws_url()).await;
    (llm, host, c, sid, token)
}

fn call(tool: &str, args: Value) -> Value {
    json!({"tool_calls": [{"name": tool, "arguments": args.to_string()}]})
}

async fn decide(c: &mut Client, sid: &str, step_id: &Value, approved: bool, reason: Option<&str>) {
    let mut m = json!({"event": "user.tool_approval", "session_id": sid, "step_id": step_id, "approved": approved});
    if let Some(r) = reason {
        m["reason"] = r.into();
    }
    c.send(m).await;
}

/// The text of the last `tool` message the model was sent.
fn last_tool_reply(llm: &FakeLlm) -> String {
    let reqs = llm.requests();
    let msgs = reqs.last().unwrap()["messages"].as_array().unwrap().clone();
    msgs.iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .and_then(|m| m["content"].as_str())
        .expect("a tool reply")
        .to_owned()
}

#[tokio::test]
async fn an_approved_call_runs_and_a_denied_one_does_not() {
    let (llm, _host, mut c, sid, _) = setup(&[]).await;
    llm.script(json!([
        call("guarded", json!({"text": "first"})),
        {"text": "Sent."},
        call("guarded", json!({"text": "second"})),
        {"text": "Not sent, as you wish."},
    ]));
    c.ask(&sid, "do it").await;
    let tc = c.until("agent.tool_call").await;
    let ask = c.until("agent.tool_approval_required").await;
    assert_eq!(ask["step_id"], tc["step_id"]);
    assert_eq!(ask["metadata"]["tool"], "guarded");
    assert_eq!(ask["metadata"]["args"], json!({"text": "first"}));
    assert_eq!(ask["metadata"]["step"], 1);
    assert!(ask["seq"].as_u64().unwrap() > tc["seq"].as_u64().unwrap());
    // Nothing runs while it waits: the model is not asked again.
    assert!(c.recv_timeout(Duration::from_millis(400)).await.is_none());
    assert_eq!(llm.requests().len(), 1);
    decide(&mut c, &sid, &ask["step_id"], true, None).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "success");
    let first_run = r["content"].as_str().unwrap().to_owned();
    assert!(first_run.starts_with("first (run "), "{first_run}");
    assert_eq!(c.until("agent.final_answer").await["content"], "Sent.");
    c.until("agent.ready").await;

    c.ask(&sid, "again").await;
    let ask = c.until("agent.tool_approval_required").await;
    decide(&mut c, &sid, &ask["step_id"], false, Some("not today")).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed");
    let denied = "Error: the user denied this call to `guarded` (not today); it was not run.";
    assert_eq!(r["content"], denied);
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "Not sent, as you wish."
    );
    // The model was told (its request for the answer came after the result).
    assert_eq!(last_tool_reply(&llm), denied);
    // A decision for a call that no longer waits is a clear error; the session goes on.
    decide(&mut c, &sid, &ask["step_id"], true, None).await;
    let e = c.until("agent.error").await;
    assert_eq!(e["code"], "approval_not_pending");
    assert_eq!(e["session_id"], sid.as_str());
}

#[tokio::test]
async fn the_operator_can_require_approval_and_an_unanswered_call_is_denied() {
    let (llm, _host, mut c, sid, _) =
        setup(&["--require-approval", "echo", "--approval-timeout", "1"]).await;
    llm.script(json!([
        call("echo", json!({"text": "hi"})),
        {"text": "It was not approved."},
    ]));
    c.ask(&sid, "echo hi").await;
    let ask = c.until("agent.tool_approval_required").await;
    assert_eq!(ask["metadata"]["tool"], "echo");
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed");
    assert_eq!(
        r["content"],
        "Error: this call to `echo` was not approved within 1 s, so it was not run."
    );
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "It was not approved."
    );
    decide(&mut c, &sid, &ask["step_id"], true, None).await;
    assert_eq!(c.until("agent.error").await["code"], "approval_not_pending");
}

#[tokio::test]
async fn cancel_while_a_call_waits_ends_the_run_and_withdraws_the_call() {
    let (llm, _host, mut c, sid, _) = setup(&[]).await;
    llm.script(json!([call("guarded", json!({"text": "x"})), {"text": "next turn"}]));
    c.ask(&sid, "do it").await;
    let ask = c.until("agent.tool_approval_required").await;
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    c.until("agent.ready").await;
    assert!(c.named("agent.tool_result").is_empty());
    decide(&mut c, &sid, &ask["step_id"], true, None).await;
    assert_eq!(c.until("agent.error").await["code"], "approval_not_pending");
    // The conversation is well formed: the next turn runs.
    c.ask(&sid, "hello").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "next turn");
}

#[tokio::test]
async fn a_waiting_call_survives_a_reconnect_and_is_decided_from_the_new_connection() {
    let (llm, host, mut c, sid, token) = setup(&[]).await;
    llm.script(json!([
        call("guarded", json!({"text": "later"})),
        {"text": "Done after the reconnect."},
    ]));
    c.ask(&sid, "do it").await;
    let ask = c.until("agent.tool_approval_required").await;
    let last_seq = ask["seq"].as_u64().unwrap();
    drop(c); // the connection drops while the call waits

    // Resumed having processed everything: the header still lists the waiting call.
    let mut c = Client::connect(&host.ws_url()).await;
    c.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": last_seq, "capabilities": ["tool_approval"]}))
        .await;
    let resumed = c.until("agent.session_resumed").await;
    let pending = resumed["pending_approvals"].as_array().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["step_id"], ask["step_id"]);
    assert_eq!(pending[0]["tool"], "guarded");
    assert_eq!(pending[0]["args"], json!({"text": "later"}));
    drop(c);

    // Resumed from the start: the request itself is replayed too.
    let mut c = Client::connect(&host.ws_url()).await;
    c.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": 0, "capabilities": ["tool_approval"]}))
        .await;
    c.until("agent.session_resumed").await;
    let again = c.until("agent.tool_approval_required").await;
    assert_eq!(again["step_id"], ask["step_id"]);
    assert_eq!(again["seq"], ask["seq"]);
    decide(&mut c, &sid, &again["step_id"], true, None).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "success");
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "Done after the reconnect."
    );
}

#[tokio::test]
async fn parallel_calls_wait_and_are_decided_independently() {
    let (llm, _host, mut c, sid, _) = setup(&[]).await;
    llm.script(json!([
        {"tool_calls": [
            {"name": "guarded", "arguments": "{\"text\":\"a\"}"},
            {"name": "echo", "arguments": "{\"text\":\"free\"}"},
            {"name": "guarded", "arguments": "{\"text\":\"b\"}"}
        ]},
        {"text": "Mixed."},
    ]));
    c.ask(&sid, "three at once").await;
    // Both guarded calls wait, and the call that needs no approval does not wait for them
    // (the three run concurrently: these come in any order).
    let (mut asks, mut free) = (Vec::new(), None);
    while asks.len() < 2 || free.is_none() {
        let e = c
            .until_any(&["agent.tool_approval_required", "agent.tool_result"])
            .await;
        match e["event"] == "agent.tool_result" {
            true => free = Some(e),
            false => asks.push(e),
        }
    }
    assert_eq!(free.unwrap()["content"], "free");
    let (first, second) = (asks.remove(0), asks.remove(0));
    assert_ne!(first["step_id"], second["step_id"]);
    let (a, b) = match first["metadata"]["args"]["text"] == "a" {
        true => (first, second),
        false => (second, first),
    };
    decide(&mut c, &sid, &b["step_id"], false, None).await;
    decide(&mut c, &sid, &a["step_id"], true, None).await;
    let mut results = Vec::new();
    while results.len() < 2 {
        let r = c.until("agent.tool_result").await;
        results.push((r["step_id"].clone(), r["metadata"]["status"].clone()));
    }
    assert!(results.contains(&(a["step_id"].clone(), json!("success"))));
    assert!(results.contains(&(b["step_id"].clone(), json!("failed"))));
    assert_eq!(c.until("agent.final_answer").await["content"], "Mixed.");
    // Another connection cannot decide this session's calls.
    let mut other = Client::connect(&_host.ws_url()).await;
    decide(&mut other, &sid, &a["step_id"], true, None).await;
    assert_eq!(
        other.until("agent.error").await["code"],
        "session_not_found"
    );
}

/// A client that cannot approve (the design document's own clients: no `tool_approval`
/// capability) does not wait 300 s for a decision it will never send: the call fails at once with
/// a tool result saying why, and the turn ends. A capable client resuming the session restores
/// the wait.
#[tokio::test]
async fn a_client_that_cannot_approve_gets_an_answer_not_a_hang() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let mut c = Client::connect(&host.ws_url()).await;
    c.send(json!({"event": "user.create_session", "timestamp": 0}))
        .await;
    let created = c.until("agent.session_created").await;
    let sid = created["session_id"].as_str().unwrap().to_owned();
    let token = created["resume_token"].as_str().unwrap().to_owned();
    llm.script(json!([call("guarded", json!({"text": "x"})), {"text": "I could not."}]));
    let t0 = std::time::Instant::now();
    c.ask(&sid, "do it").await;
    let result = c.until("agent.tool_result").await;
    assert_eq!(result["metadata"]["status"], "failed", "{result}");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("cannot give one"),
        "{result}"
    );
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "I could not."
    );
    assert!(c.named("agent.tool_approval_required").is_empty());
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(last_tool_reply(&llm).contains("capability"));
    c.until("agent.ready").await;
    // Resumed by a client that can approve: the call waits for it again.
    drop(c);
    let (mut c, _) = Client::resume(&host.ws_url(), &sid, &token, 0).await;
    llm.script(json!([call("guarded", json!({"text": "y"})), {"text": "Done."}]));
    c.ask(&sid, "again").await;
    let ask = c.until("agent.tool_approval_required").await;
    decide(&mut c, &sid, &ask["step_id"], true, None).await;
    assert_eq!(c.until("agent.final_answer").await["content"], "Done.");
}
