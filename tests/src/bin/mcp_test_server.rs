//! `mcp-test-server`: a small MCP server over stdio (newline-delimited JSON-RPC 2.0), the tests'
//! own, with tools that misbehave on purpose:
//!
//! - `add` {a, b}: the sum, as text;
//! - `echo` {text}: the text (the testkit plugin has an `echo` too: a name clash);
//! - `fail`: a tool error (`isError: true`);
//! - `slow` {ms}: answers after `ms` milliseconds (calls run concurrently);
//! - `crash`: the process exits at once, mid-call;
//! - `grow`: adds a tool `extra` (or `$MCP_TEST_GROW_NAME`) and sends
//!   `notifications/tools/list_changed`;
//! - `pid`: the server's process id;
//! - `whoami`: `$MCP_TEST_NAME` (to tell two configurations apart).
//!
//! `$MCP_TEST_TOOLS` (comma-separated) lists only those tools. It prints `mcp-test-server:
//! started (pid N)` on stderr, which the host logs.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

static GROWN: AtomicBool = AtomicBool::new(false);

fn tool(name: &str, description: &str, properties: Value) -> Value {
    json!({"name": name, "description": description,
           "inputSchema": {"type": "object", "properties": properties}})
}

fn tools() -> Vec<Value> {
    let mut t = vec![
        tool(
            "add",
            "Adds two numbers.",
            json!({"a": {"type": "number"}, "b": {"type": "number"}}),
        ),
        tool(
            "echo",
            "Returns `text`.",
            json!({"text": {"type": "string"}}),
        ),
        tool("fail", "Always fails.", json!({})),
        tool(
            "slow",
            "Answers after `ms` milliseconds.",
            json!({"ms": {"type": "integer"}}),
        ),
        tool("crash", "Exits the server process mid-call.", json!({})),
        tool("grow", "Adds the tool `extra`.", json!({})),
        tool("pid", "The server's process id.", json!({})),
        tool("whoami", "Says $MCP_TEST_NAME.", json!({})),
        tool(
            "meta_traceparent",
            "Says the call's `_meta.traceparent` (or `none`).",
            json!({}),
        ),
    ];
    if let Ok(only) = std::env::var("MCP_TEST_TOOLS") {
        t.retain(|x| only.split(',').any(|o| x["name"] == o));
    }
    if GROWN.load(Ordering::SeqCst) {
        t.push(tool(
            &grown_name(),
            "Added at run time by `grow`.",
            json!({}),
        ));
    }
    t
}

/// One page of the tool list: everything, or with `$MCP_TEST_MANY=N` also `many_0` …
/// `many_{N-1}` (and a tool whose schema is `$MCP_TEST_BIG_SCHEMA` bytes), 500 a page.
fn tools_page(params: &Value) -> Value {
    let mut all = tools();
    if let Ok(n) = std::env::var("MCP_TEST_BIG_SCHEMA") {
        let pad = "p".repeat(n.parse().unwrap_or(0));
        all.insert(
            0,
            tool(
                "huge",
                "A schema too big to offer.",
                json!({"x": {"type": "string", "description": pad}}),
            ),
        );
    }
    let many: usize = std::env::var("MCP_TEST_MANY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if many == 0 {
        return json!({"tools": all});
    }
    let from: usize = params["cursor"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    all.extend(
        (from..(from + 500).min(many))
            .map(|i| tool(&format!("many_{i}"), "One of many.", json!({}))),
    );
    if from > 0 {
        all.retain(|t| t["name"].as_str().is_some_and(|n| n.starts_with("many_")));
    }
    let next = (from + 500 < many).then(|| (from + 500).to_string());
    json!({"tools": all, "nextCursor": next})
}

/// The tool `grow` adds.
fn grown_name() -> String {
    std::env::var("MCP_TEST_GROW_NAME").unwrap_or_else(|_| "extra".into())
}

fn text(s: impl Into<String>, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": s.into()}], "isError": is_error})
}

fn call(name: &str, args: &Value, out: &Arc<Mutex<std::io::Stdout>>) -> Value {
    match name {
        "add" => {
            let n = |k: &str| args[k].as_f64().unwrap_or(0.0);
            text(format!("{}", n("a") + n("b")), false)
        }
        "echo" => text(args["text"].as_str().unwrap_or_default(), false),
        "fail" => text("it failed on purpose", true),
        "slow" => {
            let ms = args["ms"].as_u64().unwrap_or(1000);
            std::thread::sleep(Duration::from_millis(ms));
            text(format!("slept {ms} ms"), false)
        }
        "crash" => {
            eprintln!("mcp-test-server: crashing on purpose");
            std::process::exit(3);
        }
        "grow" => {
            GROWN.store(true, Ordering::SeqCst);
            send(
                out,
                &json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
            );
            text("added the tool `extra`", false)
        }
        "pid" => text(std::process::id().to_string(), false),
        "whoami" => text(std::env::var("MCP_TEST_NAME").unwrap_or_default(), false),
        name if GROWN.load(Ordering::SeqCst) && name == grown_name() => {
            text(format!("{name} works"), false)
        }
        other => text(format!("unknown tool `{other}`"), true),
    }
}

fn send(out: &Arc<Mutex<std::io::Stdout>>, msg: &Value) {
    let mut o = out.lock().unwrap();
    let _ = writeln!(o, "{msg}");
    let _ = o.flush();
}

fn main() {
    eprintln!("mcp-test-server: started (pid {})", std::process::id());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = msg.get("id").cloned() else {
            continue; // a notification
        };
        let method = msg["method"].as_str().unwrap_or_default().to_owned();
        let params = msg["params"].clone();
        let shared = out.clone();
        let reply = move |result: Value| {
            send(
                &shared,
                &json!({"jsonrpc": "2.0", "id": id, "result": result}),
            );
        };
        match method.as_str() {
            "initialize" => reply(json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {"listChanged": true}},
                "serverInfo": {"name": "mcp-test-server", "version": "1.0.0"}
            })),
            "ping" => reply(json!({})),
            "tools/list" => reply(tools_page(&params)),
            "tools/call" => {
                let name = params["name"].as_str().unwrap_or_default().to_owned();
                let args = params["arguments"].clone();
                if name == "meta_traceparent" {
                    let tp = params["_meta"]["traceparent"].as_str().unwrap_or("none");
                    reply(text(tp, false));
                    continue;
                }
                let o = out.clone();
                std::thread::spawn(move || reply(call(&name, &args, &o)));
            }
            _ => {
                send(
                    &out,
                    &json!({"jsonrpc": "2.0", "id": msg["id"],
                    "error": {"code": -32601, "message": format!("unknown method {method}")}}),
                );
            }
        }
    }
}
