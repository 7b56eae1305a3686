//! Principals end to end (`--auth-tokens-file`): a session belongs to the principal that made
//! it — invisible and untouchable to every other (resume, message, cancel, history, approval,
//! list, delete), also after kill -9 and on another host through Redis — its owner resumes it
//! by id from a second device and lists its sessions with titles and usage; quotas by tier
//! (tokens, messages a minute, runs at once) refuse before any model call while other
//! principals are served, shared by hosts on one Redis; the file is re-read when it changes;
//! an anonymous host is unchanged.

use std::time::Duration;

use myagent_tests::{plugin_lib, Client, FakeLlm, Host, Redis, TempDir};
use serde_json::{json, Value};

const ALICE: &str = "alice-secret";
const BOB: &str = "bob-secret";

fn tokens_file(dir: &TempDir, tier: &str) -> std::path::PathBuf {
    let path = dir.path().join("principals.toml");
    std::fs::write(
        &path,
        format!(
            "[[principal]]\nuser = \"alice\"\ntoken = \"{ALICE}\"\ntier = \"free\"\n\n\
             [[principal]]\nuser = \"bob\"\ntoken_sha256 = \"{}\"\n\n[tier.free]\n{tier}\n",
            myagent_host::store::hash_token(BOB)
        ),
    )
    .unwrap();
    path
}

fn start(llm: &FakeLlm, store: &str, tokens: &std::path::Path, extra: &[&str]) -> Host {
    let mut args = vec![
        "--store",
        store,
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Host::start(&plugin_lib("testkit_agent"), llm, &args)
}

fn url(host: &Host, token: &str) -> String {
    format!("{}/?token={token}", host.ws_url())
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion})
}

/// One turn to its end; returns the final event.
async fn turn(c: &mut Client, sid: &str, said: &str) -> Value {
    c.ask(sid, said).await;
    let last = c
        .until_any(&["agent.final_answer", "agent.error", "agent.interrupted"])
        .await;
    if last["event"] != "agent.error" || last.get("seq").is_some() {
        c.until("agent.ready").await;
    }
    last
}

async fn connect(host: &Host, token: &str) -> Client {
    let mut c = Client::connect(&url(host, token)).await;
    assert_eq!(c.recv().await["event"], "system.connected");
    c
}

async fn list(c: &mut Client, extra: Value) -> Value {
    let mut ask = json!({"event": "user.list_sessions"});
    ask.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c.send(ask).await;
    c.until_any(&["agent.sessions", "agent.error"]).await
}

fn ids(listed: &Value) -> Vec<String> {
    listed["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends `ask` about `sid` and expects `session_not_found` about it.
async fn refused(c: &mut Client, ask: Value, sid: &str) {
    c.send(ask.clone()).await;
    let e = c.until("agent.error").await;
    assert_eq!(e["code"], "session_not_found", "{ask} → {e}");
    assert_eq!(e["session_id"], sid, "{e}");
}

#[tokio::test]
async fn a_principals_sessions_are_its_own_and_its_quota_is_its_own() {
    let dir = TempDir::new("principals");
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    let tokens = tokens_file(&dir, "tokens_per_day = 300");
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &tokens, &[]);

    let mut alice = connect(&host, ALICE).await;
    let (sid, token) = alice.create_session().await;
    llm.script(json!([{"text": "Sunny.", "usage": usage(200, 150)}]));
    assert_eq!(
        turn(&mut alice, &sid, "  What is\nthe weather in Paris today?").await["event"],
        "agent.final_answer"
    );

    // Bob: not with the resume token, not by id; nothing of it listed, nothing to delete.
    let mut bob = connect(&host, BOB).await;
    let resume = |token: Option<&str>| {
        let mut v = json!({"event": "user.resume_session", "session_id": sid, "last_seq": 0});
        if let Some(t) = token {
            v["resume_token"] = t.into();
        }
        v
    };
    refused(&mut bob, resume(Some(&token)), &sid).await;
    refused(&mut bob, resume(None), &sid).await;
    for ask in [
        json!({"event": "user.message", "session_id": sid, "content": "hi"}),
        json!({"event": "user.cancel", "session_id": sid}),
        json!({"event": "user.get_history", "session_id": sid}),
        json!({"event": "user.tool_approval", "session_id": sid, "step_id": "x", "approved": true}),
        json!({"event": "user.delete_session", "session_id": sid}),
    ] {
        refused(&mut bob, ask, &sid).await;
    }
    assert_eq!(ids(&list(&mut bob, json!({})).await), Vec::<String>::new());

    // Alice's token quota is spent (350 of 300): refused before any model call, with what was
    // over; Bob (no tier) is served meanwhile.
    let calls = llm.requests().len();
    let e = turn(&mut alice, &sid, "And tomorrow?").await;
    assert_eq!(e["code"], "quota_exceeded", "{e}");
    assert_eq!(
        (e["quota"].as_str(), e["limit"].as_u64(), e["used"].as_u64()),
        (Some("tokens_per_day"), Some(300), Some(350)),
        "{e}"
    );
    let retry = e["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 86_400_000, "{e}");
    assert_eq!(
        llm.requests().len(),
        calls,
        "no model request for a refused message"
    );
    let (bob_sid, _) = bob.create_session().await;
    llm.script(json!([{"text": "Hello Bob.", "usage": usage(500, 500)}]));
    assert_eq!(
        turn(&mut bob, &bob_sid, "hi").await["content"],
        "Hello Bob."
    );

    // A second device: Alice resumes by id alone and lists her session with its title.
    let mut phone = connect(&host, ALICE).await;
    phone.send(resume(None)).await;
    let r = phone
        .until_any(&["agent.session_resumed", "agent.error"])
        .await;
    assert_eq!(r["event"], "agent.session_resumed", "{r}");
    assert_eq!(r["usage"]["input_tokens"], 200);
    let listed = list(&mut phone, json!({})).await;
    assert_eq!(ids(&listed), vec![sid.clone()], "{listed}");
    let entry = &listed["sessions"][0];
    assert_eq!(
        entry["title"], "What is the weather in Paris today?",
        "{entry}"
    );
    assert_eq!(
        (entry["turns"].as_u64(), entry["running"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(entry["agent"], "testkit");
    assert_eq!(entry["usage"]["output_tokens"], 150);
    assert!(entry["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(listed.get("next_before").is_none());

    // After kill -9 the owner is still the owner.
    host.kill9();
    drop(host);
    let host = start(&llm, &store, &tokens, &[]);
    let mut bob = connect(&host, BOB).await;
    refused(&mut bob, resume(Some(&token)), &sid).await;
    let mut alice = connect(&host, ALICE).await;
    assert_eq!(ids(&list(&mut alice, json!({})).await), vec![sid.clone()]);
    alice.send(resume(None)).await;
    assert_eq!(
        alice
            .until_any(&["agent.session_resumed", "agent.error"])
            .await["event"],
        "agent.session_resumed"
    );
    // Deleting: gone from the list and from the store.
    alice
        .send(json!({"event": "user.delete_session", "session_id": sid}))
        .await;
    let d = alice
        .until_any(&["agent.session_deleted", "agent.error"])
        .await;
    assert_eq!(d["event"], "agent.session_deleted", "{d}");
    assert_eq!(
        ids(&list(&mut alice, json!({})).await),
        Vec::<String>::new()
    );
    let mut again = connect(&host, ALICE).await;
    refused(&mut again, resume(Some(&token)), &sid).await;
}

#[tokio::test]
async fn lists_page_newest_first() {
    let dir = TempDir::new("principals-pages");
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    let tokens = tokens_file(&dir, "");
    let llm = FakeLlm::start();
    let host = start(
        &llm,
        &store,
        &tokens,
        &["--max-sessions-per-connection", "64"],
    );
    let mut alice = connect(&host, ALICE).await;
    let mut made = Vec::new();
    for i in 0..7 {
        let (sid, _) = alice.create_session().await;
        llm.script(json!([{"text": "ok"}]));
        turn(&mut alice, &sid, &format!("question {i}")).await;
        made.push(sid);
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut ask = json!({"limit": 3});
        if let Some(b) = &before {
            ask["before"] = b.clone().into();
        }
        let page = list(&mut alice, ask).await;
        assert!(ids(&page).len() <= 3);
        seen.extend(ids(&page));
        match page["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "each session once: {seen:?}");
    // The newest activity first: the last question's session leads.
    assert_eq!(seen[0], made[6]);
    let e = list(&mut alice, json!({"before": "not-a-cursor"})).await;
    assert_eq!(e["code"], "invalid_field", "{e}");
    let e = list(&mut alice, json!({"limit": 0})).await;
    assert_eq!(e["code"], "invalid_field", "{e}");
}

/// Waits, if needed, so that the next few seconds stay within one clock minute (the message
/// rate counts per clock minute).
async fn within_one_minute(seconds: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now % 60 > 60 - seconds {
        tokio::time::sleep(Duration::from_secs(61 - now % 60)).await;
    }
}

#[tokio::test]
async fn runs_at_once_and_messages_a_minute_are_limited_per_principal() {
    let dir = TempDir::new("principals-rate");
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    let tokens = tokens_file(&dir, "concurrent_runs = 1\nmessages_per_minute = 2");
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &tokens, &[]);
    within_one_minute(20).await;
    let mut alice = connect(&host, ALICE).await;
    let (s1, _) = alice.create_session().await;
    let (s2, _) = alice.create_session().await;
    // A slow answer keeps s1 running (2 s).
    llm.script(
        json!([{"text": "x".repeat(20), "chunk_chars": 1, "delay_ms": 100}, {"text": "second"}]),
    );
    alice.ask(&s1, "slow").await;
    alice.until("agent.thinking").await;
    alice.ask(&s2, "meanwhile").await;
    let e = alice.until("agent.error").await;
    assert_eq!(
        (e["code"].as_str(), e["quota"].as_str()),
        (Some("rate_limited"), Some("concurrent_runs")),
        "{e}"
    );
    assert_eq!(
        (
            e["limit"].as_u64(),
            e["used"].as_u64(),
            e["session_id"].as_str()
        ),
        (Some(1), Some(1), Some(s2.as_str()))
    );
    // Bob has no tier: served at once.
    let mut bob = connect(&host, BOB).await;
    let (b1, _) = bob.create_session().await;
    alice.until("agent.ready").await;
    assert_eq!(turn(&mut alice, &s2, "now").await["content"], "second");
    // Alice's second counted message this minute (the refused one did not count): the next
    // is over the rate.
    let calls = llm.requests().len();
    let e = turn(&mut alice, &s2, "fourth").await;
    assert_eq!(
        (e["code"].as_str(), e["quota"].as_str(), e["limit"].as_u64()),
        (Some("rate_limited"), Some("messages_per_minute"), Some(2)),
        "{e}"
    );
    assert!(e["retry_after_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(llm.requests().len(), calls);
    llm.script(json!([{"text": "bob's"}]));
    assert_eq!(turn(&mut bob, &b1, "hi").await["content"], "bob's");
}

#[tokio::test]
async fn the_tokens_file_is_re_read_when_it_changes() {
    let dir = TempDir::new("principals-reload");
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    let tokens = tokens_file(&dir, "");
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &tokens, &[]);
    let refused_token = |token: &'static str| {
        let url = url(&host, token);
        async move {
            let mut c = Client::connect(&url).await;
            c.until_any(&["auth.error", "system.connected"]).await["event"] == "auth.error"
        }
    };
    assert!(refused_token("carol-secret").await);
    std::fs::write(
        &tokens,
        "[[principal]]\nuser = \"carol\"\ntoken = \"carol-secret\"\n",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    while refused_token("carol-secret").await {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "carol not accepted after the change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused_token(ALICE).await, "alice was removed");
    // A broken file keeps the principals in use.
    std::fs::write(&tokens, "[[principal]]\nuser = \"x\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!refused_token("carol-secret").await);
    host.proc
        .wait_stderr("cannot be used", Duration::from_secs(5));
}

#[tokio::test]
async fn an_anonymous_host_lists_nothing_and_resumes_only_with_the_token() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &["--store", "memory"]);
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    let e = list(&mut c, json!({})).await;
    assert_eq!(e["code"], "unauthenticated", "{e}");
    let mut other = Client::connect(&host.ws_url()).await;
    refused(
        &mut other,
        json!({"event": "user.resume_session", "session_id": sid}),
        &sid,
    )
    .await;
    let (_c, r) = Client::resume(&host.ws_url(), &sid, &token, 0).await;
    assert_eq!(r["event"], "agent.session_resumed", "{r}");
}

#[tokio::test]
async fn hosts_on_one_redis_share_owners_lists_and_quotas() {
    let Some(redis) = Redis::start() else { return };
    let dir = TempDir::new("principals-redis");
    let tokens = tokens_file(&dir, "tokens_per_hour = 100");
    let llm = FakeLlm::start();
    let a = start(&llm, &redis.url(), &tokens, &[]);
    let b = start(&llm, &redis.url(), &tokens, &[]);
    let mut alice = connect(&a, ALICE).await;
    let (sid, token) = alice.create_session().await;
    llm.script(json!([{"text": "Hi.", "usage": usage(80, 40)}]));
    turn(&mut alice, &sid, "Plan a trip to Lisbon").await;
    // On host b: listed with its title, resumed by id; Bob still sees nothing of it.
    let mut alice_b = connect(&b, ALICE).await;
    let listed = list(&mut alice_b, json!({})).await;
    assert_eq!(ids(&listed), vec![sid.clone()], "{listed}");
    assert_eq!(listed["sessions"][0]["title"], "Plan a trip to Lisbon");
    assert_eq!(listed["sessions"][0]["usage"]["input_tokens"], 80);
    let mut bob_b = connect(&b, BOB).await;
    refused(
        &mut bob_b,
        json!({"event": "user.resume_session", "session_id": sid, "resume_token": token}),
        &sid,
    )
    .await;
    assert_eq!(
        ids(&list(&mut bob_b, json!({})).await),
        Vec::<String>::new()
    );
    // The hour's 100 tokens were spent on host a: host b refuses too.
    let (sid_b, _) = alice_b.create_session().await;
    let calls = llm.requests().len();
    let e = turn(&mut alice_b, &sid_b, "more").await;
    assert_eq!(
        (e["code"].as_str(), e["quota"].as_str(), e["used"].as_u64()),
        (Some("quota_exceeded"), Some("tokens_per_hour"), Some(120)),
        "{e}"
    );
    assert_eq!(llm.requests().len(), calls);
    // Deleted on b: gone for a too.
    alice_b
        .send(json!({"event": "user.delete_session", "session_id": sid}))
        .await;
    assert_eq!(
        alice_b
            .until_any(&["agent.session_deleted", "agent.error"])
            .await["event"],
        "agent.session_deleted"
    );
    let listed = list(&mut alice, json!({})).await;
    assert_eq!(ids(&listed), vec![sid_b], "{listed}");
}

#[tokio::test]
async fn deleting_a_running_session_leaves_nothing_in_the_store() {
    let dir = TempDir::new("principals-delete");
    let db = dir.path().join("s.db");
    let store = format!("sqlite:{}", db.display());
    let tokens = tokens_file(&dir, "");
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &tokens, &[]);
    let mut alice = connect(&host, ALICE).await;
    for (ask, answer) in [
        ("user.delete_session", "agent.session_deleted"),
        ("user.close_session", "agent.session_closed"),
    ] {
        let (sid, _) = alice.create_session().await;
        // Past the answer hold-back (80 characters), so that it streams while the run goes on.
        llm.script(json!([{"text": "y".repeat(300), "chunk_chars": 2, "delay_ms": 20}]));
        alice.ask(&sid, "a long one").await;
        alice.until("agent.partial_answer").await;
        alice.send(json!({"event": ask, "session_id": sid})).await;
        let done = alice.until_any(&[answer, "agent.error"]).await;
        assert_eq!(done["event"], answer, "{done}");
        // The cancelled run's last events and its turn's end come after: not written.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let conn = rusqlite::Connection::open(&db).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [&sid], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE id = ?1"),
            0,
            "{ask}"
        );
        // Events are stored under the session's key: none may be left without their session.
        let orphans: i64 = conn
            .query_row(
                "SELECT count(*) FROM event_chunks WHERE session_key NOT IN (SELECT key FROM sessions)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0, "{ask}");
    }
}
