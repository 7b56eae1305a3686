//! The session store's promises, with real processes: what a client was told is done is in
//! the store (kill -9 right after `agent.session_created` or `agent.ready`); a store that goes
//! away — Redis killed and back empty, SQLite on a full disk, Redis stalled — loses nothing
//! within the buffer, never delays tokens, and says so in `/health`, `/metrics` and the log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use myagent_tests::{plugin_lib, texts_of, Client, FakeLlm, Host, Redis, TempDir};
use serde_json::{json, Value};

fn host(llm: &FakeLlm, store: &str, extra: &[&str]) -> Host {
    let mut args = vec!["--store", store];
    args.extend_from_slice(extra);
    Host::start(&plugin_lib("testkit_agent"), llm, &args)
}

fn health_store(h: &Host) -> Value {
    let v: Value = serde_json::from_str(&h.http("/health")).unwrap();
    v["store"].clone()
}

/// Waits until `/health` shows the store as `state`.
async fn store_becomes(h: &Host, state: &str, within: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let s = health_store(h);
        if s["state"] == state {
            return s;
        }
        assert!(t0.elapsed() < within, "store never became {state}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One finished turn in a fresh session: (session id, resume token, the ready's seq).
async fn session_with_a_turn(h: &Host, llm: &FakeLlm, said: &str) -> (String, String, u64) {
    let (mut c, sid, token) = Client::with_session(&h.ws_url()).await;
    llm.script(json!([{"text": format!("Noted: {said}")}]));
    c.ask(&sid, said).await;
    let ready = c.until("agent.ready").await;
    (sid, token, ready["seq"].as_u64().unwrap())
}

/// Resumes on `h` and asks once more: the model must see the earlier turn.
async fn resumes_with_history(h: &Host, llm: &FakeLlm, sid: &str, token: &str, said: &str) {
    let (mut c, resumed) = Client::resume(&h.ws_url(), sid, token, 0).await;
    assert_eq!(
        resumed["event"], "agent.session_resumed",
        "{sid}: {resumed}"
    );
    let replayed_to = resumed["last_seq"].as_u64().unwrap();
    llm.script(json!([{"text": "again"}]));
    c.ask(sid, "and now?").await;
    // The replay brings the earlier turn's answer back first; wait for the new one.
    while c.until("agent.final_answer").await["seq"].as_u64().unwrap() <= replayed_to {}
    let req = llm.requests().pop().unwrap();
    assert_eq!(texts_of(&req, "user"), [said, "and now?"], "{sid}");
    assert_eq!(
        texts_of(&req, "assistant"),
        [format!("Noted: {said}")],
        "{sid}"
    );
}

#[tokio::test]
async fn what_a_client_was_told_is_done_survives_kill_9_at_once() {
    let dir = TempDir::new("store-ack");
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let llm = FakeLlm::start();
    for round in 0..3 {
        // Killed the moment the client hears of the session.
        let h = host(&llm, &url, &[]);
        let (c, sid, token) = Client::with_session(&h.ws_url()).await;
        h.kill9();
        drop((c, h));
        let h = host(&llm, &url, &[]);
        let (mut c, resumed) = Client::resume(&h.ws_url(), &sid, &token, 1).await;
        assert_eq!(
            resumed["event"], "agent.session_resumed",
            "round {round}: {resumed}"
        );

        // Killed the moment the client hears the turn is done.
        let said = format!("remember {round}");
        llm.script(json!([{"text": format!("Noted: {said}")}]));
        c.ask(&sid, &said).await;
        let ready = c.until("agent.ready").await;
        h.kill9();
        drop((c, h));
        let h = host(&llm, &url, &[]);
        let (_, resumed) = Client::resume(&h.ws_url(), &sid, &token, 0).await;
        assert_eq!(
            resumed["last_seq"], ready["seq"],
            "round {round}: the ready is stored"
        );
        resumes_with_history(&h, &llm, &sid, &token, &said).await;
        h.kill9();
    }
}

#[tokio::test]
async fn a_redis_outage_loses_nothing_and_is_said_once() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let llm = FakeLlm::start();
    let url = redis.url();
    let args = ["--store-ack-timeout", "300", "--store-buffer", "1"];
    let h = host(&llm, &url, &args);
    assert_eq!(health_store(&h)["state"], "ok");

    redis.kill();
    // Sessions made and turns run while the store is down...
    let t0 = Instant::now();
    let mut made = Vec::new();
    for i in 0..3 {
        let said = format!("outage {i}");
        let (sid, token, _) = session_with_a_turn(&h, &llm, &said).await;
        made.push((sid, token, said));
    }
    // ...and a long stream, past the 1 MiB buffer: its events go, the records stay. (Text that
    // does not repeat: a piece is held as its stored line, said against the piece before, and
    // identical pieces would take a few bytes each.)
    let (mut c, sid, _) = Client::with_session(&h.ws_url()).await;
    let text: String = (0..200_000).map(|i| format!("{i:07} ")).collect();
    llm.script(json!([{"text": text, "chunk_chars": 500}]));
    c.ask(&sid, "stream").await;
    c.until("agent.ready").await;
    let s = store_becomes(&h, "degraded", Duration::from_secs(5)).await;
    assert!(s["buffered_bytes"].as_u64().unwrap() <= 1 << 20, "{s}");
    assert!(s["dropped_events"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["dropped_records"], 0, "{s}");
    assert!(s["oldest_unwritten_ms"].as_u64().unwrap() > 0, "{s}");
    assert!(h.metric("myagent_store_dropped_events_total") > 0);
    assert_eq!(h.metric("myagent_store_up"), 0);
    // Acknowledgements did not wait for the dead store longer than --store-ack-timeout.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // Redis comes back empty (no persistence); the buffer is written; then the host dies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    store_becomes(&h, "ok", Duration::from_secs(15)).await;
    assert_eq!(health_store(&h)["buffered_bytes"], 0);
    h.proc
        .wait_stderr("session store is back", Duration::from_secs(5));
    let log = h.proc.stderr_text();
    assert_eq!(log.matches("session store unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("session store is back").count(), 1, "{log}");
    h.kill9();
    drop(h);

    // Every session from the outage resumes, from a new host, with its history.
    let h = host(&llm, &url, &args);
    for (sid, token, said) in &made {
        resumes_with_history(&h, &llm, sid, token, said).await;
    }
}

#[tokio::test]
async fn a_stalled_store_never_delays_tokens() {
    let Some(redis) = Redis::start() else { return };
    let llm = FakeLlm::start();
    let h = host(&llm, &redis.url(), &["--store-ack-timeout", "300"]);
    let (mut c, sid, token) = Client::with_session(&h.ws_url()).await;
    redis.pause(true);
    llm.script(json!([{"text": "z".repeat(300), "chunk_chars": 10, "delay_ms": 20}]));
    c.ask(&sid, "stream while the store is stalled").await;
    // The store stalls each write attempt for its 5 s I/O timeout; the tokens keep their pace.
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    loop {
        let e = c.recv().await;
        worst = worst.max(last.elapsed());
        last = Instant::now();
        if e["event"] == "agent.final_answer" {
            break;
        }
    }
    assert!(worst < Duration::from_secs(1), "a token waited {worst:?}");
    let t = Instant::now();
    c.until("agent.ready").await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ready waited {:?}",
        t.elapsed()
    );
    store_becomes(&h, "degraded", Duration::from_secs(10)).await;
    redis.pause(false);
    store_becomes(&h, "ok", Duration::from_secs(20)).await;
    // Written after all: another host resumes it with the turn.
    h.kill9();
    let h2 = host(&llm, &redis.url(), &[]);
    let (_, resumed) = Client::resume(&h2.ws_url(), &sid, &token, 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    let log = h.proc.stderr_text();
    assert!(!log.contains("empty command"), "{log}");
}

/// A 2 MiB tmpfs (root only: CI runs as root); None, with a message, elsewhere.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path) -> Option<SmallDisk> {
        let ok = Command::new("mount")
            // 0700: a store's directory must be private (a tmpfs is 1777 by default).
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a small tmpfs (needs root) for the full-disk test");
            return None;
        }
        Some(SmallDisk(dir.to_owned()))
    }

    /// Fills the disk; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        let f = self.0.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k", "count=64"])
            .arg(format!("of={}", f.display()))
            .stderr(std::process::Stdio::null())
            .status();
        f
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn sqlite_on_a_full_disk_buffers_and_writes_once_space_is_back() {
    let dir = TempDir::new("store-full");
    let Some(disk) = SmallDisk::mount(dir.path()) else {
        return;
    };
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let llm = FakeLlm::start();
    let args = ["--store-ack-timeout", "300"];
    let h = host(&llm, &url, &args);
    let before = session_with_a_turn(&h, &llm, "before").await;
    let filler = disk.fill();

    let mut made = Vec::new();
    for i in 0..3 {
        let said = format!("disk full {i}");
        let (sid, token, _) = session_with_a_turn(&h, &llm, &said).await;
        made.push((sid, token, said));
    }
    let s = store_becomes(&h, "degraded", Duration::from_secs(5)).await;
    assert!(s["buffered_bytes"].as_u64().unwrap() > 0, "{s}");

    std::fs::remove_file(&filler).unwrap();
    store_becomes(&h, "ok", Duration::from_secs(15)).await;
    h.kill9();
    drop(h);

    let h = host(&llm, &url, &args);
    resumes_with_history(&h, &llm, &before.0, &before.1, "before").await;
    for (sid, token, said) in &made {
        resumes_with_history(&h, &llm, sid, token, said).await;
    }
    h.kill9();
    drop(h);
    drop(disk);
}

/// Whether `haystack` holds `needle` anywhere.
fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_stored_byte_holds_a_live_resume_token() {
    // Security round 3, item 1: the token reaches the creating client only.
    let dir = TempDir::new("store-token");
    let db = dir.path().join("s.db");
    let llm = FakeLlm::start();
    let h = host(&llm, &format!("sqlite:{}", db.display()), &[]);
    let (mut c, sid, token) = Client::with_session(&h.ws_url()).await;
    let created = c.named("agent.session_created")[0].clone();
    assert_eq!(created["resume_token"], token.as_str());
    llm.script(json!([{"text": "ok"}]));
    c.ask(&sid, "hello").await;
    c.until("agent.ready").await;
    for f in ["s.db", "s.db-wal"] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
        assert!(!holds(&bytes, &token), "{f} holds the resume token");
    }
    // A client resuming from 0 gets the event back, without the token; the token still works.
    let (mut c2, resumed) = Client::resume(&h.ws_url(), &sid, &token, 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed");
    let replayed = c2.until("agent.session_created").await;
    assert_eq!(replayed["seq"], 1);
    assert!(replayed.get("resume_token").is_none(), "{replayed}");

    // The same on Redis: nothing under our keys holds it.
    let Some(redis) = Redis::start() else { return };
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli")
            .stdout
    };
    // A stream an earlier version wrote, token in clear: scrubbed when a host opens the store.
    let old = "feedfacefeedfacefeedfacefeedface";
    let frame = format!("{{\"event\":\"agent.session_created\",\"resume_token\":\"{old}\",\"agent\":{{}},\"session_id\":\"old\",\"seq\":1}}");
    cli(&[
        "XADD",
        "myagent:events:old",
        "5-0",
        "seq",
        "1",
        "frames",
        &frame,
    ]);
    let h = host(&llm, &redis.url(), &[]);
    let kept = cli(&["XRANGE", "myagent:events:old", "-", "+"]);
    assert!(!holds(&kept, old) && holds(&kept, "5-0") && holds(&kept, "agent.session_created"));
    let (mut c, sid, token) = Client::with_session(&h.ws_url()).await;
    llm.script(json!([{"text": "ok"}]));
    c.ask(&sid, "hello").await;
    c.until("agent.ready").await;
    let keys = String::from_utf8(cli(&["--scan", "--pattern", "myagent:*"])).unwrap();
    assert!(keys.contains(&sid), "{keys}");
    for key in keys.lines() {
        let kind = String::from_utf8(cli(&["TYPE", key])).unwrap();
        let dump = match kind.trim() {
            "stream" => cli(&["XRANGE", key, "-", "+"]),
            "hash" => cli(&["HGETALL", key]),
            _ => cli(&["GET", key]),
        };
        assert!(!holds(&dump, &token), "{key} holds the resume token");
    }
}

/// Security round 3, item 9: what a client can leave in the store is bounded — a session that
/// never finished a turn is deleted from the store when it leaves memory (not kept for the
/// TTL), a session's stored events are kept to its replay buffer's size as turns end, and a
/// resume with a wrong token is refused before the session is read.
#[tokio::test]
async fn what_a_client_leaves_in_the_store_is_bounded() {
    let dir = TempDir::new("store-bounded");
    let db = dir.path().join("s.db");
    let url = format!("sqlite:{}", db.display());
    let llm = FakeLlm::start();
    let h = host(
        &llm,
        &url,
        &["--resume-window", "1", "--replay-buffer-bytes", "16384"],
    );
    // Walked away from: one session used, one never.
    let (used, used_token, _) = session_with_a_turn(&h, &llm, "keep me").await;
    let (c, idle, idle_token) = Client::with_session(&h.ws_url()).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Out of memory now: the used one comes back from the store, the idle one is gone.
    let (_c, r) = Client::resume(&h.ws_url(), &idle, &idle_token, 0).await;
    assert_eq!(r["code"], "session_not_found", "{r}");
    let (_c, r) = Client::resume(&h.ws_url(), &used, "0123456789abcdef0123456789abcdef", 0).await;
    assert_eq!(r["code"], "session_not_found", "a wrong token: {r}");
    resumes_with_history(&h, &llm, &used, &used_token, "keep me").await;

    // Twenty long turns (~8,000 events, ~1.2 MB): the store keeps the newest 16 KiB of events,
    // not all of them (nor the 4,096 newest, ~600 KB).
    let (mut c, sid, _) = Client::with_session(&h.ws_url()).await;
    for _ in 0..20 {
        c.ask(&sid, "bench:400@0").await;
        c.until("agent.ready").await;
    }
    // Old events are cut just after each turn's commit (between the store's batches).
    let read =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let stored = || -> (i64, i64) {
        read.query_row(
            "SELECT count(*), coalesce(sum(length(frames)), 0) FROM event_chunks
             WHERE session_key = (SELECT key FROM sessions WHERE id = ?1)",
            [&sid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let t0 = Instant::now();
    let (mut chunks, mut bytes) = stored();
    while bytes >= 48 * 1024 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (chunks, bytes) = stored();
    }
    assert!(chunks > 0, "nothing stored");
    assert!(
        bytes < 48 * 1024,
        "{bytes} bytes of events stored in {chunks} chunks"
    );
}

/// Two sessions with a turn from one address, left behind (out of memory, stored): a third is
/// refused by `--max-stored-sessions-per-ip 2` although memory holds none — and closing one
/// makes room. `store` names the store.
async fn stored_sessions_are_capped_per_address_on(store: &str) {
    let llm = FakeLlm::start();
    let h = host(
        &llm,
        store,
        &["--resume-window", "1", "--max-stored-sessions-per-ip", "2"],
    );
    let (first, first_token, _) = session_with_a_turn(&h, &llm, "one").await;
    session_with_a_turn(&h, &llm, "two").await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(h.http_health_sessions(), 0, "both left memory");
    let mut c = Client::connect(&h.ws_url()).await;
    c.send(json!({"event": "user.create_session"})).await;
    let e = c.until_any(&["agent.error", "agent.session_created"]).await;
    assert_eq!(e["code"], "too_many_sessions", "{store}: {e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("stored sessions from your address (limit 2)"),
        "{e}"
    );
    // Closing a stored session (resumed) deletes it from the store: room again.
    let (mut r, resumed) = Client::resume(&h.ws_url(), &first, &first_token, 0).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    r.send(json!({"event": "user.close_session", "session_id": first}))
        .await;
    r.until("agent.session_closed").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the delete's write
    c.send(json!({"event": "user.create_session"})).await;
    let ok = c.until_any(&["agent.error", "agent.session_created"]).await;
    assert_eq!(ok["event"], "agent.session_created", "{store}: {ok}");
}

/// Security round 3, item 9: the session caps also count what the store holds.
#[tokio::test]
async fn stored_sessions_are_capped_per_address() {
    let dir = TempDir::new("store-capped");
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    stored_sessions_are_capped_per_address_on(&url).await;
    if let Some(redis) = Redis::start() {
        stored_sessions_are_capped_per_address_on(&redis.url()).await;
    }
}
