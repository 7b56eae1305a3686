//! The command line, as clap sees it. Every setting's default lives here, once (README.md's
//! table repeats them for readers); `config.rs` turns these into the library's config structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use myagent_host::session::event::OnBusy;

#[derive(Parser)]
#[command(
    name = "myagent-host",
    version,
    about = "Load LLM agents from native plugins and serve them over WebSocket."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up; the size does not matter
pub enum Command {
    /// Serve an agent plugin over WebSocket (and /health, /metrics over HTTP on the same port).
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Print a plugin's agent: name, API version, prompts and every tool with its schema.
    Inspect {
        /// The plugins' shared libraries (e.g. target/debug/libweather_agent.so), each printed
        /// in turn — the agents `serve` would serve.
        #[arg(required = true, num_args = 1.., value_name = "PLUGIN")]
        plugins: Vec<PathBuf>,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
        /// Also connect to these MCP servers (and those the plugin names) and list their tools
        /// as the agent would be offered them.
        #[arg(long, value_name = "FILE")]
        mcp_config: Option<PathBuf>,
    },
    /// Internal: the worker process a plugin build runs in (started by `serve` and `inspect`).
    #[command(name = "__plugin-worker", hide = true)]
    PluginWorker {
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        socket_fd: i32,
        #[arg(long)]
        lib_fd: i32,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    Worker,
    InProcess,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The plugins' shared libraries, one agent each (the first is the default). Each is
    /// watched: rebuilding it hot-swaps that agent.
    #[arg(required = true, num_args = 1.., value_name = "PLUGIN")]
    pub plugins: Vec<PathBuf>,
    /// Address to bind. Without --auth-token, binding beyond localhost prints a warning.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Debug logging (same as RUST_LOG=debug).
    #[arg(long)]
    pub debug: bool,
    /// Log lines as text (coloured only on a terminal; NO_COLOR turns colour off) or as JSON,
    /// one object per line (for journald, docker logs, log shippers).
    #[arg(long, value_enum, env = "MYAGENT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Model name when the plugin names none.
    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub model: String,
    /// OpenAI-compatible endpoint (OpenAI, DeepSeek, vLLM, Ollama, llama.cpp, LM Studio).
    /// The key is read from OPENAI_API_KEY only, never from the command line.
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub base_url: String,
    /// Answer from a recording instead of a live model (offline; see --record).
    #[arg(long, value_name = "FILE", conflicts_with = "record")]
    pub replay: Option<PathBuf>,
    /// Append every model exchange to FILE (JSON lines) for later --replay.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Retries of a failed model call (429, 5xx, timeouts, connection errors).
    #[arg(long, default_value_t = 2)]
    pub llm_retries: u32,
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub llm_connect_timeout: u64,
    /// Longest wait for the model's first data.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub llm_first_token_timeout: u64,
    /// Longest silence inside a model stream.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub llm_idle_timeout: u64,
    /// Longest one model call may take in all, however steadily it streams.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub llm_call_timeout: u64,
    /// Bytes of answer (text and tool-call arguments) accepted per model call; more fails the
    /// run with a clear error.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_model_output: usize,
    /// Sent to the model as `max_tokens` (0: not sent, for endpoints that refuse the field).
    #[arg(long, default_value_t = 4096, value_name = "TOKENS")]
    pub max_tokens: u32,

    /// Per tool call timeout, unless the plugin sets its own.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub tool_timeout: u64,
    /// MCP servers whose tools the agent may use, in the editors' format:
    /// {"mcpServers": {"NAME": {"command", "args", "env"} or {"url", "headers"}}}.
    #[arg(long, value_name = "FILE")]
    pub mcp_config: Option<PathBuf>,
    /// Every call of TOOL waits for a person's approval (`agent.tool_approval_required`, answered
    /// by `user.tool_approval`) before it runs, beside the tools the plugin marks (repeatable).
    #[arg(long = "require-approval", value_name = "TOOL")]
    pub require_approval: Vec<String>,
    /// Lets agent FROM hand the conversation over to agent TO (`transfer_to_TO`), beside the
    /// handoffs the plugins declare; names as the plugins declare them (repeatable).
    #[arg(long = "handoff", value_name = "FROM=TO")]
    pub handoff: Vec<String>,
    /// Lets agent FROM ask agent TO as a tool (`ask_TO`: TO runs on the question with a fresh
    /// memory; its answer is the result), beside the plugins' own (repeatable).
    #[arg(long = "agent-tool", value_name = "FROM=TO")]
    pub agent_tool: Vec<String>,
    /// A call that needs approval and gets no answer within this is denied.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub approval_timeout: u64,
    /// Dollars per million tokens per model (TOML: `[models."NAME"] input = …, output = …,
    /// cached_input = …`): usage events then carry `cost_usd`.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Tokens (input + output, over all its model calls) a session may use; no model call is
    /// made once it has (the run ends with reason `budget_reached`).
    #[arg(long, value_name = "TOKENS")]
    pub session_token_budget: Option<u64>,
    /// Dollars a session may spend (needs --prices for its models).
    #[arg(long, value_name = "USD")]
    pub session_cost_budget: Option<f64>,
    /// Tool outputs longer than this (characters) are truncated before the model sees them.
    #[arg(long, default_value_t = 8000)]
    pub max_tool_output: usize,
    /// Conversation budget per session, in characters; older whole turns are dropped.
    #[arg(long, default_value_t = 48_000)]
    pub memory_budget: usize,
    /// Characters of each model message held back until it is known whether tool calls follow
    /// (then the text is sent as `agent.thinking`) or not (it is the answer, sent as
    /// `agent.partial_answer`). Longer messages stream as the answer from there on (withdrawn
    /// with a reset if tool calls still follow); 0 streams every message at once.
    #[arg(long, value_name = "CHARS", default_value_t = 80)]
    pub answer_holdback: usize,
    /// Append run traces (JSON lines) here for plugins with enable_tracing.
    #[arg(long, value_name = "FILE")]
    pub trace_file: Option<PathBuf>,
    /// Export OpenTelemetry traces (GenAI conventions) over OTLP/HTTP to this collector, e.g.
    /// http://localhost:4318 (`/v1/traces` is added). Also switched on by
    /// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; the protocol is
    /// OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf, the default, or http/json), headers
    /// OTEL_EXPORTER_OTLP_HEADERS, the service OTEL_SERVICE_NAME (default myagent-host).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Put prompts, answers, tool arguments and tool results in trace spans (off: spans carry
    /// names, ids, models, token counts and errors, never what users or tools wrote).
    #[arg(long)]
    pub otel_capture_content: bool,
    /// --trace-file and --record files are created private (0600) and kept below this size: a
    /// trace moves to FILE.1 and starts afresh, a recording stops.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    pub journal_max_bytes: u64,

    /// Where loaded copies of the plugin go (default: $XDG_RUNTIME_DIR or /tmp).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Do not watch the plugin file for rebuilds.
    #[arg(long)]
    pub no_watch: bool,
    /// Quiet time after a file change before reloading.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub reload_debounce_ms: u64,
    /// Where plugin code runs: `worker` — a child process per build, so a crashing tool fails
    /// only its call and replaced builds are unloaded — or `in-process` (a few µs less per
    /// tool call; a native crash in the plugin takes the host down, builds stay mapped).
    #[arg(long, value_enum, default_value_t = IsolationArg::Worker)]
    pub isolation: IsolationArg,
    /// Address-space limit of each plugin worker (RLIMIT_AS), in MiB; an allocation past it
    /// fails (Rust plugins abort: the worker restarts).
    #[arg(long, value_name = "MIB")]
    pub worker_memory_limit: Option<u64>,
    /// CPU-time limit of each plugin worker over its life (RLIMIT_CPU), in seconds; a worker
    /// past it is killed and restarted.
    #[arg(long, value_name = "SECS")]
    pub worker_cpu_limit: Option<u64>,
    /// After a reload, how long the old build's worker may keep serving the runs that started
    /// on it before it is stopped.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub drain_timeout: u64,

    /// Open connections at most (kept below the file-descriptor limit).
    #[arg(long, default_value_t = 16_000)]
    pub max_connections: usize,
    /// WebSocket connections per client address (0 = no limit); more get HTTP 429. Behind a
    /// reverse proxy, set --trusted-proxy so the limit applies to clients, not to the proxy.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_connections_per_ip: usize,
    #[arg(long, default_value_t = 16)]
    pub max_sessions_per_connection: usize,
    /// Sessions alive at once over all clients, including those waiting for a resume
    /// (0 = sized to this machine: half its memory, or the container's limit, divided by a
    /// session's worst case; printed at start).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_sessions: usize,
    /// Sessions per client address (0 = no limit).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_sessions_per_ip: usize,
    /// A reverse proxy whose X-Forwarded-For header is believed (repeatable): an address
    /// (127.0.0.1 for an nginx on the same machine) or a range (10.0.0.0/8). From other peers
    /// the header is ignored.
    #[arg(long = "trusted-proxy", value_name = "IP[/BITS]")]
    pub trusted_proxies: Vec<myagent_host::server::ProxyRange>,
    /// Request headers (and the WebSocket handshake) must arrive within this, or the
    /// connection is closed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub header_read_timeout: u64,
    /// Client messages larger than this get an error event (1 MiB: room for an image as a
    /// content part). Before a client authenticates, its frames are held to 8 KiB whatever this
    /// says.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_message_bytes: usize,
    /// Events queued per connection before a slow client is disconnected (code 4008).
    #[arg(long, default_value_t = 1024)]
    pub outbound_queue: usize,
    /// A write to a client that does not complete within this drops the connection (the client
    /// stopped reading; its sessions stay resumable).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub write_timeout: u64,
    /// Bytes of past events kept per session for resume.
    #[arg(long, default_value_t = 262_144, value_name = "BYTES")]
    pub replay_buffer_bytes: usize,
    /// Bytes of past events kept by all sessions together (0 = a quarter of this machine's
    /// memory, or of the container's limit); over it, a session adding events drops its oldest.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub replay_budget_bytes: usize,
    /// WebSocket read buffer per connection (at least 1024). tungstenite keeps it allocated
    /// and zeroes it before every read attempt (each wake-up of the connection), so small is
    /// cheaper in memory and CPU; client messages larger than this just take more reads.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub read_buffer_bytes: usize,
    #[arg(long, default_value_t = 25, value_name = "SECS")]
    pub ping_interval: u64,
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub pong_timeout: u64,
    /// Where sessions are kept: `sqlite:PATH` (default: $XDG_STATE_HOME/myagent-host/sessions.db,
    /// else ~/.local/state/...): they survive restarts and can be resumed within --session-ttl;
    /// `redis://HOST:PORT[/DB]`: the same, shared by several hosts (any host serves any
    /// session, a turn running on one is followed from another); or `memory`: they end with
    /// the process.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// A stored session idle this long is deleted (default 7 days).
    #[arg(long, default_value_t = 604_800, value_name = "SECS")]
    pub session_ttl: u64,
    /// Bytes of writes kept while the session store is unreachable, stalled or full, retried
    /// until it takes them; past it, streamed events are dropped first (MiB).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub store_buffer: usize,
    /// An acknowledgement (`agent.session_created`, `agent.ready`) waits at most this long for
    /// the store to commit what it acknowledges, then is sent anyway (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub store_ack_timeout: u64,
    /// How long sessions (and their runs) wait for a client to resume after a disconnect (a run
    /// waiting for an approval or a client tool's result waits up to --approval-timeout more).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub resume_window: u64,
    /// Double texting: what a `user.message` does while its session runs, unless the message
    /// says (`on_busy`): reject it (already_running), enqueue it (up to 4), or interrupt the
    /// run and answer it instead.
    #[arg(long, value_enum, default_value_t = OnBusy::Reject)]
    pub on_busy: OnBusy,
    /// Which image URLs a message may pass on to the model: `data` (only `data:` URLs),
    /// `public` (also http(s) URLs whose host is not loopback, private or link-local) or `any`.
    #[arg(long, value_enum, default_value_t = myagent_host::session::ImageUrls::Public)]
    pub image_urls: myagent_host::session::ImageUrls,
    /// Messages one session may send a minute — each can start a full-context model call
    /// (a burst of this many, then one every 60/N s; more: too_many_requests). 0: no limit.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub max_runs_per_minute: u32,
    /// The same over all sessions of one client address (0: no limit). Behind a proxy, set
    /// --trusted-proxy so that the address is the client's.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_runs_per_minute_per_ip: u32,
    /// Sessions the session store may hold (kept for --session-ttl after they leave memory);
    /// a new session past it is refused (too_many_sessions). 0: no limit.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_stored_sessions: u64,
    /// The same for the sessions one client address made.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub max_stored_sessions_per_ip: u64,
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub shutdown_timeout: u64,

    /// Require this token (repeatable). Also MYAGENT_AUTH_TOKENS (comma-separated).
    #[arg(
        long = "auth-token",
        value_name = "TOKEN",
        env = "MYAGENT_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,
    /// Require this bearer token for GET /metrics (also MYAGENT_METRICS_TOKEN); without it
    /// /metrics is open to whoever can reach the port.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MYAGENT_METRICS_TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// With tokens required: a connection that has not sent a valid one within this is closed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub auth_timeout: u64,
    /// Read accepted tokens from FILE, one per line (all one principal, `default`).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Principals and their quotas (TOML: `[[principal]]` user, token or token_sha256, tier;
    /// `[tier.NAME]` tokens_per_day, tokens_per_hour, messages_per_minute, concurrent_runs).
    /// Each principal sees only its own sessions. Re-read when the file changes.
    #[arg(long, value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Accept WebSocket upgrades from browser pages with these Origin values (repeatable; `*`
    /// for any). Default: the same origin as the request (the page this host serves) and pages
    /// on localhost. Requests without an Origin header (non-browser clients) are not affected.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Also answer requests for this Host name (repeatable; `*` for any). IP addresses and
    /// localhost are always accepted; other names are refused (DNS rebinding) unless listed —
    /// e.g. the public name nginx forwards. Also MYAGENT_ALLOWED_HOSTS (comma-separated).
    #[arg(
        long = "allowed-host",
        value_name = "NAME",
        env = "MYAGENT_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Also serve a WebSocket echo on /_echo with the same stack and limits (for protocol
    /// conformance testing with the Autobahn fuzzing client; not for production).
    #[arg(long)]
    pub conformance_echo: bool,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
