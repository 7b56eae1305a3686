//! `myagent-loadgen`: the load generator. A separate process that drives a running
//! `myagent-host` on loopback with real WebSocket clients and prints what it measured (and
//! writes it as JSON with `--json FILE`).
//!
//! Scenarios (each bounded in connections and time):
//! - `idle`: open N connections and hold them; server RSS per connection, connect rate.
//! - `stream`: M sessions stream long answers from `fake-llm` at a set token rate; events/s,
//!   host-added latency per event (chunk leaves fake-llm → event received here), time to first
//!   event, errors.
//! - `churn`: connect, create a session, one short conversation, close, in a loop; sessions/s
//!   and server RSS before and after.
//! - `tools`: `stream` twice, the second time with extra sessions whose tools block a thread;
//!   shows the streaming sessions' latency is unaffected (host serving `testkit_agent`).
//! - `compare`: the host against `myagent-floor` (the floor of our own stack), same model and
//!   client, one after the other; events/s and the ratio, p99 at 50 tokens/s.
//! - `agui`: N AG-UI runs at once over `POST /agui` (or another AG-UI server); events/s and
//!   answer deltas/s, as `stream` reports them for the WebSocket.
//! - `suite`: starts `fake-llm` and hosts itself (binaries next to this one) and runs a short
//!   (`--short`, what `make bench` runs) or long version of each, then prints a table.
//!
//! Server memory is read from the host's `/metrics` (`process_resident_memory_bytes`).

mod agui;
mod churn;
mod client;
mod compare;
mod idle;
mod plot;
mod soak;
mod stream;
mod suite;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use agui::{agui, AguiArgs};
use churn::churn;
use compare::{compare, CompareArgs};
use idle::idle;
use soak::{soak, sweep};
use stream::{stream, tools};
use suite::suite;

#[derive(Parser)]
#[command(
    name = "myagent-loadgen",
    about = "Load generator for myagent-host (loopback only)"
)]
struct Cli {
    /// Also write the results as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N idle connections and hold them; report server RSS per connection.
    Idle(IdleArgs),
    /// M sessions streaming at once; report host-added latency and throughput.
    Stream(StreamArgs),
    /// Connect, converse, close, in a loop; report sessions/s and memory before/after.
    Churn(ChurnArgs),
    /// Streaming latency without and with concurrent blocking tools (host on testkit_agent).
    Tools(ToolsArgs),
    /// Start fake-llm and hosts, run every scenario, print a table.
    Suite(SuiteArgs),
    /// Start fake-llm and a host, run stream + churn together for a while; fail on any error
    /// event or on host RSS growth beyond the limit after the warm-up.
    Soak(SoakArgs),
    /// Streaming latency at increasing session counts; writes an SVG plot.
    Sweep(SweepArgs),
    /// The host against `myagent-floor` (a minimal relay on the same libraries): events/s,
    /// the ratio, and p99 at 50 tokens/s.
    Compare(CompareArgs),
    /// N AG-UI runs at once over POST (ours at /agui, or another AG-UI server): events/s,
    /// answer deltas/s, time to first delta.
    Agui(AguiArgs),
}

#[derive(Args, Clone)]
struct SoakArgs {
    /// Minutes measured after the warm-up (which ends once every stream has run
    /// `--warmup-runs` runs and `--warmup-churned` sessions have churned).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Runs each streaming session streams before RSS is measured.
    #[arg(long, default_value_t = 60)]
    warmup_runs: u64,
    /// Sessions churned before RSS is measured.
    #[arg(long, default_value_t = 80_000)]
    warmup_churned: u64,
    /// The warm-up ends here even if the counts were not reached (said in the output).
    #[arg(long, default_value_t = 10.0)]
    max_warmup_minutes: f64,
    /// Sessions streaming continuously (50 tokens/s each).
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Clients churning (connect, converse, close) continuously.
    #[arg(long, default_value_t = 16)]
    churners: usize,
    /// Allowed host RSS growth over the measured minutes, percent (low points of the first and
    /// the last 35 s compared: the host hands freed memory back every 30 s).
    #[arg(long, default_value_t = 5.0)]
    max_growth_percent: f64,
}

#[derive(Args, Clone)]
struct SweepArgs {
    /// Session counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,750,1000")]
    sessions: Vec<usize>,
    #[arg(long, default_value_t = 150)]
    tokens: usize,
    /// Where to write the plot.
    #[arg(long, default_value = "docs/latency-vs-sessions.svg")]
    svg: PathBuf,
}

#[derive(Args, Clone)]
struct Target {
    /// WebSocket URL of the host.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds to hold the connections after the last one opened (keep below the host's
    /// ping interval + pong timeout: idle clients here do not answer pings).
    #[arg(long, default_value_t = 3)]
    hold_secs: u64,
}

#[derive(Args, Clone)]
struct StreamArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Sessions per WebSocket connection.
    #[arg(long, default_value_t = 1)]
    sessions_per_connection: usize,
    /// Chunks per answer.
    #[arg(long, default_value_t = 250)]
    tokens: usize,
    /// Milliseconds between chunks (20 = 50 tokens/s per session).
    #[arg(long, default_value_t = 20)]
    token_ms: u64,
    /// Spread the sessions' first messages over this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    ramp_ms: u64,
}

#[derive(Args, Clone)]
struct ChurnArgs {
    #[command(flatten)]
    target: Target,
    /// Sessions to churn through (after the warm-up).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Sessions run first, before the baseline memory reading.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Clients churning at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Args, Clone)]
struct ToolsArgs {
    #[command(flatten)]
    stream: StreamArgs,
    /// Sessions running a blocking tool during the second phase.
    #[arg(long, default_value_t = 32)]
    blockers: usize,
    /// How long each blocking tool call holds its thread.
    #[arg(long, default_value_t = 1500)]
    block_ms: u64,
}

#[derive(Args, Clone)]
struct SuiteArgs {
    /// The quick version (what `make bench` runs): fewer connections and sessions.
    #[arg(long)]
    short: bool,
    /// An extra argument for every host the suite starts (repeatable), e.g.
    /// `--host-arg=--isolation --host-arg=in-process`.
    #[arg(long = "host-arg", allow_hyphen_values = true)]
    host_args: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Idle(a) => idle(&a).await?,
        Cmd::Stream(a) => stream(&a).await?,
        Cmd::Churn(a) => churn(&a).await?,
        Cmd::Tools(a) => tools(&a).await?,
        Cmd::Suite(a) => suite(&a).await?,
        Cmd::Soak(a) => soak(&a).await?,
        Cmd::Sweep(a) => sweep(&a).await?,
        Cmd::Compare(a) => compare(&a).await?,
        Cmd::Agui(a) => agui(&a).await?,
    };
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
