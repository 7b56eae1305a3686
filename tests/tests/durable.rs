//! Durable sessions (`--store sqlite:PATH`): sessions outlive the host process. Real hosts,
//! killed with SIGKILL and started again on the same store; real WebSocket clients resuming.

use std::path::Path;
use std::time::{Duration, Instant};

use myagent_tests::{host_command, plugin_lib, texts_of, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};

fn start(llm: &FakeLlm, store: &Path, extra: &[&str]) -> Host {
    let url = format!("sqlite:{}", store.display());
    let mut args = vec!["--store", url.as_str()];
    args.extend_from_slice(extra);
    Host::start(&plugin_lib("testkit_agent"), llm, &args)
}

/// A new store in its own directory, a fake model, and a host on both.
fn fresh(name: &str) -> (TempDir, std::path::PathBuf, FakeLlm, Host) {
    let dir = TempDir::new(name);
    let store = dir.path().join("sessions.db");
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &[]);
    (dir, store, llm, host)
}

async fn resume(host: &Host, sid: &str, token: &str, last_seq: u64) -> (Client, Value) {
    Client::resume(&host.ws_url(), sid, token, last_seq).await
}

#[tokio::test]
async fn a_session_survives_kill_9_and_its_history_reaches_the_model() {
    let (_dir, store, llm, host) = fresh("durable");
    assert!(host.proc.stdout_text().contains("Sessions: stored in"));
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "Noted: your name is Ada."}]));
    c.ask(&sid, "My name is Ada.").await;
    c.until("agent.final_answer").await;
    let ready = c.until("agent.ready").await;
    let last_seq = ready["seq"].as_u64().unwrap();
    // The writer flushes every 50 ms; give it that, then kill without any clean-up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill9();
    drop(c);
    drop(host);

    let host = start(&llm, &store, &[]);
    let (mut c, resumed) = resume(&host, &sid, &token, last_seq).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    assert_eq!(resumed["recovered"], true);
    assert_eq!(resumed["last_seq"], last_seq);
    // The numbering goes on; the conversation is remembered.
    llm.script(json!([{"text": "You are Ada."}]));
    c.ask(&sid, "What is my name?").await;
    let answer = c.until("agent.final_answer").await;
    assert_eq!(answer["content"], "You are Ada.");
    assert_eq!(answer["seq"].as_u64().unwrap(), last_seq + 4); // thinking, partial, usage, final
    let req = llm.requests().pop().unwrap();
    assert_eq!(
        texts_of(&req, "user"),
        ["My name is Ada.", "What is my name?"]
    );
    assert_eq!(texts_of(&req, "assistant"), ["Noted: your name is Ada."]);

    // A client that lost everything resumes from 0 and gets the first turn's events back.
    let (mut c2, resumed) = resume(&host, &sid, &token, 0).await;
    assert_eq!(resumed["recovered"], true);
    let first = c2.until("agent.final_answer").await;
    assert_eq!(first["content"], "Noted: your name is Ada.");
    // A wrong token is "not found", as for a live session.
    let (_, wrong) = resume(&host, &sid, "not-the-token", 0).await;
    assert_eq!(wrong["code"], "session_not_found");
}

/// The store keeps a session's frame without the tail its row already says (session id, seq,
/// timestamp), and a piece against the one before it, and writes them back on reading: after
/// a kill -9 and a restart, a client resuming from 0 gets every event exactly as sent live.
#[tokio::test]
async fn replayed_events_after_a_restart_are_the_events_sent_live() {
    let (_dir, store, llm, host) = fresh("durable-replay");
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, "bench:300@0").await;
    c.until("agent.ready").await;
    llm.script(json!([{"text": "a \"quoted\" ~{brace}\nline ünïcode"}]));
    c.ask(&sid, "and text").await;
    c.until("agent.ready").await;
    host.kill9();
    drop(host);
    // Past the session's first frame (its resume token is never stored): each event with a seq.
    let numbered = |seen: &[Value]| -> Vec<Value> {
        seen.iter()
            .filter(|v| v["seq"].as_u64().is_some_and(|s| s > 1))
            .cloned()
            .collect()
    };
    let live = numbered(&c.seen);
    assert!(live.len() > 300, "{}", live.len());

    let read = rusqlite::Connection::open(&store).unwrap();
    // Rows start with a line left short; the pieces after it are said against the line before.
    let (short, ditto): (i64, i64) = read
        .query_row(
            "SELECT sum(frames LIKE '~%'), sum(instr(frames, char(10) || '^') > 0)
             FROM event_chunks WHERE session_key = (SELECT key FROM sessions WHERE id = ?1)",
            [&sid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        short > 0 && ditto > 0,
        "rows {short} short, {ditto} with lines said against the one before"
    );
    drop(read);

    let host = start(&llm, &store, &[]);
    let (mut c, resumed) = resume(&host, &sid, &token, 0).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    while numbered(&c.seen).len() < live.len() {
        c.recv().await;
    }
    let replayed = numbered(&c.seen);
    assert_eq!(replayed.len(), live.len());
    if let Some((sent, back)) = live.iter().zip(&replayed).find(|(a, b)| a != b) {
        panic!("replayed {back}\nfor the event sent live as {sent}");
    }
}

#[tokio::test]
async fn a_turn_cut_by_the_hosts_death_is_closed_as_interrupted_on_resume() {
    let (_dir, store, llm, host) = fresh("durable-lost");
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "a long answer ".repeat(100), "chunk_chars": 4, "delay_ms": 30}]));
    c.ask(&sid, "Tell me a long story.").await;
    let mut last = 0;
    for _ in 0..5 {
        last = c.until("agent.partial_answer").await["seq"]
            .as_u64()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill9();
    drop(c);
    drop(host);

    let host = start(&llm, &store, &[]);
    let (mut c, resumed) = resume(&host, &sid, &token, 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed");
    assert!(resumed["last_seq"].as_u64().unwrap() >= last);
    let interrupted = c.until("agent.interrupted").await;
    assert_eq!(interrupted["metadata"], Value::Null);
    assert_eq!(interrupted["reason"], "host_lost");
    assert!(interrupted["seq"].as_u64().unwrap() > resumed["last_seq"].as_u64().unwrap());
    c.until("agent.ready").await;
    // The session goes on, and the model knows the last turn was cut.
    llm.script(json!([{"text": "Sorry, where were we?"}]));
    c.ask(&sid, "Go on.").await;
    assert_eq!(
        c.until("agent.final_answer").await["content"],
        "Sorry, where were we?"
    );
    let req = llm.requests().pop().unwrap();
    assert_eq!(texts_of(&req, "user"), ["Tell me a long story.", "Go on."]);
    assert_eq!(
        texts_of(&req, "assistant"),
        ["(The user interrupted this response.)"]
    );
}

#[tokio::test]
async fn what_a_crash_loses_is_bounded_by_the_flush_interval() {
    let (_dir, store, llm, host) = fresh("durable-bound");
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "x".repeat(2000), "chunk_chars": 1, "delay_ms": 2}]));
    c.ask(&sid, "stream").await;
    // Receive for a while, noting when each event arrived, then kill mid-stream.
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Some(e) = c.recv_timeout(Duration::from_millis(200)).await {
            if let Some(seq) = e["seq"].as_u64() {
                seen.push((seq, Instant::now()));
            }
        }
    }
    let killed = Instant::now();
    host.kill9();
    drop(c);
    drop(host);
    let host = start(&llm, &store, &[]);
    let (_, resumed) = resume(&host, &sid, &token, 0).await;
    let stored_up_to = resumed["last_seq"].as_u64().unwrap();
    // Every event the client had 300 ms before the kill was stored (the writer flushes every
    // 50 ms; the margin is for a loaded machine).
    let must = seen
        .iter()
        .filter(|(_, at)| killed.duration_since(*at) > Duration::from_millis(300))
        .map(|(s, _)| *s)
        .max()
        .expect("events before the kill");
    assert!(
        stored_up_to >= must,
        "stored up to {stored_up_to}, but the client had {must} 300 ms before the kill"
    );
}

#[tokio::test]
async fn idle_sessions_expire_after_the_ttl_and_outlive_the_resume_window_within_it() {
    let dir = TempDir::new("durable-ttl");
    let store = dir.path().join("sessions.db");
    let llm = FakeLlm::start();
    // Gone from memory after 1 s, but still in the store (it has a finished turn: a session
    // never used is not kept once it leaves memory, `store.rs`).
    let host = start(&llm, &store, &["--resume-window", "1"]);
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "kept"}]));
    c.ask(&sid, "keep this session").await;
    c.until("agent.ready").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(host.http_health_sessions(), 0);
    let (_, resumed) = resume(&host, &sid, &token, 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    drop(host);

    // With a TTL of 1 s, a session idle for longer is gone.
    let host = start(&llm, &store, &["--session-ttl", "1"]);
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "kept"}]));
    c.ask(&sid, "keep this one too").await;
    c.until("agent.ready").await;
    drop(c);
    drop(host);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let host = start(&llm, &store, &["--session-ttl", "1"]);
    let (_, e) = resume(&host, &sid, &token, 0).await;
    assert_eq!(e["code"], "session_not_found", "{e}");
}

#[test]
fn a_corrupt_store_is_a_clear_start_up_error() {
    let dir = TempDir::new("durable-corrupt");
    let store = dir.path().join("sessions.db");
    std::fs::write(&store, "not a database, not at all; just text ".repeat(50)).unwrap();
    let out = host_command()
        .arg("serve")
        .arg(plugin_lib("testkit_agent"))
        .args(["--port", "0", "--store"])
        .arg(format!("sqlite:{}", store.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not usable") && err.contains("sessions.db"),
        "{err}"
    );
    let out = host_command()
        .arg("serve")
        .arg(plugin_lib("testkit_agent"))
        .args(["--port", "0", "--store", "postgres://x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("expected `memory`, `sqlite:PATH` or `redis://HOST:PORT[/DB]`"));
}

#[tokio::test]
async fn a_graceful_shutdown_closes_running_turns_before_it_exits() {
    let dir = TempDir::new("durable-term");
    let store = dir.path().join("sessions.db");
    let llm = FakeLlm::start();
    let mut host = start(&llm, &store, &[]);
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "a long answer ".repeat(100), "chunk_chars": 4, "delay_ms": 30}]));
    c.ask(&sid, "Tell me a long story.").await;
    c.until("agent.partial_answer").await;
    host.terminate(); // SIGTERM: runs are interrupted, and their ends stored, before exit
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the host did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    drop(host);

    let host = start(&llm, &store, &[]);
    let (mut c, resumed) = resume(&host, &sid, &token, 0).await;
    assert_eq!(resumed["recovered"], true);
    // The turn's end is the interruption the client saw, not a lost turn.
    let e = c.until("agent.interrupted").await;
    assert_eq!(e["reason"], Value::Null, "{e}");
    c.until("agent.ready").await;
    assert!(c.recv_timeout(Duration::from_millis(500)).await.is_none());
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// `serve` with `--store sqlite:PATH` (or the default when `store` is None), expected to refuse
/// to start: its stderr.
fn refused(store: Option<&Path>, env_remove: &[&str]) -> String {
    let mut cmd = host_command();
    cmd.arg("serve")
        .arg(plugin_lib("testkit_agent"))
        .args(["--host", "127.0.0.1", "--port", "0"]);
    if let Some(s) = store {
        cmd.arg("--store").arg(format!("sqlite:{}", s.display()));
    }
    for v in env_remove {
        cmd.env_remove(v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the host started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Security round 3, item 5: the store holds conversations, so only its user may read it.
#[tokio::test]
async fn the_store_is_private_to_its_user_and_never_follows_a_symlink() {
    let dir = TempDir::new("durable-private");
    let store = dir.path().join("state/sub/sessions.db");
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "stored"}]));
    c.ask(&sid, "hello").await;
    c.until("agent.ready").await;
    let sub = store.parent().unwrap();
    assert_eq!(mode(sub), 0o700, "the store's directory");
    for f in ["sessions.db", "sessions.db-wal", "sessions.db-shm"] {
        assert_eq!(mode(&sub.join(f)), 0o600, "{f}");
    }
    drop(host);
    // A store an older host left open to others is closed on start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(start(&llm, &store, &[]));
    assert_eq!(mode(sub), 0o700);
    assert_eq!(mode(&store), 0o600);

    // Symlinks — the file, its WAL, the directory — are refused, not followed.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "someone else's file").unwrap();
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(&victim, linked.join("s.db")).unwrap();
    let err = refused(Some(&linked.join("s.db")), &[]);
    assert!(err.contains("symlink") && err.contains("s.db"), "{err}");
    let wal = dir.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    std::os::unix::fs::symlink(&victim, wal.join("s.db-wal")).unwrap();
    let err = refused(Some(&wal.join("s.db")), &[]);
    assert!(err.contains("symlink") && err.contains("s.db-wal"), "{err}");
    std::os::unix::fs::symlink(sub, dir.path().join("dirlink")).unwrap();
    let err = refused(Some(&dir.path().join("dirlink/s.db")), &[]);
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "someone else's file"
    );
    // A shared directory such as /tmp is not a place for it.
    let err = refused(Some(&std::env::temp_dir().join("myagent-shared.db")), &[]);
    assert!(err.contains("shared"), "{err}");
    // No HOME and no XDG_STATE_HOME: no temp-directory fallback.
    let err = refused(None, &["HOME", "XDG_STATE_HOME"]);
    assert!(err.contains("no private place"), "{err}");
}

/// A host a test starts without `--store` keeps its sessions in the test's own state directory,
/// never in the user's `~/.local/state` (where a file written by another build once made CI
/// fail), and no test starts the host any other way.
#[test]
fn tests_never_touch_the_users_own_session_store() {
    let dir = TempDir::new("own-state");
    let bad = dir.path().join("mcp.json");
    std::fs::write(&bad, r#"{"mcpServers": {"x": {"url": "ftp://nope"}}}"#).unwrap();
    // The store is opened before the MCP configuration is read, so this start leaves the file.
    let out = host_command()
        .arg("serve")
        .arg(plugin_lib("testkit_agent"))
        .args(["--port", "0", "--mcp-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let own = myagent_tests::test_state_home().join("myagent-host/sessions.db");
    assert!(own.exists(), "{}", String::from_utf8_lossy(&out.stderr));

    let root = myagent_tests::workspace_root().join("tests");
    let mut files = vec![root.join("src/lib.rs")];
    for e in std::fs::read_dir(root.join("tests")).unwrap() {
        files.push(e.unwrap().path());
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let direct = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| l.contains("Command::new(") && l.contains("\"myagent-host\""))
            .count();
        let allowed = usize::from(f.ends_with("src/lib.rs"));
        assert_eq!(
            direct,
            allowed,
            "{} starts myagent-host without host_command()",
            f.display()
        );
    }
}
