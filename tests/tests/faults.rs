//! Fault injection: each fault hits one session (or the plugin file, or the whole host) while a
//! bystander session streams on another connection. Each test asserts what the affected client
//! sees and that the bystander gets its whole answer with no error.

use std::time::{Duration, Instant};

use myagent_tests::client::bystander;
use myagent_tests::{plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::Value;

/// The session is usable after the fault.
async fn still_works(c: &mut Client, sid: &str) {
    c.until("agent.ready").await;
    c.ask(sid, "say:recovered").await;
    assert_eq!(c.until("agent.final_answer").await["content"], "recovered");
}

#[tokio::test]
async fn plugin_panic_and_tool_hang_fail_only_their_tool_call() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let by = bystander(&host.ws_url()).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;

    // A tool that panics inside the plugin.
    c.ask(&sid, "call:panic {}").await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed");
    assert!(r["content"].as_str().unwrap().contains("panicked"), "{r}");
    c.until("agent.final_answer").await;
    still_works(&mut c, &sid).await;

    // A tool that hangs past its timeout (testkit's is 2 s).
    let t0 = Instant::now();
    c.ask(&sid, r#"call:sleep {"ms": 20000}"#).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed");
    assert!(r["content"].as_str().unwrap().contains("timed out"), "{r}");
    assert!(t0.elapsed() < Duration::from_secs(8));
    c.until("agent.final_answer").await;
    still_works(&mut c, &sid).await;
    by.await.unwrap();
}

#[tokio::test]
async fn model_failures_are_clear_errors_for_their_session_only() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--llm-retries", "1", "--llm-idle-timeout", "2"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    for (fault, expect) in [
        ("429", "429"),
        ("500", "500"),
        ("stall", "stalled"),
        ("garbage", "malformed"),
        ("reset", "connection"),
    ] {
        let by = bystander(&host.ws_url()).await;
        c.ask(&sid, &format!("fault:{fault}")).await;
        let e = c.until("agent.error").await;
        let text = e["error"].as_str().unwrap().to_lowercase();
        assert!(
            text.contains(expect),
            "fault {fault}: expected {expect:?} in the error, got {e}"
        );
        assert!(e["code"].is_string(), "{e}");
        assert!(
            !text.contains("http://"),
            "error text leaks the model URL: {e}"
        );
        still_works(&mut c, &sid).await;
        by.await.unwrap();
    }
}

#[tokio::test]
async fn a_client_vanishing_mid_run_frees_its_session_after_the_resume_window() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--resume-window", "1"],
    );
    let by = bystander(&host.ws_url()).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, "bench:500@10").await;
    c.until("agent.partial_answer").await;
    // Vanish: drop the TCP connection without a close frame.
    drop(c);
    by.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health: Value = serde_json::from_str(&host.http("/health")).unwrap();
        if health["active_sessions"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the vanished client's session was never released: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = host.http("/metrics");
    assert!(
        metrics.contains("myagent_runs_cancelled_total 1"),
        "{metrics}"
    );
    // And the host goes on.
    let (mut c2, sid2, _) = Client::with_session(&host.ws_url()).await;
    c2.ask(&sid2, "say:still serving").await;
    assert_eq!(
        c2.until("agent.final_answer").await["content"],
        "still serving"
    );
}

#[tokio::test]
async fn plugin_file_replaced_by_garbage_mid_run_keeps_the_old_build_serving() {
    let llm = FakeLlm::start();
    let dir = TempDir::new("garbage-plugin");
    let served = dir.path().join("libtestkit_agent.so");
    std::fs::copy(plugin_lib("testkit_agent"), &served).unwrap();
    let host = Host::start(&served, &llm, &["--reload-debounce-ms", "100"]);
    let by = bystander(&host.ws_url()).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, "bench:100@10").await;
    c.until("agent.partial_answer").await;
    std::fs::write(&served, b"\x7fELF this is not a shared library").unwrap();
    let failed = c.until("system.plugin_reload_failed").await;
    assert!(failed["error"].as_str().unwrap().len() > 10, "{failed}");
    assert_eq!(failed["serving"]["generation"], 1);
    // The run in progress finishes; the session and new ones keep working on the old build.
    let fin = c.until("agent.final_answer").await;
    assert_eq!(fin["content"].as_str().unwrap().matches('~').count(), 100);
    still_works(&mut c, &sid).await;
    let (mut c2, sid2, _) = Client::with_session(&host.ws_url()).await;
    c2.ask(&sid2, r#"call:echo {"text": "old build"}"#).await;
    assert_eq!(c2.until("agent.tool_result").await["content"], "old build");
    by.await.unwrap();
}

#[tokio::test]
async fn sigterm_under_load_interrupts_every_run_and_closes_every_client() {
    let llm = FakeLlm::start();
    let mut host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--shutdown-timeout", "5"],
    );
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
        c.ask(&sid, "bench:1000@10").await;
        clients.push(c);
    }
    for c in &mut clients {
        c.until("agent.partial_answer").await;
    }
    let t0 = Instant::now();
    host.terminate();
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            c.until("agent.interrupted").await;
            c.close_code(Duration::from_secs(6)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(1001));
    }
    let status = loop {
        if let Some(s) = host.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(7), "host did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    // On failure, say how and when it ended, and what the host said on the way out.
    let log = host.proc.stderr_text();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert!(
        status.success(),
        "host exited with {status} {:?} after SIGTERM; the end of its log:\n{}",
        t0.elapsed(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
