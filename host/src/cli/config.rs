//! `serve`'s arguments turned into the library's config structs: each setting's default is in
//! `args.rs` only; here values are checked, clamped and, for the session cap, sized to the
//! machine.

use std::path::PathBuf;
use std::time::Duration;

use myagent_host::agent::{AgentConfig, Links};
use myagent_host::llm::{ApiKey, LlmConfig};
use myagent_host::server::ServerConfig;
use std::sync::Arc;

use myagent_host::session::principal::Principals;
use myagent_host::session::SessionConfig;
use myagent_host::store::{Store, StoreOptions};

use super::args::{IsolationArg, ServeArgs};
use myagent_host::plugin::{Isolation, WorkerOptions};

/// Where loaded plugin copies go by default: `$XDG_RUNTIME_DIR` or the temp dir, per user.
/// `--isolation` and the worker limits. `notices`: where workers report crashes.
pub fn isolation(
    args: &ServeArgs,
    notices: Option<tokio::sync::broadcast::Sender<myagent_host::plugin::reload::ReloadNotice>>,
    metrics: &std::sync::Arc<myagent_host::metrics::Metrics>,
) -> anyhow::Result<Isolation> {
    Ok(match args.isolation {
        IsolationArg::InProcess => Isolation::InProcess,
        IsolationArg::Worker => Isolation::Worker(WorkerOptions {
            exe: worker_exe(),
            memory_limit: args
                .worker_memory_limit
                .map(|mib| mib.saturating_mul(1024 * 1024)),
            cpu_limit: args.worker_cpu_limit,
            drain_timeout: std::time::Duration::from_secs(args.drain_timeout),
            on_crash: notices.map(|n| {
                myagent_host::plugin::worker::CrashSink::new(move |c| {
                    let _ = n.send(myagent_host::plugin::reload::ReloadNotice::Crashed(c));
                })
            }),
            metrics: metrics.clone(),
        }),
    })
}

/// This binary: plugin workers are its hidden `__plugin-worker` subcommand. Named through
/// `/proc/self/exe` (the forked child's is the host's): a host binary replaced on disk by a
/// rebuild or an upgrade still starts workers of its own version.
pub fn worker_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

pub fn default_state_dir() -> PathBuf {
    // An empty or relative XDG_RUNTIME_DIR is ignored (it would put the copies under the
    // working directory).
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    base.join(format!("myagent-host-{uid}"))
}

pub fn server_config(args: &ServeArgs, fd_limit: u64) -> ServerConfig {
    let max_connections = args
        .max_connections
        .min(fd_limit.saturating_sub(64).max(16) as usize);
    if max_connections < args.max_connections {
        println!("Connection cap lowered to {max_connections} (file-descriptor limit {fd_limit})");
    }
    ServerConfig {
        max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        trusted_proxies: args.trusted_proxies.clone(),
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        max_message_bytes: args.max_message_bytes,
        // The hard limit (close 1009) sits just above the soft one (an error event): each
        // connection can make the host buffer at most this much (before authentication, the
        // gate's few KiB).
        max_frame_bytes: (args.max_message_bytes * 2).max(64 * 1024),
        read_buffer_bytes: args.read_buffer_bytes.max(1024),
        outbound_queue: args.outbound_queue.max(16),
        write_timeout: Duration::from_secs(args.write_timeout.max(1)),
        ping_interval: Duration::from_secs(args.ping_interval.max(1)),
        pong_timeout: Duration::from_secs(args.pong_timeout),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        metrics_token: args.metrics_token.clone().filter(|t| !t.trim().is_empty()),
        auth_timeout: Duration::from_secs(args.auth_timeout.max(1)),
        allowed_origins: args.allowed_origins.clone(),
        allowed_hosts: args
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
        conformance_echo: args.conformance_echo,
    }
}

/// Where sessions are stored by default: `$XDG_STATE_HOME/myagent-host/sessions.db`, else
/// `~/.local/state/myagent-host/sessions.db` — never a shared temporary directory.
pub fn default_store_path() -> anyhow::Result<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "neither XDG_STATE_HOME nor HOME is set to an absolute path, so there is no private place for the session store: set one, or pass --store sqlite:PATH (or --store memory)"
            )
        })?;
    Ok(state.join("myagent-host/sessions.db"))
}

/// Opens the store `--store` names: `memory`, or `sqlite:PATH` (the default, at
/// [`default_store_path`]).
pub fn session_store(args: &ServeArgs) -> anyhow::Result<Option<std::sync::Arc<Store>>> {
    let ttl = Duration::from_secs(args.session_ttl.max(1));
    let opts = StoreOptions {
        ttl,
        buffer_bytes: args.store_buffer.max(1) << 20,
        ack_timeout: Duration::from_millis(args.store_ack_timeout),
        events_bytes: args.replay_buffer_bytes,
    };
    let path = match args.store.as_deref() {
        None => default_store_path()?,
        Some("memory") => return Ok(None),
        Some(url) if url.starts_with("redis://") => {
            let durable = Store::open_redis(url, &opts)?;
            println!(
                "Sessions: stored in {}, shared with every host using it (resumable for {} after they go idle)",
                durable.describe(),
                human_duration(ttl)
            );
            return Ok(Some(durable));
        }
        Some(url) => match url.strip_prefix("sqlite:") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => anyhow::bail!(
                "--store {url}: expected `memory`, `sqlite:PATH` or `redis://HOST:PORT[/DB]`"
            ),
        },
    };
    let durable = Store::open_sqlite(&path, &opts)?;
    println!(
        "Sessions: stored in {} (resumable for {} after they go idle; --store memory to keep them in memory only)",
        path.display(),
        human_duration(ttl)
    );
    Ok(Some(durable))
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s => format!("{s} s"),
    }
}

pub fn session_config(args: &ServeArgs, principals: Arc<Principals>) -> SessionConfig {
    let max_sessions = match args.max_sessions {
        0 => {
            let (n, worst, budget) =
                auto_max_sessions(args.replay_buffer_bytes, args.memory_budget);
            println!(
                "Session cap: {n} (worst case ~{} KiB per session within {} MiB; --max-sessions to change)",
                worst / 1024,
                budget >> 20
            );
            n
        }
        n => n,
    };
    SessionConfig {
        max_sessions,
        max_sessions_per_ip: args.max_sessions_per_ip,
        max_sessions_per_connection: args.max_sessions_per_connection.max(1),
        replay_buffer_bytes: args.replay_buffer_bytes,
        replay_budget_bytes: match args.replay_budget_bytes {
            0 => (available_memory_bytes() / 4) as usize,
            n => n,
        },
        resume_window: Duration::from_secs(args.resume_window),
        on_busy: args.on_busy,
        image_urls: args.image_urls,
        max_runs_per_minute: args.max_runs_per_minute,
        max_runs_per_minute_per_ip: args.max_runs_per_minute_per_ip,
        max_stored_sessions: args.max_stored_sessions,
        max_stored_sessions_per_ip: args.max_stored_sessions_per_ip,
        principals,
    }
}

pub fn agent_config(args: &ServeArgs) -> anyhow::Result<AgentConfig> {
    let prices = match &args.prices {
        Some(p) => Some(std::sync::Arc::new(
            myagent_host::agent::usage::Prices::load(p).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    if args.session_cost_budget.is_some() && prices.is_none() {
        anyhow::bail!("--session-cost-budget needs --prices (the dollars per token of each model)");
    }
    if args
        .session_cost_budget
        .is_some_and(|c| !c.is_finite() || c <= 0.0)
    {
        anyhow::bail!("--session-cost-budget must be a positive number of dollars");
    }
    Ok(AgentConfig {
        default_model: args.model.clone(),
        tool_timeout: Duration::from_secs(args.tool_timeout.max(1)),
        max_tool_output_chars: args.max_tool_output.max(100),
        memory_budget_chars: args.memory_budget,
        answer_holdback_chars: args.answer_holdback,
        require_approval: args.require_approval.clone(),
        approval_timeout: Duration::from_secs(args.approval_timeout.max(1)),
        prices,
        session_budget: myagent_host::agent::usage::Budget {
            tokens: args.session_token_budget,
            cost_usd: args.session_cost_budget,
        },
        links: Links {
            handoffs: Links::pairs(&args.handoff, "--handoff").map_err(anyhow::Error::msg)?,
            agent_tools: Links::pairs(&args.agent_tool, "--agent-tool")
                .map_err(anyhow::Error::msg)?,
        },
    })
}

pub fn llm_config(args: &ServeArgs) -> LlmConfig {
    LlmConfig {
        base_url: args.base_url.clone(),
        api_key: std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(ApiKey::new),
        connect_timeout: Duration::from_secs(args.llm_connect_timeout),
        first_token_timeout: Duration::from_secs(args.llm_first_token_timeout),
        idle_timeout: Duration::from_secs(args.llm_idle_timeout),
        max_retries: args.llm_retries,
        call_timeout: Duration::from_secs(args.llm_call_timeout.max(1)),
        max_output_bytes: args.max_model_output.max(1024),
        max_tokens: (args.max_tokens > 0).then_some(args.max_tokens),
    }
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
