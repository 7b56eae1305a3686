//! Plugin builds in worker processes (the default `--isolation worker`): native crashes of
//! plugin code — stack overflow, abort, segfault, exit, a tool that never returns — fail only
//! the call in flight while a bystander session streams on; the next call runs on a restarted
//! worker. Repeated crashes back off, limits apply, workers die with the host, and hot
//! reloads really unload old builds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use myagent_tests::client::bystander;
use myagent_tests::{host_command, plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::Value;

fn health(host: &Host) -> Value {
    serde_json::from_str(&host.http("/health")).unwrap()
}

fn worker_pid(host: &Host) -> Option<u64> {
    health(host)["plugin"]["worker_pid"].as_u64()
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            out.push(child);
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One crash mode: the crashing call fails with `expect` in its text, the bystander finishes
/// untouched, clients hear `system.plugin_crashed`, and the session's next call works on a new
/// worker process.
async fn crash_is_contained(how: &str, expect: &str) {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let before = worker_pid(&host).expect("a worker serves the plugin");
    assert!(children_of(host.proc.pid()).contains(&(before as u32)));
    let by = bystander(&host.ws_url()).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;

    c.ask(&sid, &format!(r#"call:native_crash {{"how": "{how}"}}"#))
        .await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed", "{how}: {r}");
    let text = r["content"].as_str().unwrap();
    assert!(text.contains(expect), "{how}: {text}");
    c.until_any(&["agent.final_answer", "agent.error"]).await;
    let crashed = match c.named("system.plugin_crashed").first() {
        Some(v) => (*v).clone(),
        None => c.until("system.plugin_crashed").await,
    };
    assert_eq!(crashed["agent"]["name"], "testkit", "{crashed}");
    assert_eq!(crashed["crashes"], 1, "{crashed}");
    let reason = crashed["reason"].as_str().unwrap();
    assert!(reason.contains("`native_crash`"), "{reason}");

    // The host is alive, and the next call runs on a restarted worker.
    c.ask(&sid, r#"call:echo {"text": "alive"}"#).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "success", "{how}: {r}");
    assert_eq!(r["content"], "alive");
    c.until("agent.final_answer").await;
    let after = worker_pid(&host).expect("restarted");
    assert_ne!(before, after, "{how}: the worker was not restarted");
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 1);
    assert_eq!(host.metric("myagent_plugin_workers"), 1);
    by.await.expect("the bystander's answer was disturbed");
    println!("{how}: {text}");
}

#[tokio::test]
async fn a_stack_overflow_in_a_tool_fails_only_that_call() {
    crash_is_contained(
        "stack_overflow",
        "the plugin crashed: stack overflow in tool `native_crash`;",
    )
    .await;
}

#[tokio::test]
async fn abort_in_a_tool_fails_only_that_call() {
    crash_is_contained(
        "abort",
        "the plugin crashed: abort (SIGABRT) in tool `native_crash`",
    )
    .await;
}

#[tokio::test]
async fn a_segfault_in_a_tool_fails_only_that_call() {
    crash_is_contained(
        "segfault",
        "the plugin crashed: segmentation fault (SIGSEGV) in tool `native_crash`",
    )
    .await;
}

#[tokio::test]
async fn exit_in_a_tool_fails_only_that_call() {
    crash_is_contained(
        "exit",
        "the plugin crashed: exit(0) called in tool `native_crash`",
    )
    .await;
}

#[tokio::test]
async fn a_tool_that_never_returns_is_timed_out_and_its_worker_replaced() {
    // The call fails at the tool timeout (2 s for testkit); the worker is stopped 2 s later.
    crash_is_contained("hang", "timed out after 2000 ms").await;
}

#[tokio::test]
async fn a_hundred_reloads_leave_no_old_build_behind() {
    let dir = TempDir::new("unload");
    let served = dir.path().join("libtestkit_agent.so");
    let build = std::fs::read(plugin_lib("testkit_agent")).unwrap();
    std::fs::write(&served, &build).unwrap();
    let llm = FakeLlm::start();
    let host = Host::start(&served, &llm, &["--reload-debounce-ms", "30"]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, r#"call:echo {"text": "v0"}"#).await;
    c.until("agent.final_answer").await;
    let host_pid = host.proc.pid();

    // Each reload a distinct file (the same code plus a trailing counter), renamed into place
    // as cargo does; the session stays connected and runs now and then.
    let reload = |i: u32| {
        let tmp = dir.path().join(".next.so");
        let mut bytes = build.clone();
        bytes.extend_from_slice(&i.to_le_bytes());
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &served).unwrap();
    };
    let total_rss = || -> u64 {
        rss_kib(host_pid) + children_of(host_pid).into_iter().map(rss_kib).sum::<u64>()
    };
    let settle = || async {
        // Old workers exit once no run is on them (none is: the session is idle).
        let t0 = Instant::now();
        while children_of(host_pid).len() != 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "old workers still running: {:?}",
                children_of(host_pid)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for i in 0..5 {
        reload(i);
        c.until("system.plugin_reloaded").await;
    }
    settle().await;
    let start = total_rss();
    let mut pids = HashSet::new();
    let t0 = Instant::now();
    for i in 5..105 {
        reload(i);
        let notice = c.until("system.plugin_reloaded").await;
        assert_eq!(notice["agent"]["generation"], i + 2);
        if let Some(p) = worker_pid(&host) {
            pids.insert(p);
        }
        if i % 20 == 0 {
            c.ask(&sid, &format!(r#"call:echo {{"text": "at {i}"}}"#))
                .await;
            let r = c.until("agent.tool_result").await;
            assert_eq!(r["metadata"]["status"], "success", "{r}");
            c.until("agent.final_answer").await;
        }
    }
    let took = t0.elapsed();
    settle().await;
    let end = total_rss();
    println!(
        "100 reloads in {:.1} s: host + worker RSS {} → {} KiB ({:+} KiB); {} distinct workers",
        took.as_secs_f64(),
        start,
        end,
        end as i64 - start as i64,
        pids.len()
    );
    assert!(pids.len() >= 90, "a worker per build: {}", pids.len());
    assert!(
        end < start + 20 * 1024,
        "RSS grew by {} KiB over 100 reloads",
        end - start
    );
    // The host maps no plugin copy; one copy is left on disk (the serving build's).
    let maps = std::fs::read_to_string(format!("/proc/{host_pid}/maps")).unwrap();
    assert!(
        !maps.contains("libtestkit_agent"),
        "the host mapped a plugin"
    );
    let copies: Vec<_> = std::fs::read_dir(host.state.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".so"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    // The connected session goes on, on the newest build.
    c.ask(&sid, r#"call:echo {"text": "last"}"#).await;
    assert_eq!(c.until("agent.tool_result").await["content"], "last");
    c.until("agent.final_answer").await;
}

#[tokio::test]
async fn in_process_isolation_still_serves() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--isolation", "in-process"],
    );
    let h = health(&host);
    assert_eq!(h["plugin"]["isolation"], "in-process");
    assert!(h["plugin"]["worker_pid"].is_null());
    assert!(children_of(host.proc.pid()).is_empty());
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, r#"call:echo {"text": "here"}"#).await;
    assert_eq!(c.until("agent.tool_result").await["content"], "here");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", host.proc.pid())).unwrap();
    assert!(maps.contains("libtestkit_agent"));
}

#[test]
fn inspect_reports_a_factory_that_crashes() {
    let out = host_command()
        .args(["inspect"])
        .arg(plugin_lib("testkit_agent"))
        .env("TESTKIT_VARIANT", "abort_factory")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: the plugin crashed while loading: abort (SIGABRT)"),
        "{err}"
    );
}

#[tokio::test]
async fn repeated_crashes_back_off_and_are_counted() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    let mut notices = Vec::new();
    for _ in 0..2 {
        c.ask(&sid, r#"call:native_crash {"how": "abort"}"#).await;
        c.until("agent.ready").await;
        notices.push(match c.named("system.plugin_crashed").get(notices.len()) {
            Some(v) => (*v).clone(),
            None => c.until("system.plugin_crashed").await,
        });
    }
    // The first crash restarts at once; the second, soon after, waits the first back-off step.
    assert_eq!(notices[0]["crashes"], 1);
    assert_eq!(notices[0]["restart_in_ms"], 0);
    assert_eq!(notices[1]["crashes"], 2);
    assert_eq!(notices[1]["restart_in_ms"], 250);
    let t0 = Instant::now();
    c.ask(&sid, r#"call:echo {"text": "after two"}"#).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["content"], "after two", "{r}");
    println!(
        "first call after the second crash: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 2);
    assert_eq!(host.metric("myagent_plugin_worker_starts_total"), 3);
}

#[tokio::test]
async fn a_crash_loop_is_summarised_in_the_log_and_counted_in_full() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    for _ in 0..5 {
        c.ask(&sid, r#"call:native_crash {"how": "abort"}"#).await;
        c.until("agent.ready").await;
    }
    let end = Instant::now() + Duration::from_secs(10);
    while c.named("system.plugin_crashed").len() < 5 && Instant::now() < end {
        c.until("system.plugin_crashed").await;
    }
    assert_eq!(
        c.named("system.plugin_crashed").len(),
        5,
        "every crash told"
    );
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 5);
    host.proc
        .wait_stderr("keeps crashing", Duration::from_secs(5));
    let log = host.proc.stderr_text();
    assert_eq!(
        log.matches("plugin worker crashed; other sessions are unaffected")
            .count(),
        3,
        "{log}"
    );
    assert_eq!(
        log.matches("plugin worker keeps crashing").count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn a_worker_over_its_memory_limit_fails_the_call_not_the_host() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--worker-memory-limit", "1024"],
    );
    let pid = worker_pid(&host).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert!(line.contains(&(1024u64 << 20).to_string()), "{line}");
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, r#"call:native_crash {"how": "oom"}"#).await;
    let r = c.until("agent.tool_result").await;
    let text = r["content"].as_str().unwrap();
    assert!(
        text.contains("the plugin crashed: out of memory in tool `native_crash`"),
        "{text}"
    );
    c.until("agent.ready").await;
    c.ask(&sid, r#"call:echo {"text": "fine"}"#).await;
    assert_eq!(c.until("agent.tool_result").await["content"], "fine");
}

#[tokio::test]
async fn workers_never_outlive_a_killed_host() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let pid = worker_pid(&host).unwrap();
    host.kill9();
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "worker {pid} outlived its host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Security round 3, item 10: a worker that writes 4 MiB without a newline on stdout and on
/// stderr, and answers with 20 MiB, costs the host a bounded amount: lines are cut at 8 KiB (the
/// rest dropped and counted), and an answer over the 16 MiB frame limit becomes the call's error
/// in the worker — the host never reads it, and the worker is not stopped for it.
#[tokio::test]
async fn a_flood_of_worker_output_costs_the_host_a_bounded_amount() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let pid = host.proc.pid();
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, r#"call:echo {"text": "warm"}"#).await;
    c.until("agent.final_answer").await;
    let before = hwm_kib(pid);
    let (mib4, mib20) = (4u64 << 20, 20u64 << 20);
    c.ask(
        &sid,
        &format!(r#"call:flood {{"stderr": {mib4}, "stdout": {mib4}, "result": {mib20}}}"#),
    )
    .await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed", "{r}");
    let text = r["content"].as_str().unwrap();
    assert!(text.contains("over the 16 MiB"), "{text}");
    c.until_any(&["agent.final_answer", "agent.error"]).await;
    // Lines were cut, not held: the drops are counted once the readers are through.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dropped = 0;
    while Instant::now() < deadline {
        dropped = host.metric("myagent_plugin_worker_output_dropped_bytes_total");
        if dropped >= 2 * mib4 - 2 * 8192 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped >= 2 * mib4 - 2 * 8192, "dropped {dropped}");
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 0);
    let grown = hwm_kib(pid).saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "the host's peak memory grew {grown} KiB for 28 MiB of worker output"
    );
    // An answer that fits goes through (and is truncated for the model as any long output).
    c.ask(&sid, r#"call:flood {"result": 4194304}"#).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(
        r["metadata"]["status"],
        "success",
        "{}",
        &r.to_string()[..200]
    );
    c.until("agent.final_answer").await;
}

/// A burst of new sessions — more than the worker's 64 places and 256 waiting calls, with an
/// agent that takes 200 ms to make — queues for the worker instead of being refused as busy
/// (sessions are bounded by the session caps, not by the worker's queue).
#[tokio::test]
async fn a_burst_of_new_sessions_queues_for_the_worker_instead_of_being_refused() {
    let llm = FakeLlm::start();
    let slow = [("TESTKIT_CREATE_MS", std::path::Path::new("200"))];
    let host = Host::start_with_env(&plugin_lib("testkit_agent"), &llm, &[], &slow);
    // 400 clients (a connection handles its messages in order: one creation at a time each),
    // all asking at once.
    let mut clients = Vec::new();
    for _ in 0..400 {
        let mut c = Client::connect(&host.ws_url()).await;
        c.until("system.connected").await;
        clients.push(c);
    }
    for c in clients.iter_mut() {
        c.send(serde_json::json!({"event": "user.create_session", "timestamp": 0}))
            .await;
    }
    let created = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        let e = c.until_any(&["agent.session_created", "agent.error"]).await;
        (e["event"] == "agent.error").then(|| e["error"].to_string())
    }))
    .await;
    let errors: Vec<String> = created.into_iter().flatten().collect();
    assert!(
        errors.is_empty(),
        "{} of 400 refused: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 0);
}
