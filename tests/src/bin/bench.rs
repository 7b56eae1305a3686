//! `myagent-bench`: plugin benchmarks that print numbers.
//!
//!   myagent-bench tool-overhead   host→plugin tool call cost: in process (direct, via spawn_blocking as runs do) and in a worker process
//!   myagent-bench reload          file replaced → `system.plugin_reloaded` received by a client
//!   myagent-bench mcp-overhead    an MCP tool call (stdio) next to a plugin tool call, no-op tools
//!   myagent-bench handoff         a handoff's cost: its call → the target's first answer piece,
//!                                 beside the same for a plain tool call (plugins in workers)
//!   myagent-bench all
//!
//! Run with `make bench` (release build). Machines here are shared: read the numbers as a
//! distribution, not a verdict.

use std::time::{Duration, Instant};

use myagent_host::plugin::{self, copies::CopyDir};
use myagent_tests::{plugin_lib, target_dir, workspace_root, Client, FakeLlm, Host, TempDir};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn tool_overhead() {
    let dir = TempDir::new("bench-copies");
    let copies = CopyDir::open(dir.path()).unwrap();
    let p = std::sync::Arc::new(
        plugin::load(&plugin_lib("testkit_agent"), &copies, 1).expect("load testkit plugin"),
    );
    let inst = p
        .instantiate(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let n = 200_000;
    for _ in 0..1000 {
        inst.call_tool_blocking("echo", r#"{"text":"x"}"#);
    }
    let t0 = Instant::now();
    for _ in 0..n {
        let r = inst.call_tool_blocking("echo", r#"{"text":"x"}"#);
        assert_eq!(r.output.as_deref(), Some("x"));
    }
    let direct = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    let n2 = 20_000;
    let t0 = Instant::now();
    for _ in 0..n2 {
        let i = inst.clone();
        tokio::task::spawn_blocking(move || i.call_tool_blocking("echo", r#"{"text":"x"}"#))
            .await
            .unwrap();
    }
    let hop = t0.elapsed().as_secs_f64() * 1e6 / n2 as f64;
    let metrics = std::sync::Arc::new(myagent_host::metrics::Metrics::default());
    let t0 = Instant::now();
    for _ in 0..n2 {
        let r = inst
            .call_tool(
                "echo",
                serde_json::json!({"text": "x"}),
                (Duration::from_secs(5), None),
                &metrics,
            )
            .await
            .unwrap();
        assert_eq!(r.output.as_deref(), Some("x"));
    }
    let pooled = t0.elapsed().as_secs_f64() * 1e6 / n2 as f64;
    println!("tool-overhead: direct ABI call (args JSON in, ToolResult JSON out, panic guard): {direct:.2} µs/call over {n} calls");
    println!("tool-overhead: blocking-pool hop + ABI call (spawn_blocking, no deadline or guard):   {hop:.2} µs/call over {n2} calls");
    println!("tool-overhead: as a run calls it (Instance::call_tool: blocking pool, deadline, cancel guard): {pooled:.2} µs/call over {n2} calls");
    let (p50, p99) = call_latency(&inst, &metrics).await;
    println!("tool-overhead: in process, per call: p50 {p50:.1} µs, p99 {p99:.1} µs");

    // The same build in a worker process (the default `--isolation worker`), the worker being
    // the host binary next to this one (release under `make bench`).
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("myagent-host")))
        .filter(|e| e.exists())
        .unwrap_or_else(|| myagent_tests::bin("myagent-host"));
    let loader = plugin::Loader {
        copies: std::sync::Arc::new(CopyDir::open(dir.path()).unwrap()),
        isolation: plugin::Isolation::Worker(plugin::WorkerOptions {
            exe: exe.clone(),
            memory_limit: None,
            cpu_limit: None,
            drain_timeout: Duration::from_secs(1),
            on_crash: None,
            metrics: metrics.clone(),
        }),
    };
    let p = std::sync::Arc::new(
        loader
            .load(&plugin_lib("testkit_agent"), 1)
            .await
            .expect("load testkit in a worker"),
    );
    let remote = p
        .instantiate(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let (p50, p99) = call_latency(&remote, &metrics).await;
    println!(
        "tool-overhead: in a worker process ({}), per call: p50 {p50:.1} µs, p99 {p99:.1} µs",
        exe.display()
    );
    // Concurrent calls: 8 at a time, as parallel tool calls of several sessions make them.
    let n3 = 20_000;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (i, m) = (remote.clone(), metrics.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n3 / 8 {
                i.call_tool(
                    "echo",
                    serde_json::json!({"text": "x"}),
                    (Duration::from_secs(5), None),
                    &m,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "tool-overhead: in a worker process, 8 concurrent callers: {:.0} calls/s",
        n3 as f64 / t0.elapsed().as_secs_f64()
    );
}

/// Sequential `echo` calls as a run makes them (from a task on the runtime, as runs are);
/// (p50, p99) in µs.
async fn call_latency(
    inst: &myagent_host::plugin::Instance,
    metrics: &std::sync::Arc<myagent_host::metrics::Metrics>,
) -> (f64, f64) {
    let (inst, metrics) = (inst.clone(), metrics.clone());
    tokio::spawn(async move { call_latency_here(&inst, &metrics).await })
        .await
        .unwrap()
}

async fn call_latency_here(
    inst: &myagent_host::plugin::Instance,
    metrics: &std::sync::Arc<myagent_host::metrics::Metrics>,
) -> (f64, f64) {
    let n = 20_000;
    let mut took = Vec::with_capacity(n);
    for i in 0..n + 1_000 {
        let t0 = Instant::now();
        let r = inst
            .call_tool(
                "echo",
                serde_json::json!({"text": "x"}),
                (Duration::from_secs(5), None),
                metrics,
            )
            .await
            .unwrap();
        assert_eq!(r.output.as_deref(), Some("x"));
        if i >= 1_000 {
            took.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    took.sort_by(f64::total_cmp);
    (percentile(&took, 0.5), percentile(&took, 0.99))
}

async fn reload() {
    let dir = TempDir::new("bench-reload");
    let served = dir.path().join("libtestkit_agent.so");
    std::fs::copy(plugin_lib("testkit_agent"), &served).unwrap();
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir().join("fixtures"))
        .env("TESTKIT_TAG", "v2")
        .args(["build", "-q", "-p", "testkit_agent"])
        .status()
        .unwrap();
    assert!(status.success());
    let builds = [
        target_dir().join("fixtures/debug/libtestkit_agent.so"),
        plugin_lib("testkit_agent"),
    ];
    let llm = FakeLlm::start();
    let host = Host::start(&served, &llm, &["--reload-debounce-ms", "200"]);
    let (mut c, _, _) = Client::with_session(&host.ws_url()).await;
    let mut ms = Vec::new();
    for i in 0..10 {
        let tmp = dir.path().join(".next.so");
        std::fs::copy(&builds[i % 2], &tmp).unwrap();
        let t0 = Instant::now();
        std::fs::rename(&tmp, &served).unwrap();
        c.until("system.plugin_reloaded").await;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "reload: file renamed into place → client receives system.plugin_reloaded (debounce 200 ms): p50 {:.0} ms, max {:.0} ms over {} reloads",
        percentile(&ms, 0.5),
        ms[ms.len() - 1],
        ms.len()
    );
}

/// Sequential no-op calls: `echo` of the tests' own stdio MCP server (Rust) and of the
/// reference server (Node.js, if installed in tests/mcp), as a run makes them
/// (`McpServer::call`: JSON-RPC over the child's pipes, timeout), beside the plugin's `echo`.
async fn mcp_overhead() {
    use myagent_host::mcp::{config::ServerSpec, McpHub};
    let mut specs = std::collections::BTreeMap::new();
    specs.insert(
        "own".to_string(),
        ServerSpec::Stdio {
            command: myagent_tests::bin("mcp-test-server").display().to_string(),
            args: vec![],
            env: Default::default(),
        },
    );
    let js = workspace_root()
        .join("tests/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if js.exists() {
        specs.insert(
            "everything".to_string(),
            ServerSpec::Stdio {
                command: "node".into(),
                args: vec![js.display().to_string(), "stdio".into()],
                env: Default::default(),
            },
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = McpHub::start(specs, stop.clone(), Duration::from_secs(30)).await;
    for server in hub.servers() {
        let (tool, args) = match server.name.as_str() {
            "own" => ("echo", serde_json::json!({"text": "x"})),
            _ => ("echo", serde_json::json!({"message": "x"})),
        };
        let n = 2_000;
        let mut took = Vec::with_capacity(n);
        for i in 0..n + 200 {
            let t0 = Instant::now();
            let r = server
                .call(tool, args.clone(), Duration::from_secs(5), None)
                .await
                .expect("MCP call");
            assert!(r.0, "{r:?}");
            if i >= 200 {
                took.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        took.sort_by(f64::total_cmp);
        println!(
            "mcp-overhead: `{tool}` on MCP server {} ({}): p50 {:.1} µs, p99 {:.1} µs per call over {n} calls",
            server.name,
            server.spec.describe(),
            percentile(&took, 0.5),
            percentile(&took, 0.99)
        );
    }
    stop.cancel();
}

/// Time from a call's `agent.tool_call` to the next step's first answer piece on `sid`, the
/// model scripted to call `tool` and then answer.
async fn call_then_answer(c: &mut Client, llm: &FakeLlm, sid: &str, tool: &str) -> f64 {
    llm.script(serde_json::json!([
        {"tool_calls": [{"name": tool, "arguments": "{\"text\": \"x\"}"}]},
        {"text": "done"}
    ]));
    c.ask(sid, "go").await;
    let call = c.until("agent.tool_call").await;
    let t0 = Instant::now();
    assert_eq!(call["metadata"]["tool"], tool);
    c.until("agent.partial_answer").await;
    let took = t0.elapsed().as_secs_f64() * 1000.0;
    c.until("agent.ready").await;
    took
}

/// A testkit session hands over to the weather agent (`--handoff testkit=weather-assistant`);
/// the baseline is the testkit's own `echo` in another session. Each measurement on fresh
/// sessions (closed after), so the conversation sent to the model does not grow.
async fn handoff() {
    let llm = FakeLlm::start();
    let host = Host::with_testkit(
        &llm,
        &[
            "--handoff",
            "testkit=weather-assistant",
            // Hundreds of messages a minute from one address.
            "--max-runs-per-minute-per-ip",
            "0",
        ],
    );
    let mut c = Client::connect(&host.ws_url()).await;
    let n = 300;
    let (mut handoffs, mut calls) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 20 {
        let mut took = [0.0; 2];
        for (k, tool) in ["transfer_to_weather_assistant", "echo"]
            .into_iter()
            .enumerate()
        {
            c.send(serde_json::json!({"event": "user.create_session", "agent": "testkit"}))
                .await;
            let created = c.until("agent.session_created").await;
            let sid = created["session_id"].as_str().unwrap().to_owned();
            took[k] = call_then_answer(&mut c, &llm, &sid, tool).await;
            c.send(serde_json::json!({"event": "user.close_session", "session_id": sid}))
                .await;
            c.until("agent.session_closed").await;
        }
        if i >= 20 {
            handoffs.push(took[0]);
            calls.push(took[1]);
        }
    }
    handoffs.sort_by(f64::total_cmp);
    calls.sort_by(f64::total_cmp);
    println!(
        "handoff: its call → the target's first answer piece: p50 {:.2} ms, p99 {:.2} ms; a plain tool call (`echo`) → the next step's first answer piece: p50 {:.2} ms, p99 {:.2} ms ({n} each, alternating, each on a fresh session)",
        percentile(&handoffs, 0.5),
        percentile(&handoffs, 0.99),
        percentile(&calls, 0.5),
        percentile(&calls, 0.99)
    );
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match what.as_str() {
        "tool-overhead" => tool_overhead().await,
        "reload" => reload().await,
        "mcp-overhead" => mcp_overhead().await,
        "handoff" => handoff().await,
        "all" => {
            tool_overhead().await;
            mcp_overhead().await;
            reload().await;
            handoff().await;
        }
        other => {
            eprintln!("unknown benchmark {other}; use tool-overhead, mcp-overhead, reload, handoff or all");
            std::process::exit(2);
        }
    }
}
