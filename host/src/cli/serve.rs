//! `myagent-host serve`: load the plugin, build the model client and the gateway from the
//! arguments, serve until a signal, shut down in bounded time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use myagent_host::agent::{AgentRuntime, TraceWriter};
use myagent_host::llm::{HttpModel, Model, Recorder, ReplayModel};
use myagent_host::mcp::{self, McpHub};
use myagent_host::metrics::Metrics;
use myagent_host::otel::{OtelConfig, Telemetry};
use myagent_host::plugin::{self, copies::CopyDir, reload};
use myagent_host::server;

use super::args::ServeArgs;
use super::{config, tokens};
use myagent_host::session::principal::Principals;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(config::default_state_dir);
    let copies = Arc::new(
        CopyDir::open(&state_dir)
            .with_context(|| format!("cannot use state directory {}", state_dir.display()))?,
    );
    let notices = reload::notice_channel();
    let metrics = Arc::new(Metrics::default());
    let loader = Arc::new(plugin::Loader {
        copies,
        isolation: config::isolation(&args, Some(notices.clone()), &metrics)?,
    });
    let agent_config = config::agent_config(&args)?;
    let loaded = load_plugins(&args, &loader, &agent_config).await?;
    let flat = tokens::flat(&args)?;
    let principals = Arc::new(Principals::new(tokens::principals(&args, &flat)?));
    tokens::watch(&args, &principals, flat);
    if std::env::args().any(|a| a == "--auth-token" || a.starts_with("--auth-token=")) {
        tracing::warn!("a token given with --auth-token is visible to every user of this machine (ps, /proc); prefer MYAGENT_AUTH_TOKENS or --auth-token-file");
    }
    let model = model(&args)?;
    let model_name = loaded[0]
        .manifest
        .model
        .clone()
        .unwrap_or_else(|| args.model.clone());
    println!("Model: {model_name} via {}", model.describe());
    let (tracer, telemetry) = (trace_file(&args)?, telemetry(&args, &metrics).await?);
    let mut server_config = config::server_config(&args, raise_fd_limit());
    let store = config::session_store(&args)?;
    let session_config = config::session_config(&args, principals.clone());

    let addr = format!("{}:{}", args.host, args.port);
    let listener = server::listen(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // The Host check stops DNS rebinding against a host only this machine can reach; bound to
    // another address, the host is meant to be reached by its names (unless some are listed).
    if !local.ip().is_loopback() && server_config.allowed_hosts.is_empty() {
        server_config.allowed_hosts.push("*".into());
    }
    let tokens = principals.token_count();
    if tokens == 0 && !local.ip().is_loopback() {
        tracing::warn!("no --auth-token is set and {local} is reachable from other machines: anyone who can connect can use this agent (and your model key). Set --auth-token or MYAGENT_AUTH_TOKENS.");
    }
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let manifests: Vec<plugin::Manifest> = loaded.iter().map(|p| p.manifest.clone()).collect();
    let mcp = Arc::new(mcp_servers(&args, &manifests, &agent_config, &mcp_stop).await?);
    let slots: Vec<_> = loaded
        .into_iter()
        .map(|p| reload::PluginSlot::with_notices(p, notices.clone()))
        .collect();
    let _watches = watch(&args, loader, &slots)?;
    let runtime = Arc::new(AgentRuntime {
        agents: reload::Agents::new(slots),
        model,
        mcp,
        config: agent_config,
        tracer,
        telemetry: telemetry.clone(),
        metrics,
    });
    let shutdown_timeout = server_config.shutdown_timeout;
    let gateway = server::gateway(server_config, session_config, store.clone(), runtime);
    println!(
        "Serving on ws://{h}:{p} (web client: http://{h}:{p}/ · health: http://{h}:{p}/health)",
        // An IPv6 address is bracketed in a URL.
        h = match args.host.contains(':') {
            true => format!("[{}]", args.host),
            false => args.host.clone(),
        },
        p = local.port(),
    );
    describe_auth(&args, tokens);
    let signalled = Arc::new(std::sync::OnceLock::new());
    server::run(
        listener,
        gateway,
        shutdown_signal(shutdown_timeout, signalled.clone()),
    )
    .await;
    tracing::info!("connections closed; finishing");
    mcp_stop.cancel();
    // The spans of the runs that just ended go out before we exit.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .ok();
    if let Some(d) = store {
        last_commit(d, signalled.get().copied(), shutdown_timeout).await;
    }
    println!("Stopped.");
    Ok(())
}

/// What the interrupted runs wrote last (their ends) is committed before we exit — within the
/// shutdown's bound: the watchdog ends the process `--shutdown-timeout` + 1 s after the signal
/// (`signalled`), so the store gets what is left of that, less a margin. Logged with its time,
/// so a slow store at shutdown is seen for what it is.
async fn last_commit(
    store: Arc<myagent_host::store::Store>,
    signalled: Option<std::time::Instant>,
    shutdown_timeout: Duration,
) {
    let t0 = std::time::Instant::now();
    let left = signalled.map_or(Duration::from_secs(10), |at| {
        (at + shutdown_timeout + Duration::from_millis(750)).saturating_duration_since(t0)
    });
    let flushed = tokio::task::spawn_blocking(move || {
        store.flush_blocking(left.min(Duration::from_secs(10)))
    })
    .await
    .unwrap_or(false);
    let ms = t0.elapsed().as_millis() as u64;
    if flushed {
        tracing::info!(ms, "session store: last writes committed");
    } else {
        tracing::warn!(
            ms,
            "session store: the last writes were not confirmed within the shutdown's bound; \
             they may be lost (a resume closes those turns as host_lost)"
        );
    }
}

/// Loads every plugin named (in order) and says what each serves; two agents of one name are
/// an error (a session names its agent).
async fn load_plugins(
    args: &ServeArgs,
    loader: &plugin::Loader,
    agent_config: &myagent_host::agent::AgentConfig,
) -> anyhow::Result<Vec<plugin::Plugin>> {
    let mut loaded: Vec<plugin::Plugin> = Vec::with_capacity(args.plugins.len());
    for path in &args.plugins {
        println!("Loading agent from {} ...", path.display());
        let p = loader
            .load(path, 1)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(twin) = loaded.iter().find(|o| o.manifest.name == p.manifest.name) {
            anyhow::bail!(
                "two plugins serve an agent named `{}` ({} and {}): each agent needs its own name",
                p.manifest.name,
                twin.source.display(),
                path.display()
            );
        }
        describe_agent(args, &p.manifest, agent_config);
        loaded.push(p);
    }
    let names: Vec<String> = loaded.iter().map(|p| p.manifest.name.clone()).collect();
    agent_config
        .links
        .check(&names)
        .map_err(anyhow::Error::msg)?;
    for m in loaded.iter().map(|p| &p.manifest) {
        for to in m.handoffs.iter().chain(&m.agent_tools) {
            if !names.contains(to) {
                tracing::warn!("agent {} names agent {to} (a handoff or agent tool), which this host does not serve: calls to it fail until it is served", m.name);
            }
        }
    }
    Ok(loaded)
}

/// The `--trace-file` writer, if one is asked for.
fn trace_file(args: &ServeArgs) -> anyhow::Result<Option<TraceWriter>> {
    let Some(p) = &args.trace_file else {
        return Ok(None);
    };
    let writer = TraceWriter::create(p, args.journal_max_bytes)
        .with_context(|| format!("cannot open --trace-file {}", p.display()))?;
    Ok(Some(writer))
}

/// OTLP traces when a collector is configured (said at start), else trace context only.
async fn telemetry(args: &ServeArgs, metrics: &Arc<Metrics>) -> anyhow::Result<Telemetry> {
    let config = OtelConfig {
        endpoint: args.otlp_endpoint.clone(),
        capture_content: args.otel_capture_content,
        model_url: args.base_url.clone(),
    };
    let metrics = metrics.clone();
    // The exporter's HTTP client is a blocking one: built off the async workers.
    let telemetry = tokio::task::spawn_blocking(move || Telemetry::start(&config, metrics))
        .await?
        .map_err(anyhow::Error::msg)?;
    if telemetry.exporting() {
        let content = match args.otel_capture_content {
            true => "with prompts, answers and tool data (--otel-capture-content)",
            false => "without prompts or answers",
        };
        println!("Traces: OpenTelemetry over OTLP ({content})");
    }
    Ok(telemetry)
}

/// Says how clients authenticate (and warns when /metrics stays open).
fn describe_auth(args: &ServeArgs, tokens: usize) {
    if tokens == 0 {
        return;
    }
    let from = match &args.auth_tokens_file {
        Some(f) => format!(
            " (principals from {}, re-read when it changes)",
            f.display()
        ),
        None => String::new(),
    };
    println!("Authentication: {tokens} token(s) accepted{from}");
    if args
        .metrics_token
        .as_deref()
        .is_none_or(|t| t.trim().is_empty())
    {
        tracing::warn!("tokens are required for WebSockets but /metrics is open to anyone who can reach the port; set --metrics-token (or MYAGENT_METRICS_TOKEN)");
    }
}

/// Connects to the MCP servers of `--mcp-config` and those the plugin names (a bad file is a
/// start-up error; a server that is down is retried in the background) and says what each
/// offers.
pub async fn mcp_servers(
    args: &ServeArgs,
    manifests: &[plugin::Manifest],
    agent: &myagent_host::agent::AgentConfig,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<McpHub> {
    let mut specs = match &args.mcp_config {
        Some(path) => mcp::config::load(path).map_err(anyhow::Error::msg)?,
        None => Default::default(),
    };
    let operator: Vec<String> = specs.keys().cloned().collect();
    let mut owners = Vec::new();
    for manifest in manifests {
        let from_plugin = mcp::plugin_servers(manifest, &specs).map_err(anyhow::Error::msg)?;
        for name in from_plugin.keys() {
            if specs.contains_key(name) && !operator.contains(name) {
                anyhow::bail!("two plugins name the MCP server `{name}`: each agent's servers need their own names (or name it once in --mcp-config, for every agent)");
            }
            owners.push((name.clone(), manifest.name.clone()));
        }
        specs.extend(from_plugin);
    }
    let hub = McpHub::start(specs, stop.clone(), mcp::START_WAIT).await;
    for (server, agent) in &owners {
        hub.own(server, agent);
    }
    for manifest in manifests {
        report_mcp(&hub, &hub.servers(), manifest, agent);
    }
    Ok(hub)
}

/// Prints what each of `servers` offers (or why it is not available).
pub fn report_mcp(
    hub: &McpHub,
    servers: &[Arc<mcp::McpServer>],
    manifest: &plugin::Manifest,
    agent: &myagent_host::agent::AgentConfig,
) {
    let exposed = hub.offered(manifest);
    for server in servers.iter().filter(|s| hub.serves(s, &manifest.name)) {
        let names: Vec<String> = exposed
            .iter()
            .filter(|e| Arc::ptr_eq(&e.server, server))
            .map(|e| match agent.needs_approval(manifest, &e.name) {
                true => format!("{} (needs approval)", e.name),
                false => e.name.clone(),
            })
            .collect();
        match server.down() {
            None => println!(
                "MCP server {} ({}): {} tools: {}",
                server.name,
                server.spec.describe(),
                names.len(),
                names.join(", ")
            ),
            Some(why) => tracing::warn!(
                "MCP server {} ({}) is not available: {why}; retrying in the background",
                server.name,
                server.spec.describe()
            ),
        }
    }
}

/// The live model over HTTP, or a recording with `--replay`.
fn model(args: &ServeArgs) -> anyhow::Result<Model> {
    if let Some(path) = &args.replay {
        let replay =
            ReplayModel::open(path, Duration::from_millis(15)).map_err(anyhow::Error::msg)?;
        return Ok(Model::Replay(replay));
    }
    let recorder = match &args.record {
        Some(p) => Some(
            Recorder::create(p, args.journal_max_bytes)
                .with_context(|| format!("cannot open --record file {}", p.display()))?,
        ),
        None => None,
    };
    let llm = config::llm_config(args);
    if llm.api_key.is_none() && llm.base_url.contains("api.openai.com") {
        tracing::warn!("OPENAI_API_KEY is not set: calls to {} will fail. Set it, point --base-url at a local server, or use --replay FILE.", llm.base_url);
    }
    Ok(Model::Http(HttpModel::new(llm, recorder)?))
}

/// Watches each plugin file for rebuilds (unless `--no-watch`), each reloading its own agent;
/// the watches live as long as the returned value.
fn watch(
    args: &ServeArgs,
    loader: Arc<plugin::Loader>,
    slots: &[Arc<reload::PluginSlot>],
) -> anyhow::Result<Vec<reload::ReloadHandle>> {
    if args.no_watch {
        return Ok(Vec::new());
    }
    let mut watches = Vec::with_capacity(slots.len());
    for (path, slot) in args.plugins.iter().zip(slots) {
        let w = reload::watch(
            path.clone(),
            loader.clone(),
            slot.clone(),
            Duration::from_millis(args.reload_debounce_ms),
        )
        .with_context(|| format!("cannot watch {}", path.display()))?;
        println!("Watching {} for rebuilds", path.display());
        watches.push(w);
    }
    Ok(watches)
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

/// Completes on the first SIGTERM/SIGINT. From then on, a second signal exits at once, and a
/// watchdog exits `shutdown_timeout` + 1 s later whatever is still running (graceful shutdown is
/// bounded by the same timeout; this is the backstop for anything that is not).
async fn shutdown_signal(
    shutdown_timeout: Duration,
    signalled: Arc<std::sync::OnceLock<std::time::Instant>>,
) {
    wait_for_signal().await;
    let _ = signalled.set(std::time::Instant::now());
    tracing::info!(
        "Shutting down (at most {} s; send the signal again to stop at once)",
        shutdown_timeout.as_secs()
    );
    std::thread::spawn(move || {
        std::thread::sleep(shutdown_timeout + Duration::from_secs(1));
        tracing::error!("shutdown did not finish within --shutdown-timeout; exiting anyway");
        std::process::exit(1);
    });
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting now");
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

/// Says which agent was loaded and its tools, and warns about `--require-approval` names the
/// agent does not have.
fn describe_agent(
    args: &ServeArgs,
    m: &plugin::Manifest,
    agent_config: &myagent_host::agent::AgentConfig,
) {
    let tools: Vec<String> = m
        .tools
        .iter()
        .map(|t| match agent_config.needs_approval(m, &t.name) {
            true => format!("{} (needs approval)", t.name),
            false => t.name.clone(),
        })
        .collect();
    println!(
        "Loaded agent {} {} (tools: {})",
        m.name,
        m.version,
        tools.join(", ")
    );
    let links = [
        ("Hands over to", &m.handoffs),
        ("Asks as tools", &m.agent_tools),
    ];
    for (what, names) in links {
        if !names.is_empty() {
            println!("  {what}: {}", names.join(", "));
        }
    }
    if m.enable_tracing {
        match &args.trace_file {
            Some(f) => println!("Traces: the agent asks for run traces; written to {}", f.display()),
            None => println!("Traces: the agent asks for run traces (enable_tracing), but they are off: set --trace-file FILE to write them"),
        }
    }
    for name in &args.require_approval {
        if !m.tools.iter().any(|t| &t.name == name) {
            tracing::warn!("--require-approval {name}: the agent has no tool of that name (yet); it applies if a reloaded build adds one");
        }
    }
}
