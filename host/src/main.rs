//! The `myagent-host` command line: `serve` a plugin over WebSocket, `inspect` a plugin.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use myagent_host::agent::{AgentConfig, TraceWriter};
use myagent_host::llm::{ApiKey, HttpModel, LlmConfig, Model, Recorder, ReplayModel};
use myagent_host::plugin::{self, copies::CopyDir, reload};
use myagent_host::server::{self, Hub, ServerConfig};

#[derive(Parser)]
#[command(
    name = "myagent-host",
    version,
    about = "Load LLM agents from native plugins and serve them over WebSocket."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an agent plugin over WebSocket (and /health, /metrics over HTTP on the same port).
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Print a plugin's agent: name, API version, prompts and every tool with its schema.
    Inspect {
        /// The plugin's shared library (e.g. target/debug/libweather_agent.so).
        plugin: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a new agent plugin crate (Cargo.toml, an agent with one example tool, tests).
    New {
        /// Directory to create; its last component is the crate name (e.g. my_agent).
        path: PathBuf,
        /// Use the plugin-api crate at DIR (default: the one this host was built from, if it is
        /// still there; else the registry version matching this host).
        #[arg(long, value_name = "DIR")]
        api_path: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The plugin's shared library. It is watched: rebuilding it hot-swaps the agent.
    plugin: PathBuf,
    /// Address to bind. Without --auth-token, binding beyond localhost prints a warning.
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Debug logging (same as RUST_LOG=debug).
    #[arg(long)]
    debug: bool,

    /// Model name when the plugin names none.
    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    model: String,
    /// OpenAI-compatible endpoint (OpenAI, DeepSeek, vLLM, Ollama, llama.cpp, LM Studio).
    /// The key is read from OPENAI_API_KEY only, never from the command line.
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    base_url: String,
    /// Answer from a recording instead of a live model (offline; see --record).
    #[arg(long, value_name = "FILE", conflicts_with = "record")]
    replay: Option<PathBuf>,
    /// Append every model exchange to FILE (JSON lines) for later --replay.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Retries of a failed model call (429, 5xx, timeouts, connection errors).
    #[arg(long, default_value_t = 2)]
    llm_retries: u32,
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    llm_connect_timeout: u64,
    /// Longest wait for the model's first data.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    llm_first_token_timeout: u64,
    /// Longest silence inside a model stream.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    llm_idle_timeout: u64,

    /// Per tool call timeout, unless the plugin sets its own.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    tool_timeout: u64,
    /// Tool outputs longer than this (characters) are truncated before the model sees them.
    #[arg(long, default_value_t = 8000)]
    max_tool_output: usize,
    /// Conversation budget per session, in characters; older whole turns are dropped.
    #[arg(long, default_value_t = 48_000)]
    memory_budget: usize,
    /// Append run traces (JSON lines) here for plugins with enable_tracing.
    #[arg(long, value_name = "FILE")]
    trace_file: Option<PathBuf>,

    /// Where loaded copies of the plugin go (default: $XDG_RUNTIME_DIR or /tmp).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Do not watch the plugin file for rebuilds.
    #[arg(long)]
    no_watch: bool,
    /// Quiet time after a file change before reloading.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    reload_debounce_ms: u64,

    /// Open connections at most (kept below the file-descriptor limit).
    #[arg(long, default_value_t = 16_000)]
    max_connections: usize,
    /// WebSocket connections per client address (0 = no limit); more get HTTP 429. Behind a
    /// reverse proxy, set --trusted-proxy so the limit applies to clients, not to the proxy.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_connections_per_ip: usize,
    #[arg(long, default_value_t = 16)]
    max_sessions_per_connection: usize,
    /// Sessions alive at once over all clients, including those waiting for a resume
    /// (0 = sized to this machine: half its memory, or the container's limit, divided by a
    /// session's worst case; printed at start).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_sessions: usize,
    /// Sessions per client address (0 = no limit).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_sessions_per_ip: usize,
    /// A reverse proxy whose X-Forwarded-For header is believed (repeatable), e.g. 127.0.0.1
    /// for an nginx on the same machine. From other peers the header is ignored.
    #[arg(long = "trusted-proxy", value_name = "IP")]
    trusted_proxies: Vec<IpAddr>,
    /// Request headers (and the WebSocket handshake) must arrive within this, or the
    /// connection is closed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    header_read_timeout: u64,
    /// Client messages larger than this get an error event.
    #[arg(long, default_value_t = 65_536, value_name = "BYTES")]
    max_message_bytes: usize,
    /// Events queued per connection before a slow client is disconnected (code 4008).
    #[arg(long, default_value_t = 1024)]
    outbound_queue: usize,
    /// Bytes of past events kept per session for resume.
    #[arg(long, default_value_t = 262_144, value_name = "BYTES")]
    replay_buffer_bytes: usize,
    /// WebSocket read buffer per connection.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    read_buffer_bytes: usize,
    #[arg(long, default_value_t = 25, value_name = "SECS")]
    ping_interval: u64,
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pong_timeout: u64,
    /// How long sessions (and their runs) wait for a client to resume after a disconnect.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    resume_window: u64,
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    shutdown_timeout: u64,

    /// Require this token (repeatable). Also MYAGENT_AUTH_TOKENS (comma-separated).
    #[arg(
        long = "auth-token",
        value_name = "TOKEN",
        env = "MYAGENT_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    auth_tokens: Vec<String>,
    /// Read accepted tokens from FILE, one per line.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Accept WebSocket upgrades from browser pages only from these Origin values (repeatable);
    /// requests without an Origin header (non-browser clients) are not affected.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Also serve a WebSocket echo on /_echo with the same stack and limits (for protocol
    /// conformance testing with the Autobahn fuzzing client; not for production).
    #[arg(long)]
    conformance_echo: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { plugin, json } => inspect(&plugin, json),
        Command::New { path, api_path } => new_plugin(&path, api_path),
        Command::Serve(args) => {
            init_logging(args.debug);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            let result = rt.block_on(serve(args));
            // Do not wait for blocking threads: a plugin tool that ignores its deadline must not
            // keep the process alive past --shutdown-timeout (it is abandoned, and counted).
            rt.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("{e:#}")),
            }
        }
    }
}

fn new_plugin(path: &Path, api_path: Option<PathBuf>) -> ExitCode {
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

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},hyper=info,reqwest=info,notify=info"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    base.join(format!("myagent-host-{uid}"))
}

fn inspect(path: &Path, as_json: bool) -> ExitCode {
    let copies = match CopyDir::open(&default_state_dir()) {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot create the plugin copy directory: {e}")),
    };
    let p = match plugin::load(path, &copies, 1) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let m = &p.manifest;
    if as_json {
        println!("{}", serde_json::to_string_pretty(m).unwrap_or_default());
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
    println!("system prompt:    {}", m.system_prompt);
    println!("next step prompt: {}", m.next_step_prompt);
    println!("tools ({}):", m.tools.len());
    for t in &m.tools {
        println!("  {} — {}", t.name, t.description);
        let schema = serde_json::to_string_pretty(&t.parameters).unwrap_or_default();
        for line in schema.lines() {
            println!("      {line}");
        }
    }
    ExitCode::SUCCESS
}

/// Raises the soft fd limit to the hard one; returns the limit.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit/setrlimit to read and fill.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    println!("Loading agent from {} ...", args.plugin.display());
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let copies = Arc::new(
        CopyDir::open(&state_dir)
            .with_context(|| format!("cannot use state directory {}", state_dir.display()))?,
    );
    let loaded = {
        let (p, c) = (args.plugin.clone(), copies.clone());
        tokio::task::spawn_blocking(move || plugin::load(&p, &c, 1)).await?
    };
    let loaded = loaded.map_err(|e| anyhow::anyhow!("{e}"))?;
    let m = &loaded.manifest;
    println!(
        "Loaded agent {} {} (tools: {})",
        m.name,
        m.version,
        m.tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut auth_tokens: Vec<String> = args
        .auth_tokens
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(f) = &args.auth_token_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --auth-token-file {}", f.display()))?;
        auth_tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        if auth_tokens.is_empty() {
            anyhow::bail!("--auth-token-file {} holds no token", f.display());
        }
    }

    let model = match &args.replay {
        Some(path) => Model::Replay(
            ReplayModel::open(path, Duration::from_millis(15)).map_err(anyhow::Error::msg)?,
        ),
        None => {
            let api_key = std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(ApiKey::new);
            let recorder = match &args.record {
                Some(p) => Some(
                    Recorder::create(p)
                        .with_context(|| format!("cannot open --record file {}", p.display()))?,
                ),
                None => None,
            };
            let config = LlmConfig {
                base_url: args.base_url.clone(),
                api_key,
                connect_timeout: Duration::from_secs(args.llm_connect_timeout),
                first_token_timeout: Duration::from_secs(args.llm_first_token_timeout),
                idle_timeout: Duration::from_secs(args.llm_idle_timeout),
                max_retries: args.llm_retries,
            };
            if config.api_key.is_none() && config.base_url.contains("api.openai.com") {
                eprintln!("warning: OPENAI_API_KEY is not set: calls to {} will fail. Set it, point --base-url at a local server, or use --replay FILE.", config.base_url);
            }
            Model::Http(HttpModel::new(config, recorder)?)
        }
    };
    let model_name = m.model.clone().unwrap_or_else(|| args.model.clone());
    println!("Model: {model_name} via {}", model.describe());

    let tracer = match &args.trace_file {
        Some(p) => Some(
            TraceWriter::create(p)
                .with_context(|| format!("cannot open --trace-file {}", p.display()))?,
        ),
        None => None,
    };
    let fd_limit = raise_fd_limit();
    let max_connections = args
        .max_connections
        .min(fd_limit.saturating_sub(64).max(16) as usize);
    if max_connections < args.max_connections {
        println!("Connection cap lowered to {max_connections} (file-descriptor limit {fd_limit})");
    }
    let max_sessions = match args.max_sessions {
        0 => {
            let (n, worst, budget) = auto_max_sessions(args.replay_buffer_bytes, args.memory_budget);
            println!(
                "Session cap: {n} (worst case ~{} KiB per session within {} MiB; --max-sessions to change)",
                worst / 1024,
                budget >> 20
            );
            n
        }
        n => n,
    };
    let config = ServerConfig {
        max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_sessions_per_connection: args.max_sessions_per_connection.max(1),
        max_sessions,
        max_sessions_per_ip: args.max_sessions_per_ip,
        trusted_proxies: args.trusted_proxies.clone(),
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        max_message_bytes: args.max_message_bytes,
        max_frame_bytes: (args.max_message_bytes * 16).max(1 << 20),
        read_buffer_bytes: args.read_buffer_bytes.max(1024),
        outbound_queue: args.outbound_queue.max(16),
        replay_buffer_bytes: args.replay_buffer_bytes,
        ping_interval: Duration::from_secs(args.ping_interval.max(1)),
        pong_timeout: Duration::from_secs(args.pong_timeout),
        resume_window: Duration::from_secs(args.resume_window),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        auth_tokens,
        allowed_origins: args.allowed_origins.clone(),
        conformance_echo: args.conformance_echo,
    };
    let agent_config = AgentConfig {
        default_model: args.model.clone(),
        tool_timeout: Duration::from_secs(args.tool_timeout.max(1)),
        max_tool_output_chars: args.max_tool_output.max(100),
        memory_budget_chars: args.memory_budget,
    };

    let addr = format!("{}:{}", args.host, args.port);
    let listener = myagent_host::server::listen(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let loopback = local.ip().is_loopback();
    if config.auth_tokens.is_empty() && !loopback {
        eprintln!("warning: no --auth-token is set and {local} is reachable from other machines: anyone who can connect can use this agent (and your model key). Set --auth-token or MYAGENT_AUTH_TOKENS.");
    }
    let slot = reload::PluginSlot::new(loaded);
    let _watch = if args.no_watch {
        None
    } else {
        let w = reload::watch(
            args.plugin.clone(),
            copies.clone(),
            slot.clone(),
            Duration::from_millis(args.reload_debounce_ms),
        )
        .with_context(|| format!("cannot watch {}", args.plugin.display()))?;
        println!("Watching {} for rebuilds", args.plugin.display());
        Some(w)
    };
    let hub = Hub::new(config, slot, model, agent_config, tracer);
    println!(
        "Serving on ws://{h}:{p} (web client: http://{h}:{p}/ · health: http://{h}:{p}/health)",
        h = args.host,
        p = local.port(),
    );
    if !hub.config.auth_tokens.is_empty() {
        println!(
            "Authentication: {} token(s) accepted",
            hub.config.auth_tokens.len()
        );
    }
    let shutdown_timeout = hub.config.shutdown_timeout;
    server::run(listener, hub, shutdown_signal(shutdown_timeout)).await;
    println!("Stopped.");
    Ok(())
}

/// The default session cap: half of this machine's memory (or of the container's limit),
/// divided by what one session can hold at worst. Returns (cap, worst bytes, budget bytes).
fn auto_max_sessions(replay_buffer_bytes: usize, memory_budget_chars: usize) -> (usize, u64, u64) {
    // A full replay buffer costs ~2.4x its nominal bytes in RSS (queue entries, allocator
    // rounding, measured); conversation memory is counted in chars of up to 4 UTF-8 bytes;
    // plus the session, its agent instance and its queue entry.
    let worst = replay_buffer_bytes as u64 * 5 / 2 + memory_budget_chars as u64 * 4 + 64 * 1024;
    let budget = available_memory_bytes() / 2;
    let n = (budget / worst.max(1)).clamp(16, 1_000_000) as usize;
    (n, worst, budget)
}

/// Physical memory, or the cgroup (container) memory limit when that is lower.
fn available_memory_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(total, |c| c.min(total))
}

/// Completes on the first SIGTERM/SIGINT. From then on, a second signal exits at once, and a
/// watchdog exits `shutdown_timeout` + 1 s later whatever is still running (graceful shutdown is
/// bounded by the same timeout; this is the backstop for anything that is not).
async fn shutdown_signal(shutdown_timeout: Duration) {
    wait_for_signal().await;
    eprintln!(
        "Shutting down (at most {} s; send the signal again to stop at once)",
        shutdown_timeout.as_secs()
    );
    std::thread::spawn(move || {
        std::thread::sleep(shutdown_timeout + Duration::from_secs(1));
        eprintln!("error: shutdown did not finish within --shutdown-timeout; exiting anyway");
        std::process::exit(1);
    });
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("Second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
