//! Tools from MCP servers, against real servers run as child processes: the tests' own stdio
//! server (`mcp-test-server`, with tools that fail, crash and change the list) and the reference
//! server from npm (`@modelcontextprotocol/server-everything`, pinned in tests/mcp's
//! package-lock), over stdio and over streamable HTTP.
//!
//! The reference server needs `npm ci` in tests/mcp (`make test` runs it) and Node.js; where it
//! is missing those tests say so and pass, unless `MYAGENT_REQUIRE_MCP=1` (set by `.ci/run`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use myagent_tests::{
    bin, host_command, plugin_lib, workspace_root, Client, FakeLlm, Host, Proc, TempDir,
};
use serde_json::{json, Value};

fn config(dir: &TempDir, servers: Value) -> PathBuf {
    let path = dir.path().join("mcp.json");
    std::fs::write(&path, json!({ "mcpServers": servers }).to_string()).unwrap();
    path
}

fn own() -> Value {
    json!({"command": bin("mcp-test-server")})
}

fn call(tool: &str, args: Value) -> Value {
    json!({"tool_calls": [{"name": tool, "arguments": args.to_string()}]})
}

async fn host_with(servers: Value, extra: &[&str]) -> (FakeLlm, Host, TempDir) {
    let dir = TempDir::new("mcp");
    let path = config(&dir, servers);
    let llm = FakeLlm::start();
    let mut args = vec!["--mcp-config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &args);
    (llm, host, dir)
}

/// Asks once (the scripted steps answer) and returns the tool results and the final answer.
async fn turn(c: &mut Client, sid: &str) -> (Vec<Value>, String) {
    c.ask(sid, "go").await;
    let mut results = Vec::new();
    loop {
        let e = c
            .until_any(&["agent.tool_result", "agent.final_answer", "agent.error"])
            .await;
        match e["event"].as_str().unwrap() {
            "agent.tool_result" => results.push(e),
            "agent.final_answer" => {
                c.until("agent.ready").await;
                return (results, e["content"].as_str().unwrap().to_owned());
            }
            _ => panic!("run failed: {e}"),
        }
    }
}

fn names_offered(req: &Value) -> Vec<String> {
    req["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tools_of_a_stdio_server_are_offered_and_called_beside_the_plugins() {
    let (llm, host, _dir) = host_with(json!({"own": own()}), &[]).await;
    let started = host.proc.stdout_text();
    assert!(
        started.contains("MCP server own (stdio: ") && started.contains("own__echo"),
        "{started}"
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    let created = c.named("agent.session_created")[0].clone();
    let tools: Vec<&str> = created["agent"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    // The plugin's `echo` and `fail` keep their names; the server's clash and get its prefix.
    for t in [
        "echo",
        "fail",
        "add",
        "own__echo",
        "own__fail",
        "slow",
        "pid",
    ] {
        assert!(tools.contains(&t), "{t} missing from {tools:?}");
    }
    llm.script(json!([
        {"tool_calls": [
            {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"},
            {"name": "own__echo", "arguments": "{\"text\": \"from the server\"}"},
            {"name": "echo", "arguments": "{\"text\": \"from the plugin\"}"},
            {"name": "own__fail", "arguments": "{}"}
        ]},
        {"text": "Done."}
    ]));
    let (results, answer) = turn(&mut c, &sid).await;
    assert_eq!(answer, "Done.");
    let by_tool = |name: &str| {
        results
            .iter()
            .find(|r| r["metadata"]["tool"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {results:?}"))
            .clone()
    };
    assert_eq!(by_tool("add")["content"], "5");
    assert_eq!(by_tool("own__echo")["content"], "from the server");
    assert_eq!(by_tool("echo")["content"], "from the plugin");
    let failed = by_tool("own__fail");
    assert_eq!(failed["metadata"]["status"], "failed");
    assert_eq!(failed["content"], "Error: it failed on purpose");
    // The model was offered the server's tools with their schemas, and saw the results.
    let reqs = llm.requests();
    let offered = names_offered(&reqs[0]);
    assert!(offered.contains(&"add".to_owned()) && offered.contains(&"terminate".to_owned()));
    let add = reqs[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "add")
        .unwrap();
    assert_eq!(
        add["function"]["parameters"]["properties"]["a"]["type"],
        "number"
    );
    // The server's stderr is in the host's log, tagged.
    let line = host
        .proc
        .wait_stderr("mcp-test-server: started", Duration::from_secs(5));
    assert!(line.contains("own"), "{line}");
}

#[tokio::test]
async fn a_crashing_server_fails_only_its_call_and_is_restarted() {
    let (llm, host, _dir) = host_with(json!({"own": own()}), &["--tool-timeout", "5"]).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([call("pid", json!({})), {"text": "ok"}]));
    let (r, _) = turn(&mut c, &sid).await;
    let pid_before = r[0]["content"].as_str().unwrap().to_owned();

    // The crash: that call fails with a clear text; a plugin tool in the same step is fine.
    llm.script(json!([
        {"tool_calls": [
            {"name": "crash", "arguments": "{}"},
            {"name": "echo", "arguments": "{\"text\": \"still here\"}"}
        ]},
        {"text": "after the crash"}
    ]));
    let (r, answer) = turn(&mut c, &sid).await;
    assert_eq!(answer, "after the crash");
    let crash = r.iter().find(|x| x["metadata"]["tool"] == "crash").unwrap();
    assert_eq!(crash["metadata"]["status"], "failed");
    let text = crash["content"].as_str().unwrap();
    assert!(
        text.starts_with("Error: the MCP server `own` did not answer"),
        "{text}"
    );
    let echo = r.iter().find(|x| x["metadata"]["tool"] == "echo").unwrap();
    assert_eq!(echo["content"], "still here");

    // Restarted with back-off: a later call works on a new process.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        llm.script(json!([call("pid", json!({})), {"text": "ok"}]));
        let (r, _) = turn(&mut c, &sid).await;
        if r[0]["metadata"]["status"] == "success" {
            assert_ne!(r[0]["content"].as_str().unwrap(), pid_before);
            let metrics = host.http("/metrics");
            assert!(
                metrics.contains("myagent_mcp_server_up{server=\"own\"} 1")
                    && metrics.contains("myagent_mcp_connections_total{server=\"own\"} 2"),
                "{metrics}"
            );
            break;
        }
        // Meanwhile the call fails at once, saying why.
        assert!(
            r[0]["content"]
                .as_str()
                .unwrap()
                .contains("MCP server `own` is not available"),
            "{}",
            r[0]
        );
        assert!(Instant::now() < deadline, "the server was not restarted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_changed_tool_list_is_picked_up() {
    let (llm, host, _dir) = host_with(json!({"own": own()}), &[]).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    assert!(!names_offered_now(&mut c)
        .await
        .contains(&"extra".to_owned()));
    llm.script(json!([call("grow", json!({})), {"text": "grown"}]));
    turn(&mut c, &sid).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names_offered_now(&mut c)
        .await
        .contains(&"extra".to_owned())
    {
        assert!(
            Instant::now() < deadline,
            "the list_changed notification was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    llm.script(json!([call("extra", json!({})), {"text": "used it"}]));
    let (r, _) = turn(&mut c, &sid).await;
    assert_eq!(r[0]["content"], "extra works");
}

/// The tools a new session is told about.
async fn names_offered_now(c: &mut Client) -> Vec<String> {
    c.send(json!({"event": "user.create_session"})).await;
    let created = c.until("agent.session_created").await;
    created["agent"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn approval_and_timeouts_apply_to_mcp_tools() {
    let (llm, host, _dir) = host_with(
        json!({"own": own()}),
        &["--require-approval", "add", "--tool-timeout", "1"],
    )
    .await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([
        {"tool_calls": [
            {"name": "add", "arguments": "{\"a\": 1, \"b\": 1}"},
            {"name": "slow", "arguments": "{\"ms\": 3000}"}
        ]},
        {"text": "ok"}
    ]));
    c.ask(&sid, "go").await;
    let ask = c.until("agent.tool_approval_required").await;
    assert_eq!(ask["metadata"]["tool"], "add");
    c.send(json!({"event": "user.tool_approval", "session_id": sid, "step_id": ask["step_id"], "approved": true}))
        .await;
    let mut results = Vec::new();
    while results.len() < 2 {
        results.push(c.until("agent.tool_result").await);
    }
    let add = results
        .iter()
        .find(|r| r["metadata"]["tool"] == "add")
        .unwrap();
    assert_eq!(add["content"], "2");
    let slow = results
        .iter()
        .find(|r| r["metadata"]["tool"] == "slow")
        .unwrap();
    assert_eq!(slow["metadata"]["status"], "failed");
    assert_eq!(
        slow["content"],
        "Error: tool `slow` on MCP server `own` timed out after 1000 ms"
    );
    c.until("agent.final_answer").await;
}

#[test]
fn a_bad_config_is_a_clear_start_up_error_and_a_down_server_is_not() {
    let dir = TempDir::new("mcp-bad");
    let path = dir.path().join("mcp.json");
    std::fs::write(&path, r#"{"mcpServers": {"x": {"url": "ftp://nope"}}}"#).unwrap();
    let out = host_command()
        .arg("serve")
        .arg(plugin_lib("testkit_agent"))
        .args(["--port", "0", "--mcp-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mcp.json: server `x`: `url` must be an http:// or https:// URL"),
        "{err}"
    );

    // A server that cannot start: the host serves, says so, and keeps trying.
    let llm = FakeLlm::start();
    let servers = json!({"gone": {"command": "/nonexistent/mcp-server"}});
    let path = config(&dir, servers);
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--mcp-config", path.to_str().unwrap()],
    );
    host.proc.wait_stderr(
        "MCP server gone (stdio: /nonexistent/mcp-server) is not available: cannot start",
        Duration::from_secs(5),
    );
}

#[tokio::test]
async fn stdio_servers_never_outlive_the_host() {
    let (llm, host, _dir) = host_with(json!({"own": own()}), &[]).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([call("pid", json!({})), {"text": "ok"}]));
    let (r, _) = turn(&mut c, &sid).await;
    let pid: i32 = r[0]["content"].as_str().unwrap().parse().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    host.kill9();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "MCP server {pid} outlived the host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => false,
    }
}

/// The reference server's entry point, or why it cannot run here.
fn everything() -> Option<PathBuf> {
    let js = workspace_root()
        .join("tests/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let node = std::process::Command::new("node").arg("--version").output();
    let why = match (js.exists(), node.is_ok()) {
        (true, true) => return Some(js),
        (false, _) => "run `npm ci` in tests/mcp",
        (_, false) => "node not found",
    };
    if std::env::var("MYAGENT_REQUIRE_MCP").is_ok_and(|v| v == "1") {
        panic!("the MCP reference server is missing: {why}");
    }
    eprintln!("SKIPPED: the MCP reference server is missing ({why})");
    None
}

#[tokio::test]
async fn the_reference_server_over_stdio() {
    let Some(js) = everything() else { return };
    let servers = json!({"everything": {"command": "node", "args": [js, "stdio"]}});
    let (llm, host, _dir) = host_with(servers, &[]).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([
        {"tool_calls": [
            {"name": "everything__echo", "arguments": "{\"message\": \"hello MCP\"}"},
            {"name": "get-sum", "arguments": "{\"a\": 40, \"b\": 2}"}
        ]},
        {"text": "done"}
    ]));
    let (r, _) = turn(&mut c, &sid).await;
    let echo = r
        .iter()
        .find(|x| x["metadata"]["tool"] == "everything__echo")
        .unwrap();
    assert_eq!(echo["metadata"]["status"], "success", "{echo}");
    assert!(
        echo["content"].as_str().unwrap().contains("hello MCP"),
        "{echo}"
    );
    let sum = r
        .iter()
        .find(|x| x["metadata"]["tool"] == "get-sum")
        .unwrap();
    assert!(sum["content"].as_str().unwrap().contains("42"), "{sum}");
}

#[tokio::test]
async fn the_reference_server_over_streamable_http() {
    let Some(js) = everything() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(&js)
        .arg("streamableHttp")
        .env("PORT", port.to_string());
    let server = Proc::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the reference server did not listen: {}",
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (llm, host, _dir) = host_with(json!({"web": {"url": url}}), &[]).await;
    assert!(
        host.proc.stdout_text().contains("MCP server web (http: "),
        "{}",
        host.proc.stdout_text()
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([
        call("get-sum", json!({"a": 2, "b": 3})),
        {"text": "done"}
    ]));
    let (r, _) = turn(&mut c, &sid).await;
    assert_eq!(r[0]["metadata"]["status"], "success", "{}", r[0]);
    assert!(r[0]["content"].as_str().unwrap().contains('5'), "{}", r[0]);
    drop(server);
}

#[tokio::test]
async fn a_plugin_names_its_own_servers_and_the_operators_file_wins() {
    let server = bin("mcp-test-server");
    let llm = FakeLlm::start();
    // The plugin asks for `kit` (MCP_TEST_NAME=plugin).
    let host = Host::start_with_env(
        &plugin_lib("testkit_agent"),
        &llm,
        &[],
        &[("TESTKIT_MCP_SERVER", server.as_path())],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([call("whoami", json!({})), {"text": "ok"}]));
    let (r, _) = turn(&mut c, &sid).await;
    assert_eq!(r[0]["content"], "plugin");
    drop(c);
    drop(host);

    // The operator's file names `kit` too: its definition is the one used.
    let dir = TempDir::new("mcp-both");
    let path = config(
        &dir,
        json!({"kit": {"command": server, "env": {"MCP_TEST_NAME": "operator"}}}),
    );
    let host = Host::start_with_env(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--mcp-config", path.to_str().unwrap()],
        &[("TESTKIT_MCP_SERVER", server.as_path())],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([call("whoami", json!({})), {"text": "ok"}]));
    let (r, _) = turn(&mut c, &sid).await;
    assert_eq!(r[0]["content"], "operator");
}

#[test]
fn inspect_lists_the_mcp_tools_the_agent_would_be_offered() {
    let dir = TempDir::new("mcp-inspect");
    let path = config(
        &dir,
        json!({"own": own(), "gone": {"url": "http://127.0.0.1:9/mcp"}}),
    );
    let out = host_command()
        .arg("inspect")
        .arg(plugin_lib("testkit_agent"))
        .args(["--mcp-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("MCP server own (stdio: ") && text.contains("  own__echo — Returns `text`."),
        "{text}"
    );
    assert!(
        text.contains("MCP server gone (http: http://127.0.0.1:9/mcp): not available: "),
        "{text}"
    );
    let out = host_command()
        .arg("inspect")
        .arg(plugin_lib("testkit_agent"))
        .args(["--json", "--mcp-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let own = v["mcp_tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == "own")
        .unwrap();
    assert!(own["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "add"));
}

/// Security round 3, item 4: a server that announces a tool of the same name later neither
/// renames the tool approval was asked for nor escapes approval itself: names stay with the
/// tools they were given to (the newcomer is prefixed), `--require-approval` follows a tool's
/// identity (its own name or `SERVER__tool`), and the approval request names the server.
#[tokio::test]
async fn a_late_name_clash_neither_renames_nor_unguards_an_approved_tool() {
    let late = json!({"command": bin("mcp-test-server"),
        "env": {"MCP_TEST_TOOLS": "grow", "MCP_TEST_GROW_NAME": "add"}});
    let (llm, host, _dir) = host_with(
        json!({"files": own(), "late": late}),
        &["--require-approval", "add"],
    )
    .await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    // `late` (whose `grow` came second, so is prefixed) announces its own `add`.
    llm.script(json!([call("late__grow", json!({})), {"text": "grown"}]));
    let (results, _) = turn(&mut c, &sid).await;
    assert_eq!(results[0]["metadata"]["status"], "success", "{results:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        llm.script(json!([{"text": "listing"}]));
        turn(&mut c, &sid).await;
        let offered = names_offered(&llm.requests().pop().unwrap());
        if offered.contains(&"late__add".to_owned()) {
            assert!(offered.contains(&"add".to_owned()), "{offered:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "late's add never offered: {offered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `add` is still files' tool, and still asks first (denied: it does not run).
    for (tool, server) in [("add", "files"), ("late__add", "late")] {
        llm.script(json!([call(tool, json!({"a": 1, "b": 2})), {"text": "done"}]));
        c.ask(&sid, "go").await;
        let ask = c.until("agent.tool_approval_required").await;
        assert_eq!(ask["metadata"]["tool"], tool, "{ask}");
        assert_eq!(ask["metadata"]["server"], server, "{ask}");
        assert!(ask["content"].as_str().unwrap().contains(server), "{ask}");
        c.send(json!({"event": "user.tool_approval", "session_id": sid,
            "step_id": ask["step_id"], "approved": false}))
            .await;
        let r = c.until("agent.tool_result").await;
        assert_eq!(r["metadata"]["status"], "failed", "{r}");
        assert!(r["content"].as_str().unwrap().contains("denied"), "{r}");
        c.until("agent.ready").await;
    }
}

/// Security round 3, item 11: a server that lists 60,000 tools, or one with a huge schema, does
/// not get them offered on every model call — per server at most 128 tools and 512 KiB, a tool
/// at most 32 KiB, a listing at most 16 pages (and its stderr lines are cut like a worker's).
#[tokio::test]
async fn a_server_listing_too_much_is_bounded() {
    let flood = json!({"command": bin("mcp-test-server"),
        "env": {"MCP_TEST_MANY": "60000", "MCP_TEST_BIG_SCHEMA": "100000"}});
    let (llm, host, _dir) = host_with(json!({"flood": flood}), &[]).await;
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "fine"}]));
    let (_, answer) = turn(&mut c, &sid).await;
    assert_eq!(answer, "fine");
    let req = llm.requests().pop().unwrap();
    let offered = names_offered(&req);
    let from_flood = offered
        .iter()
        .filter(|n| n.starts_with("many_") || n.starts_with("flood__"))
        .count()
        + offered
            .iter()
            .filter(|n| ["add", "slow", "crash", "grow", "pid", "whoami"].contains(&n.as_str()))
            .count();
    assert!(
        from_flood <= 128,
        "{from_flood} tools of one server offered"
    );
    assert!(
        !offered.contains(&"huge".to_owned()),
        "the 100 KB schema was offered"
    );
    let size = req.to_string().len();
    assert!(size < 256 * 1024, "a model request of {size} bytes");
    assert!(
        host.proc.stdout_text().contains("left out")
            || host.proc.stderr_text().contains("left out")
    );
}
