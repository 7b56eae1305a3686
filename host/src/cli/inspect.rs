//! `myagent-host inspect` (print a plugin's agent) and `myagent-host new` (scaffold a plugin).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use myagent_host::mcp::{self, McpHub};
use myagent_host::plugin::{self, copies::CopyDir};
use tokio_util::sync::CancellationToken;

use super::config::{default_state_dir, worker_exe};
use crate::fail;

pub fn new_plugin(path: &Path, api_path: Option<PathBuf>) -> ExitCode {
    use myagent_host::scaffold::{self, ApiSource};
    let api = match api_path {
        Some(p) => match p.canonicalize() {
            Ok(p) if p.join("Cargo.toml").is_file() => ApiSource::Path(p),
            _ => return fail(&format!("--api-path {}: no Cargo.toml there", p.display())),
        },
        None => ApiSource::default_for_this_host(),
    };
    if let ApiSource::Version(v) = &api {
        eprintln!("note: using myagent-plugin-api {v} from the registry; pass --api-path to use a local checkout");
    }
    match scaffold::create(path, &api) {
        Ok(files) => {
            println!("Created {}:", path.display());
            for f in files {
                println!("  {}", f.display());
            }
            let lib = path
                .file_name()
                .map(|n| n.to_string_lossy().replace('-', "_"))
                .unwrap_or_default();
            println!(
                "Next:\n  cd {dir}\n  cargo test      # tests the example tool, no host needed\n  cargo build\n  myagent-host serve target/debug/lib{lib}.so",
                dir = path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Loads the plugin in a worker process, as `serve` does: a factory that crashes is reported.
/// The runtime the worker runs under is returned with it (it lives as long as the plugin).
fn load_in_worker(path: &Path) -> Result<(tokio::runtime::Runtime, plugin::Plugin), String> {
    let copies = CopyDir::open(&default_state_dir())
        .map_err(|e| format!("cannot create the plugin copy directory: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let loader = plugin::Loader {
        copies: std::sync::Arc::new(copies),
        isolation: plugin::Isolation::Worker(plugin::WorkerOptions {
            exe: worker_exe(),
            memory_limit: None,
            cpu_limit: None,
            drain_timeout: std::time::Duration::ZERO,
            on_crash: None,
            metrics: Default::default(),
        }),
    };
    let p = rt
        .block_on(loader.load(path, 1))
        .map_err(|e| e.to_string())?;
    Ok((rt, p))
}

pub fn inspect(path: &Path, as_json: bool, mcp_config: Option<&Path>) -> ExitCode {
    let (_rt, p) = match load_in_worker(path) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    let m = &p.manifest;
    let mcp = match mcp_tools(m, mcp_config) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    if as_json {
        let mut v = serde_json::to_value(m).unwrap_or_default();
        if let Some(servers) = &mcp {
            v["mcp_tools"] = serde_json::json!(servers
                .iter()
                .map(
                    |s| serde_json::json!({"server": s.name, "spec": s.spec, "error": s.error,
                    "tools": s.tools.iter().map(|(name, t)| serde_json::json!({
                        "name": name, "description": t.description, "parameters": t.parameters}))
                        .collect::<Vec<_>>()})
                )
                .collect::<Vec<_>>());
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!("agent:            {} {}", m.name, m.version);
    if !m.description.is_empty() {
        println!("description:      {}", m.description);
    }
    println!(
        "plugin API:       version {} (myagent-plugin-api {})",
        m.api_version,
        plugin::host_api_crate_version()
    );
    println!("max_steps:        {}", m.max_steps);
    println!(
        "tracing:          {}",
        if m.enable_tracing { "on" } else { "off" }
    );
    if let Some(model) = &m.model {
        println!("model:            {model}");
    }
    if let Some(t) = m.temperature {
        println!("temperature:      {t}");
    }
    if let Some(t) = m.tool_timeout_ms {
        println!("tool timeout:     {t} ms");
    }
    if let Some(p) = &m.event_prefix {
        println!("custom events:    {p}*");
    }
    if !m.handoffs.is_empty() {
        println!("hands over to:    {}", m.handoffs.join(", "));
    }
    if !m.agent_tools.is_empty() {
        println!("asks as tools:    {}", m.agent_tools.join(", "));
    }
    println!("system prompt:    {}", m.system_prompt);
    println!("next step prompt: {}", m.next_step_prompt);
    println!("tools ({}):", m.tools.len());
    for t in &m.tools {
        let approval = match m.needs_approval.contains(&t.name) {
            true => " [needs approval]",
            false => "",
        };
        println!("  {}{approval} — {}", t.name, t.description);
        let schema = serde_json::to_string_pretty(&t.parameters).unwrap_or_default();
        for line in schema.lines() {
            println!("      {line}");
        }
    }
    for s in mcp.iter().flatten() {
        match &s.error {
            Some(e) => println!("MCP server {} ({}): not available: {e}", s.name, s.spec),
            None => {
                println!(
                    "MCP server {} ({}): {} tools",
                    s.name,
                    s.spec,
                    s.tools.len()
                );
                for (name, t) in &s.tools {
                    println!("  {name} — {}", t.description);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// What one MCP server offered `inspect`.
struct Listed {
    name: String,
    spec: String,
    error: Option<String>,
    /// (the name the model sees, the tool)
    tools: Vec<(String, mcp::McpTool)>,
}

/// Connects to the servers of `config` and those the plugin names, lists their tools (as the
/// agent would be offered them), and disconnects. None when there are no servers.
fn mcp_tools(m: &plugin::Manifest, config: Option<&Path>) -> Result<Option<Vec<Listed>>, String> {
    let mut specs = match config {
        Some(path) => mcp::config::load(path)?,
        None => Default::default(),
    };
    specs.extend(mcp::plugin_servers(m, &specs)?);
    if specs.is_empty() {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let stop = CancellationToken::new();
    let listed = rt.block_on(async {
        let hub = McpHub::start(specs, stop.clone(), mcp::START_WAIT).await;
        let exposed = hub.offered(m);
        hub.servers()
            .iter()
            .map(|s| Listed {
                name: s.name.clone(),
                spec: s.spec.describe(),
                error: s.down(),
                tools: exposed
                    .iter()
                    .filter(|e| std::sync::Arc::ptr_eq(&e.server, s))
                    .map(|e| (e.name.clone(), e.tool.clone()))
                    .collect(),
            })
            .collect()
    });
    stop.cancel();
    rt.shutdown_timeout(std::time::Duration::from_secs(3));
    Ok(Some(listed))
}
