//! Several hosts on one Redis (`--store redis://…`): any host serves any session. A real
//! `redis-server` (started here on a free loopback port, no persistence), real hosts, real
//! WebSocket clients that move from one host to another — between turns, in the middle of a
//! streaming turn, with a cancel, and after the host running the turn was killed.

use std::time::{Duration, Instant};

use myagent_tests::{plugin_lib, texts_of, Client, FakeLlm, Host, Redis};
use serde_json::{json, Value};

fn host(llm: &FakeLlm, redis: &Redis, extra: &[&str]) -> Host {
    let url = redis.url();
    let mut args = vec!["--store", url.as_str()];
    args.extend_from_slice(extra);
    Host::start(&plugin_lib("testkit_agent"), llm, &args)
}

async fn resume(host: &Host, sid: &str, token: &str, last_seq: u64) -> (Client, Value) {
    Client::resume(&host.ws_url(), sid, token, last_seq).await
}

/// Events of the session after the resume header, until `until` (included).
async fn collect_until(c: &mut Client, until: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let e = c.recv_timeout(Duration::from_secs(15)).await.expect(until);
        let done = e["event"] == until;
        if e.get("seq").is_some() {
            out.push(e);
        }
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn a_session_made_on_one_host_is_resumed_on_another_with_its_history() {
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let (a, b) = (host(&llm, &redis, &[]), host(&llm, &redis, &[]));
    assert!(a.proc.stdout_text().contains("shared with every host"));
    let (mut c, sid, token) = Client::with_session(&a.ws_url()).await;
    llm.script(json!([{"text": "Noted: kiwi."}]));
    c.ask(&sid, "Remember the word kiwi.").await;
    let ready = c.until("agent.ready").await;
    let last_seq = ready["seq"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the writer's interval
    drop(c);

    let (mut c, resumed) = resume(&b, &sid, &token, 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    assert_eq!(resumed["last_seq"], last_seq);
    let replayed = collect_until(&mut c, "agent.ready").await;
    assert_eq!(replayed.last().unwrap()["seq"], last_seq);
    llm.script(json!([{"text": "The word was kiwi."}]));
    c.ask(&sid, "Which word?").await;
    let answer = c.until("agent.final_answer").await;
    assert_eq!(answer["seq"].as_u64().unwrap(), last_seq + 4); // thinking, partial, usage, final
    let req = llm.requests().pop().unwrap();
    assert_eq!(
        texts_of(&req, "user"),
        ["Remember the word kiwi.", "Which word?"]
    );
    c.until("agent.ready").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);

    // Back on A, whose own copy is now stale: it restores the store's (with B's turn).
    let (mut c, resumed) = resume(&a, &sid, &token, last_seq + 5).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    assert_eq!(resumed["last_seq"], last_seq + 5); // + thinking, partial, usage, final, ready
    llm.script(json!([{"text": "Still kiwi."}]));
    c.ask(&sid, "And now?").await;
    c.until("agent.final_answer").await;
    let req = llm.requests().pop().unwrap();
    assert_eq!(
        texts_of(&req, "user"),
        ["Remember the word kiwi.", "Which word?", "And now?"]
    );
}

#[tokio::test]
async fn a_turn_streaming_on_one_host_is_continued_on_another() {
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let (a, b) = (
        host(&llm, &redis, &["--answer-holdback", "0"]),
        host(&llm, &redis, &[]),
    );
    let (mut c, sid, token) = Client::with_session(&a.ws_url()).await;
    c.ask(&sid, "bench:80@25").await; // 80 chunks, 2 s
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let e = c.recv().await;
        if e["event"] == "agent.partial_answer" {
            seen.push(e);
        }
    }
    let last_seq = seen.last().unwrap()["seq"].as_u64().unwrap();
    let before: String = seen
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    drop(c); // the client's connection to A is gone; it reconnects through B

    let (mut c, resumed) = resume(&b, &sid, &token, last_seq).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    let rest = collect_until(&mut c, "agent.ready").await;
    // Every event after last_seq once, in order, no gap.
    let seqs: Vec<u64> = rest.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (last_seq + 1..last_seq + 1 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{rest:#?}");
    let after: String = rest
        .iter()
        .filter(|e| e["event"] == "agent.partial_answer")
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    let fin = rest
        .iter()
        .find(|e| e["event"] == "agent.final_answer")
        .unwrap();
    assert_eq!(format!("{before}{after}"), fin["content"].as_str().unwrap());
    assert_eq!(fin["content"].as_str().unwrap().matches('~').count(), 80);

    // The next message runs on B.
    let runs_on_b = b.metric("myagent_runs_started_total");
    llm.script(json!([{"text": "next"}]));
    c.ask(&sid, "and then?").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "next");
    assert_eq!(b.metric("myagent_runs_started_total"), runs_on_b + 1);
    let req = llm.requests().pop().unwrap();
    assert_eq!(texts_of(&req, "user"), ["bench:80@25", "and then?"]);
}

#[tokio::test]
async fn a_cancel_sent_to_another_host_stops_the_turn() {
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let (a, b) = (host(&llm, &redis, &[]), host(&llm, &redis, &[]));
    let (mut c, sid, token) = Client::with_session(&a.ws_url()).await;
    c.ask(&sid, "bench:400@25").await; // 10 s
    let first = c.until("agent.partial_answer").await;
    drop(c);
    let (mut c, _) = resume(&b, &sid, &token, first["seq"].as_u64().unwrap()).await;
    c.until("agent.partial_answer").await; // following
    let t0 = Instant::now();
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    c.until("agent.ready").await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "the cancel took {took:?}");
    assert_eq!(a.metric("myagent_runs_cancelled_total"), 1);
}

#[tokio::test]
async fn a_follower_that_leaves_does_not_cancel_the_turn() {
    // Security round 3, item 14: ending a follow never cancels the turn on the other host.
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let a = host(&llm, &redis, &[]);
    let b = host(&llm, &redis, &["--resume-window", "1"]);
    let (mut c, sid, token) = Client::with_session(&a.ws_url()).await;
    c.ask(&sid, "bench:120@25").await; // 3 s
    let first = c.until("agent.partial_answer").await;
    drop(c);
    let (mut c, _) = resume(&b, &sid, &token, first["seq"].as_u64().unwrap()).await;
    c.until("agent.partial_answer").await; // following on B
    drop(c); // B's client goes; B's resume window (1 s) passes mid-turn
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.proc
        .wait_stderr("no longer following", Duration::from_secs(5));
    // The turn finishes on A, uncancelled, and a client back on A gets its whole answer.
    let (mut c, _) = resume(&a, &sid, &token, first["seq"].as_u64().unwrap()).await;
    let fin = c.until("agent.final_answer").await;
    assert_eq!(fin["metadata"]["reason"], "answer", "{fin}");
    assert_eq!(a.metric("myagent_runs_cancelled_total"), 0);
}

#[tokio::test]
async fn a_host_killed_mid_turn_is_taken_over_by_another() {
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let (a, b) = (host(&llm, &redis, &[]), host(&llm, &redis, &[]));
    let (mut c, sid, token) = Client::with_session(&a.ws_url()).await;
    llm.script(json!([{"text": "first answer"}]));
    c.ask(&sid, "first").await;
    c.until("agent.ready").await;
    c.ask(&sid, "bench:400@25").await;
    let e = c.until("agent.partial_answer").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill9();
    drop(c);
    let (mut c, resumed) = resume(&b, &sid, &token, e["seq"].as_u64().unwrap()).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    let interrupted = c.until("agent.interrupted").await;
    assert_eq!(interrupted["reason"], "host_lost");
    c.until("agent.ready").await;
    llm.script(json!([{"text": "go on"}]));
    c.ask(&sid, "still there?").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "go on");
    let req = llm.requests().pop().unwrap();
    assert_eq!(
        texts_of(&req, "user"),
        ["first", "bench:400@25", "still there?"]
    );
}

#[tokio::test]
async fn stored_sessions_expire_and_an_unreachable_store_is_a_clear_error() {
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let (a, b) = (
        host(&llm, &redis, &["--session-ttl", "1"]),
        host(&llm, &redis, &["--session-ttl", "1"]),
    );
    let (c, sid, token) = Client::with_session(&a.ws_url()).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, e) = resume(&b, &sid, &token, 0).await;
    assert_eq!(e["code"], "session_not_found", "{e}");

    // A store that cannot be reached at start: a clear start-up error.
    let out = myagent_tests::host_command()
        .args(["serve"])
        .arg(plugin_lib("testkit_agent"))
        .args(["--port", "0", "--store", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--store redis://127.0.0.1:1: cannot reach the session store"),
        "{err}"
    );

    // The store going away later: a resume says so.
    let (c, sid, token) = Client::with_session(&a.ws_url()).await;
    drop(c);
    drop(redis);
    let (_, e) = resume(&b, &sid, &token, 0).await;
    assert_eq!(e["code"], "store_unavailable", "{e}");
}
