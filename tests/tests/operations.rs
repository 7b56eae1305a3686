//! Operations: logs that machines read (`--log-format json`; no colour escape codes when stderr
//! is not a terminal), where run traces go when a plugin asks for them, and the `Host` rule
//! for a host bound beyond loopback.

use std::io::{Read, Write};

use myagent_tests::{plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};

/// One turn, so that the host logs something about a session.
async fn one_turn(host: &Host, llm: &FakeLlm) {
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "Logged."}]));
    c.ask(&sid, "hi").await;
    c.until("agent.ready").await;
}

/// Stops `host` (SIGTERM, as an operator would) and returns all it logged.
fn stopped(host: &mut Host) -> String {
    host.terminate();
    host.proc
        .wait_line("Stopped.", std::time::Duration::from_secs(15));
    host.proc.exit_stderr()
}

#[tokio::test]
async fn logs_are_json_lines_when_asked_and_never_coloured_off_a_terminal() {
    let llm = FakeLlm::start();
    let mut json_host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--log-format", "json"],
    );
    one_turn(&json_host, &llm).await;
    let log = stopped(&mut json_host);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "the host logged: {log}");
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    // Text, to a pipe (not a terminal): no escape codes.
    let mut text_host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    one_turn(&text_host, &llm).await;
    let log = stopped(&mut text_host);
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log that is not a terminal: {log:?}"
    );
}

#[tokio::test]
async fn the_start_up_says_where_run_traces_go_and_they_are_timestamped_as_the_protocol() {
    let llm = FakeLlm::start();
    // testkit asks for traces (enable_tracing).
    let off = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let out = off.proc.stdout_text();
    assert!(out.contains("they are off: set --trace-file"), "{out}");
    let dir = TempDir::new("traces");
    let file = dir.path().join("trace.jsonl");
    let on = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--trace-file", file.to_str().unwrap()],
    );
    assert!(
        on.proc.stdout_text().contains("written to"),
        "{}",
        on.proc.stdout_text()
    );
    one_turn(&on, &llm).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let ts = first["ts"].as_str().unwrap_or_else(|| panic!("{first}"));
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
}

/// GET /health with a `Host` header naming `name`; returns the status line.
fn health_as(port: u16, name: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or("").to_owned()
}

#[test]
fn a_host_bound_beyond_loopback_answers_to_any_name_and_a_loopback_one_does_not() {
    let llm = FakeLlm::start();
    let local = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    assert!(
        health_as(local.port, "myserver").contains("421"),
        "DNS rebinding stays refused on loopback"
    );
    let open = Host::start(&plugin_lib("weather_agent"), &llm, &["--host", "0.0.0.0"]);
    assert!(
        health_as(open.port, "myserver").contains("200"),
        "a server's own name"
    );
    // Names listed by the operator stay the only ones.
    let listed = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--host", "0.0.0.0", "--allowed-host", "agent.example"],
    );
    assert!(health_as(listed.port, "agent.example").contains("200"));
    assert!(health_as(listed.port, "myserver").contains("421"));
}
