//! Test-only plugin for the host's test suite: tools that echo, fail, panic, sleep and block.
//!
//! The `TESTKIT_VARIANT` environment variable read by the factory changes what it exports, so
//! one build serves several tests: `panic_factory` makes the factory panic, and the build-time
//! `TESTKIT_TAG` (set by tests that rebuild the plugin for hot reload) names the version and adds
//! a `tag_<TAG>` tool so a test can see which build is serving. `TESTKIT_CREATE_MS` makes each
//! agent take that long to make (a burst of new sessions then queues for the worker).

use std::time::Duration;

use myagent_plugin_api::{
    export_agent, json, Agent, EventContext, McpServer, SessionOverrides, Tool, ToolContext,
    ToolResult, Value,
};

struct FnTool {
    name: &'static str,
    description: &'static str,
    run: fn(&Value) -> ToolResult,
}

impl Tool for FnTool {
    fn name(&self) -> &str {
        self.name
    }
    fn description(&self) -> &str {
        self.description
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "text": {"type": "string"}, "ms": {"type": "integer"}
        }})
    }
    fn execute(&self, args: Value) -> ToolResult {
        (self.run)(&args)
    }
}

/// A tool whose name is only known at build time (to tell hot-reloaded builds apart).
struct TagTool(String);

impl Tool for TagTool {
    fn name(&self) -> &str {
        &self.0
    }
    fn description(&self) -> &str {
        "Says which build of the testkit plugin is serving."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn execute(&self, _args: Value) -> ToolResult {
        ToolResult::ok(self.0.clone())
    }
}

/// Returns the call's trace context (`ToolContext::traceparent`), or `none`.
struct TraceContext;

impl Tool for TraceContext {
    fn name(&self) -> &str {
        "trace_context"
    }
    fn description(&self) -> &str {
        "Returns the W3C traceparent the host gave this call."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn execute(&self, _args: Value) -> ToolResult {
        ToolResult::ok("none")
    }
    fn execute_with(&self, _args: Value, ctx: &ToolContext) -> ToolResult {
        ToolResult::ok(ctx.traceparent().unwrap_or("none"))
    }
}

/// Echoes `text`, but only once a person approved the call (counts its runs, so a test can
/// tell a denied call never ran).
struct Guarded;

static GUARDED_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Tool for Guarded {
    fn name(&self) -> &str {
        "guarded"
    }
    fn description(&self) -> &str {
        "Returns `text` and how many times it has run; every call needs approval."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"text": {"type": "string"}}})
    }
    fn execute(&self, args: Value) -> ToolResult {
        let n = GUARDED_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let text = args.get("text").and_then(Value::as_str).unwrap_or("");
        ToolResult::ok(format!("{text} (run {n})"))
    }
    fn needs_approval(&self) -> bool {
        true
    }
}

/// Crashes the process the way `how` says — the failures a plugin's native code can have that
/// no panic guard catches: `stack_overflow`, `abort`, `segfault`, `exit`, `hang`, and `oom`
/// (an allocation past the worker's memory limit).
struct Crash;

impl Tool for Crash {
    fn name(&self) -> &str {
        "native_crash"
    }
    fn description(&self) -> &str {
        "Crashes the plugin's process (how: stack_overflow | abort | segfault | exit | hang | oom)."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"how": {"type": "string"}}, "required": ["how"]})
    }
    fn execute(&self, args: Value) -> ToolResult {
        match args.get("how").and_then(Value::as_str).unwrap_or("") {
            "stack_overflow" => ToolResult::ok(format!("{}", recurse(1))),
            "abort" => std::process::abort(),
            "segfault" => {
                // SAFETY: none; this is the bug being tested.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                ToolResult::ok("unreachable")
            }
            "exit" => std::process::exit(0),
            "oom" => {
                // 4 GiB at once: past any --worker-memory-limit the tests set.
                let big: Vec<u8> = Vec::with_capacity(4 << 30);
                ToolResult::ok(format!(
                    "allocated {}",
                    std::hint::black_box(big).capacity()
                ))
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => ToolResult::error(format!("unknown crash {other:?}")),
        }
    }
}

/// Infinite recursion the optimiser cannot turn into a loop.
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    recurse(pad[0] + 1) + pad[63]
}

fn sleep_ms(args: &Value) -> ToolResult {
    let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(1000);
    std::thread::sleep(Duration::from_millis(ms));
    ToolResult::ok(format!("slept {ms} ms"))
}

/// A plugin that floods its output: megabytes without a newline, and a huge answer.
fn flood(args: &Value) -> ToolResult {
    use std::io::Write;
    let n = |k: &str| args.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
    let chunk = vec![b'z'; 1 << 20];
    for (bytes, mut out) in [
        (n("stderr"), Box::new(std::io::stderr()) as Box<dyn Write>),
        (n("stdout"), Box::new(std::io::stdout())),
    ] {
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len());
            let _ = out.write_all(&chunk[..k]);
            left -= k;
        }
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    ToolResult::ok("r".repeat(n("result")))
}

/// The factory.
pub fn testkit() -> Agent {
    if std::env::var("TESTKIT_VARIANT").as_deref() == Ok("panic_factory") {
        panic!("testkit factory was told to panic");
    }
    if std::env::var("TESTKIT_VARIANT").as_deref() == Ok("abort_factory") {
        std::process::abort();
    }
    // `TESTKIT_CREATE_MS`: making an agent takes this long (a burst of new sessions queues).
    if let Some(ms) = std::env::var("TESTKIT_CREATE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let tag = option_env!("TESTKIT_TAG").unwrap_or("v1");
    let mut agent = Agent::builder("testkit");
    // `TESTKIT_MCP_SERVER`: the agent asks for this stdio MCP server, as `kit`.
    if let Ok(command) = std::env::var("TESTKIT_MCP_SERVER") {
        agent = agent.mcp_server(
            "kit",
            McpServer::stdio(command, Vec::<String>::new()).env("MCP_TEST_NAME", "plugin"),
        );
    }
    agent
        .version(format!("0.1.0-{tag}"))
        .description("Tools for testing the host.")
        .system_prompt("You are a test agent.")
        .next_step_prompt("")
        .max_steps(4)
        .session_overrides(SessionOverrides {
            models: vec!["model-a".into(), "model-b".into()],
            temperature: Some((0.0, 1.5)),
            max_steps: Some(6),
            instructions_chars: 200,
        })
        .tool_timeout_ms(2_000)
        .enable_tracing(true)
        .tool(FnTool {
            name: "echo",
            description: "Returns `text`.",
            run: |a| {
                ToolResult::ok(
                    a.get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                )
            },
        })
        .tool(FnTool {
            name: "fail",
            description: "Always fails.",
            run: |_| ToolResult::error("this tool always fails").with_system("fail tool called"),
        })
        .tool(FnTool {
            name: "panic",
            description: "Panics.",
            run: |_| panic!("the panic tool panicked"),
        })
        .tool(FnTool {
            name: "sleep",
            description: "Sleeps `ms` milliseconds.",
            run: sleep_ms,
        })
        .tool(FnTool {
            name: "flood",
            description: "Writes `stderr` bytes to stderr and `stdout` bytes to stdout without a newline, then returns `result` bytes.",
            run: flood,
        })
        .tool(FnTool {
            name: "long_output",
            description: "Returns 100 000 characters.",
            run: |_| ToolResult::ok("x".repeat(100_000)),
        })
        .tool(Guarded)
        .tool(TraceContext)
        .tool(Crash)
        .tool(TagTool(format!("tag_{tag}")))
        .on_custom_event("testkit.", |ctx: &EventContext, event: Value| {
            if event["event"] == "testkit.panic" {
                panic!("custom event handler panicked");
            }
            if event["event"] == "testkit.sleep" {
                sleep_ms(&event["data"]);
            }
            if event["event"] == "testkit.big" {
                let bytes = event["data"]["bytes"].as_u64().unwrap_or(1024) as usize;
                return Ok(vec![
                    json!({"event": "testkit.big", "blob": "b".repeat(bytes)}),
                ]);
            }
            Ok(vec![json!({
                "event": "testkit.pong",
                "session_id": ctx.session_id,
                "echo": event.get("data").cloned().unwrap_or(Value::Null),
            })])
        })
        .build()
}

export_agent!(testkit);
