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
//! - `suite`: starts `fake-llm` and hosts itself (binaries next to this one) and runs a short
//!   (`--short`, what `make bench` runs) or long version of each, then prints a table.
//!
//! Server memory is read from the host's `/metrics` (`process_resident_memory_bytes`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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
}

#[derive(Args, Clone)]
struct SoakArgs {
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Sessions streaming continuously (50 tokens/s each).
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Clients churning (connect, converse, close) continuously.
    #[arg(long, default_value_t = 16)]
    churners: usize,
    /// Allowed host RSS growth from the end of the warm-up (first fifth) to the end, percent.
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
    };
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the load generator holds as many connections as the host.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn connect(url: &str) -> Result<Ws> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
    // The greeting.
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("system.connected") => Ok(ws),
        other => bail!("no system.connected greeting: {other:?}"),
    }
}

/// Sends `user.create_session` and returns the new session's id (None if the connection ends
/// first).
async fn open_session(ws: &mut Ws) -> Option<String> {
    ws.send(Message::text(
        json!({"event": "user.create_session"}).to_string(),
    ))
    .await
    .ok()?;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap_or_default();
            if v["event"] == "agent.session_created" {
                return v["session_id"].as_str().map(str::to_owned);
            }
        }
    }
    None
}

fn http_base(ws_url: &str) -> String {
    let rest = ws_url
        .strip_prefix("ws://")
        .unwrap_or(ws_url)
        .trim_end_matches('/');
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport.to_owned()
}

async fn http_get(ws_url: &str, path: &str) -> Result<String> {
    let hostport = http_base(ws_url);
    let mut s = tokio::net::TcpStream::connect(&hostport).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// The host's resident memory (bytes) and open connections, from `/metrics`.
async fn host_stats(url: &str) -> Result<(u64, u64)> {
    let m = http_get(url, "/metrics").await?;
    let metric = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Ok((
        metric("process_resident_memory_bytes").context("no RSS in /metrics")?,
        metric("myagent_connections").unwrap_or(0),
    ))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------------
// idle

async fn idle(a: &IdleArgs) -> Result<Value> {
    let url = a.target.url.clone();
    let (rss0, conns0) = host_stats(&url).await?;
    println!(
        "idle: opening {} connections to {url} ({} at a time); host RSS {:.1} MiB",
        a.connections,
        a.concurrency,
        mib(rss0)
    );
    let started = Instant::now();
    let results: Vec<Result<Ws>> = futures_util::stream::iter(0..a.connections)
        .map(|_| {
            let url = url.clone();
            async move { connect(&url).await }
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    let took = started.elapsed();
    let mut open = Vec::with_capacity(results.len());
    let mut errors = 0usize;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(ws) => open.push(ws),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let rate = open.len() as f64 / took.as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, conns1) = host_stats(&url).await?;
    let n = open.len().max(1) as f64;
    let per_conn = rss1.saturating_sub(rss0) as f64 / n;
    println!(
        "idle: {} open ({} errors{}) in {:.2} s = {:.0} conn/s; host sees {} connections; \
         RSS {:.1} → {:.1} MiB = {:.0} bytes per connection",
        open.len(),
        errors,
        first_error
            .as_ref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        took.as_secs_f64(),
        rate,
        conns1.saturating_sub(conns0),
        mib(rss0),
        mib(rss1),
        per_conn
    );
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    let opened = open.len();
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss2, _) = host_stats(&url).await?;
    println!("idle: closed; host RSS {:.1} MiB", mib(rss2));
    Ok(json!({
        "scenario": "idle", "connections": opened, "errors": errors, "connect_secs": took.as_secs_f64(),
        "connects_per_sec": rate, "host_rss_before": rss0, "host_rss_open": rss1, "host_rss_after_close": rss2,
        "bytes_per_connection": per_conn,
    }))
}

// ---------------------------------------------------------------------------------------------
// stream

#[derive(Default)]
struct StreamStats {
    latency: Option<Histogram<u64>>,
    ttfe: Option<Histogram<u64>>,
    events: u64,
    finals: u64,
    errors: u64,
    first_error: Option<String>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

impl StreamStats {
    fn merge(&mut self, o: StreamStats) {
        self.latency
            .get_or_insert_with(hist)
            .add(o.latency.unwrap_or_else(hist))
            .ok();
        self.ttfe
            .get_or_insert_with(hist)
            .add(o.ttfe.unwrap_or_else(hist))
            .ok();
        self.events += o.events;
        self.finals += o.finals;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Records the latency of every `~<micros>|` marker in an event's text.
fn record_markers(text: &str, now: u64, h: &mut Histogram<u64>) -> usize {
    let mut n = 0;
    let mut rest = text;
    while let Some(i) = rest.find('~') {
        rest = &rest[i + 1..];
        let end = rest.find('|').unwrap_or(rest.len());
        if let Ok(sent) = rest[..end].parse::<u64>() {
            h.saturating_record(now.saturating_sub(sent).max(1));
            n += 1;
        }
        rest = &rest[end..];
    }
    n
}

/// One connection's share of a streaming run: creates its sessions, waits for `go`, sends each
/// session's message at its start offset, and reads until every session has its final answer.
async fn stream_connection(
    url: String,
    sessions: usize,
    content: String,
    starts: Vec<Duration>,
    ready: Arc<tokio::sync::Barrier>,
    go: Arc<Mutex<Option<Instant>>>,
    deadline: Duration,
) -> StreamStats {
    let mut st = StreamStats {
        latency: Some(hist()),
        ttfe: Some(hist()),
        ..Default::default()
    };
    let fail = |st: &mut StreamStats, e: String| {
        st.errors += 1;
        st.first_error.get_or_insert(e);
    };
    let mut ws = match connect(&url).await {
        Ok(ws) => Some(ws),
        Err(e) => {
            fail(&mut st, e.to_string());
            None
        }
    };
    let mut ids = Vec::new();
    if let Some(w) = ws.as_mut() {
        for _ in 0..sessions {
            let created = async {
                w.send(Message::text(
                    json!({"event": "user.create_session"}).to_string(),
                ))
                .await?;
                while let Some(m) = w.next().await {
                    if let Message::Text(t) = m? {
                        let v: Value = serde_json::from_str(&t)?;
                        if v["event"] == "agent.session_created" {
                            return Ok(v["session_id"].as_str().unwrap_or_default().to_owned());
                        }
                        if v["event"] == "agent.error" {
                            bail!("create_session: {}", v["error"]);
                        }
                    }
                }
                bail!("connection closed")
            };
            match tokio::time::timeout(Duration::from_secs(30), created).await {
                Ok(Ok(id)) => ids.push(id),
                Ok(Err(e)) => fail(&mut st, e.to_string()),
                Err(_) => fail(&mut st, "create_session timed out".into()),
            }
        }
    }
    ready.wait().await;
    let Some(mut ws) = ws else { return st };
    let t0 = go.lock().unwrap().unwrap_or_else(Instant::now);
    let mut pending: Vec<(Duration, String)> = starts.into_iter().zip(ids).collect();
    pending.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut sent_at: std::collections::HashMap<String, (Instant, bool)> = Default::default();
    let total = pending.len();
    let end = tokio::time::Instant::from_std(t0) + deadline;
    while st.finals + st.errors < total as u64 {
        let next_start = pending
            .last()
            .map(|p| tokio::time::Instant::from_std(t0 + p.0));
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(next_start.unwrap_or(end)), if next_start.is_some() => {
                let (_, id) = pending.pop().unwrap();
                let m = json!({"event": "user.message", "session_id": id, "content": content}).to_string();
                sent_at.insert(id, (Instant::now(), false));
                if let Err(e) = ws.send(Message::text(m)).await { fail(&mut st, e.to_string()); break; }
                continue;
            }
            _ = tokio::time::sleep_until(end) => { fail(&mut st, "deadline reached before every final answer".into()); break; }
            m = ws.next() => m,
        };
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                fail(&mut st, e.to_string());
                break;
            }
            None => {
                fail(&mut st, "connection closed".into());
                break;
            }
        };
        let now = now_micros();
        st.events += 1;
        let text = t.as_str();
        if text.contains("\"agent.partial_answer\"") {
            record_markers(text, now, st.latency.as_mut().unwrap());
            if let Some(sid) = session_of(text) {
                if let Some((at, seen)) = sent_at.get_mut(sid) {
                    if !*seen {
                        *seen = true;
                        st.ttfe
                            .as_mut()
                            .unwrap()
                            .saturating_record(at.elapsed().as_micros().max(1) as u64);
                    }
                }
            }
        } else if text.contains("\"agent.final_answer\"") {
            st.finals += 1;
        } else if text.contains("\"agent.error\"") {
            fail(&mut st, text.to_owned());
        }
    }
    let _ = ws.close(None).await;
    st
}

fn session_of(text: &str) -> Option<&str> {
    let i = text.find("\"session_id\":\"")? + 14;
    let rest = &text[i..];
    Some(&rest[..rest.find('"')?])
}

async fn stream(a: &StreamArgs) -> Result<Value> {
    let r = stream_run(a, "stream", 0, 0).await?;
    Ok(r)
}

/// Runs the stream scenario; with `blockers > 0`, that many extra sessions loop on a blocking
/// tool call (`call:sleep`) during it.
async fn stream_run(a: &StreamArgs, label: &str, blockers: usize, block_ms: u64) -> Result<Value> {
    let per = a.sessions_per_connection.max(1);
    let conns = a.sessions.div_ceil(per);
    let content = format!("bench:{}@{}", a.tokens, a.token_ms);
    println!(
        "{label}: {} sessions on {conns} connections, {} chunks each every {} ms ({:.0} tokens/s per session){}",
        a.sessions,
        a.tokens,
        a.token_ms,
        1000.0 / a.token_ms.max(1) as f64,
        if blockers > 0 { format!(", with {blockers} sessions blocking a thread for {block_ms} ms per tool call") } else { String::new() }
    );
    let (rss0, _) = host_stats(&a.target.url).await?;
    let ready = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let go = Arc::new(Mutex::new(None));
    let run_secs = a.tokens as u64 * a.token_ms / 1000 + a.ramp_ms / 1000;
    let deadline = Duration::from_secs(run_secs * 3 + 60);
    let mut tasks = Vec::with_capacity(conns);
    let mut remaining = a.sessions;
    let mut k = 0usize;
    for _ in 0..conns {
        let n = remaining.min(per);
        remaining -= n;
        let starts = (0..n)
            .map(|_| {
                k += 1;
                Duration::from_micros((k as u64 * a.ramp_ms * 1000) / a.sessions.max(1) as u64)
            })
            .collect();
        tasks.push(tokio::spawn(stream_connection(
            a.target.url.clone(),
            n,
            content.clone(),
            starts,
            ready.clone(),
            go.clone(),
            deadline,
        )));
    }
    // Blocking-tool sessions, if any.
    let stop_blockers = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blocker_calls = Arc::new(AtomicU64::new(0));
    let mut blocker_tasks = Vec::new();
    for _ in 0..blockers {
        let url = a.target.url.clone();
        let stop = stop_blockers.clone();
        let calls = blocker_calls.clone();
        blocker_tasks.push(tokio::spawn(async move {
            let Ok(mut ws) = connect(&url).await else {
                return;
            };
            let msg = format!("call:sleep {{\"ms\": {block_ms}}}");
            let Some(sid) = open_session(&mut ws).await else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                let m = json!({"event": "user.message", "session_id": sid, "content": msg});
                if ws.send(Message::text(m.to_string())).await.is_err() {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m {
                        if t.contains("\"agent.tool_result\"") {
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                        if t.contains("\"agent.ready\"") {
                            break;
                        }
                    }
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    if blockers > 0 {
        // Let the blocking calls get going first.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let setup = Instant::now();
    *go.lock().unwrap() = Some(Instant::now() + Duration::from_millis(50));
    ready.wait().await;
    let setup_took = setup.elapsed();
    let t0 = Instant::now();
    let mut total = StreamStats::default();
    for t in tasks {
        total.merge(t.await?);
    }
    let took = t0.elapsed();
    stop_blockers.store(true, Ordering::Relaxed);
    for t in blocker_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let (rss1, _) = host_stats(&a.target.url).await?;
    let lat = total.latency.unwrap_or_else(hist);
    let ttfe = total.ttfe.unwrap_or_else(hist);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let eps = total.events as f64 / took.as_secs_f64();
    println!(
        "{label}: {} final answers, {} errors{} in {:.2} s (setup {:.2} s); {} events = {:.0} events/s",
        total.finals,
        total.errors,
        total.first_error.as_ref().map(|e| format!(" (first: {})", e.chars().take(200).collect::<String>())).unwrap_or_default(),
        took.as_secs_f64(),
        setup_took.as_secs_f64(),
        total.events,
        eps
    );
    println!(
        "{label}: host-added latency per token event (n={}): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        lat.len(),
        ms(&lat, 0.5),
        ms(&lat, 0.99),
        ms(&lat, 0.999),
        lat.max() as f64 / 1000.0
    );
    println!(
        "{label}: time to first token event: p50 {:.2} ms, p99 {:.2} ms; host RSS {:.1} → {:.1} MiB{}",
        ms(&ttfe, 0.5),
        ms(&ttfe, 0.99),
        mib(rss0),
        mib(rss1),
        if blockers > 0 { format!("; {} blocking tool calls completed", blocker_calls.load(Ordering::Relaxed)) } else { String::new() }
    );
    Ok(json!({
        "scenario": label, "sessions": a.sessions, "sessions_per_connection": per, "tokens": a.tokens, "token_ms": a.token_ms,
        "final_answers": total.finals, "errors": total.errors, "first_error": total.first_error,
        "secs": took.as_secs_f64(), "events": total.events, "events_per_sec": eps,
        "latency_ms": {"n": lat.len(), "p50": ms(&lat, 0.5), "p99": ms(&lat, 0.99), "p999": ms(&lat, 0.999), "max": lat.max() as f64 / 1000.0},
        "first_event_ms": {"p50": ms(&ttfe, 0.5), "p99": ms(&ttfe, 0.99)},
        "host_rss_before": rss0, "host_rss_after": rss1,
        "blockers": blockers, "blocking_calls": blocker_calls.load(Ordering::Relaxed),
    }))
}

// ---------------------------------------------------------------------------------------------
// churn

async fn churn_one(url: &str) -> Result<()> {
    let mut ws = connect(url).await?;
    ws.send(Message::text(
        json!({"event": "user.create_session"}).to_string(),
    ))
    .await?;
    let mut sid = String::new();
    let mut phase = 0;
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        let v: Value = serde_json::from_str(&t)?;
        match (phase, v["event"].as_str().unwrap_or("")) {
            (_, "agent.error") => bail!("agent.error: {}", v["error"]),
            (0, "agent.session_created") => {
                sid = v["session_id"].as_str().unwrap_or_default().into();
                ws.send(Message::text(
                    json!({"event": "user.message", "session_id": sid, "content": "say:hello"})
                        .to_string(),
                ))
                .await?;
                phase = 1;
            }
            (1, "agent.final_answer") => {
                ws.send(Message::text(
                    json!({"event": "user.close_session", "session_id": sid}).to_string(),
                ))
                .await?;
                phase = 2;
            }
            (2, "agent.session_closed") => {
                ws.close(None).await?;
                return Ok(());
            }
            _ => {}
        }
    }
    bail!("connection closed mid-conversation")
}

async fn churn_batch(url: &str, n: usize, concurrency: usize) -> (usize, usize, Option<String>) {
    let results: Vec<Result<()>> = futures_util::stream::iter(0..n)
        .map(|_| async move {
            tokio::time::timeout(Duration::from_secs(30), churn_one(url))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let first = results
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
    (ok, n - ok, first)
}

async fn churn(a: &ChurnArgs) -> Result<Value> {
    let url = &a.target.url;
    println!(
        "churn: {} warm-up sessions, then {} ({} clients at a time)",
        a.warmup, a.sessions, a.concurrency
    );
    churn_batch(url, a.warmup, a.concurrency).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, _) = host_stats(url).await?;
    let t0 = Instant::now();
    let (ok, failed, first) = churn_batch(url, a.sessions, a.concurrency).await;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, conns) = host_stats(url).await?;
    let growth = (rss1 as f64 - rss0 as f64) / rss0 as f64 * 100.0;
    let rate = ok as f64 / took.as_secs_f64();
    println!(
        "churn: {ok} sessions ({failed} failed{}) in {:.1} s = {rate:.0} sessions/s; host RSS {:.1} → {:.1} MiB ({growth:+.1} %), {conns} connections left",
        first.as_ref().map(|e| format!(", first: {e}")).unwrap_or_default(),
        took.as_secs_f64(),
        mib(rss0),
        mib(rss1),
    );
    Ok(json!({
        "scenario": "churn", "sessions": ok, "failed": failed, "first_error": first, "secs": took.as_secs_f64(),
        "sessions_per_sec": rate, "host_rss_baseline": rss0, "host_rss_after": rss1, "rss_growth_percent": growth,
        "connections_left": conns,
    }))
}

// ---------------------------------------------------------------------------------------------
// tools

async fn tools(a: &ToolsArgs) -> Result<Value> {
    let without = stream_run(&a.stream, "tools (baseline)", 0, 0).await?;
    let with = stream_run(&a.stream, "tools (blocking)", a.blockers, a.block_ms).await?;
    Ok(json!({"scenario": "tools", "without_blocking": without, "with_blocking": with}))
}

// ---------------------------------------------------------------------------------------------
// suite

struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a process and returns it with the first stdout/stderr line containing `needle`.
fn spawn_until(mut cmd: Command, needle: &str) -> Result<(Spawned, String)> {
    use std::io::BufRead;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let p = Spawned(child);
    let until = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            // Keep draining so the pipes never fill.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Ok((p, line));
        }
    }
    bail!("{cmd:?} did not print {needle:?}")
}

fn port_of(line: &str) -> Result<u16> {
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .context("no port in the line")
}

/// fake-llm and a state directory (removed on drop); starts hosts against them. Binaries are
/// taken from this executable's directory.
struct Stack {
    dir: PathBuf,
    state: PathBuf,
    llm_url: String,
    _llm: Spawned,
}

impl Stack {
    fn start() -> Result<Stack> {
        let dir = std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_owned();
        let state = std::env::temp_dir().join(format!("myagent-loadgen-{}", std::process::id()));
        std::fs::create_dir_all(&state)?;
        let mut llm_cmd = Command::new(dir.join("fake-llm"));
        llm_cmd.args(["--port", "0"]);
        let (llm, line) = spawn_until(llm_cmd, "listening on")?;
        let llm_url = format!("http://127.0.0.1:{}/v1", port_of(&line)?);
        Ok(Stack {
            dir,
            state,
            llm_url,
            _llm: llm,
        })
    }

    /// A fresh host serving `lib{plugin}.so`; returns it and its WebSocket URL.
    fn host(&self, plugin: &str, extra: &[&str]) -> Result<(Spawned, String)> {
        let mut cmd = Command::new(self.dir.join("myagent-host"));
        cmd.arg("serve")
            .arg(self.dir.join(format!("lib{plugin}.so")))
            .args(["--host", "127.0.0.1", "--port", "0", "--model", "fake"])
            .arg("--base-url")
            .arg(&self.llm_url)
            .args([
                "--max-connections",
                "19500",
                "--no-watch",
                "--resume-window",
                "5",
            ])
            .args([
                "--llm-first-token-timeout",
                "60",
                "--llm-idle-timeout",
                "60",
            ])
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra)
            .env("RUST_LOG", "warn,myagent_host=info")
            .env_remove("OPENAI_API_KEY")
            .env_remove("MYAGENT_AUTH_TOKENS");
        let (p, line) = spawn_until(cmd, "Serving on ws://")?;
        let port =
            myagent_tests::serving_port(&line).context("no port in the host's Serving line")?;
        Ok((p, format!("ws://127.0.0.1:{port}")))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn suite(a: &SuiteArgs) -> Result<Value> {
    let stack = Stack::start()?;
    let s = a.short;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut results = Vec::new();

    // Each scenario gets a fresh host, so that one's memory does not colour the next.
    let weather = || stack.host("weather_agent", &[]);
    {
        let (_host, url) = weather()?;
        let n = if s { 2_000 } else { 19_000 };
        let r = idle(&IdleArgs {
            target: Target { url },
            connections: n,
            concurrency: 200,
            hold_secs: 1,
        })
        .await?;
        rows.push((
            format!(
                "idle: server RSS per connection ({} conns)",
                r["connections"]
            ),
            format!("{:.0} B", r["bytes_per_connection"].as_f64().unwrap_or(0.0)),
            "≤ 10,240 B at 19,000".into(),
        ));
        rows.push((
            "idle: connect rate".into(),
            format!(
                "{:.0} conn/s",
                r["connects_per_sec"].as_f64().unwrap_or(0.0)
            ),
            "".into(),
        ));
        results.push(r);
    }
    {
        let (_host, url) = weather()?;
        let sessions = if s { 200 } else { 1_000 };
        let tokens = if s { 100 } else { 250 };
        let r = stream(&StreamArgs {
            target: Target { url },
            sessions,
            sessions_per_connection: 1,
            tokens,
            token_ms: 20,
            ramp_ms: 1000,
        })
        .await?;
        rows.push((
            format!("stream: host-added latency p50 / p99 ({sessions} sessions × 50 tok/s)"),
            format!(
                "{:.2} / {:.2} ms",
                r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                r["latency_ms"]["p99"].as_f64().unwrap_or(0.0)
            ),
            "p99 ≤ 5 ms at 1,000".into(),
        ));
        rows.push((
            "stream: time to first token p99 (model's first chunk after 40 ms)".into(),
            format!(
                "{:.1} ms",
                r["first_event_ms"]["p99"].as_f64().unwrap_or(0.0)
            ),
            "".into(),
        ));
        rows.push(("stream: errors".into(), r["errors"].to_string(), "0".into()));
        results.push(r);
    }
    {
        let (_host, url) = weather()?;
        let r = stream(&StreamArgs {
            target: Target { url },
            sessions: if s { 100 } else { 500 },
            sessions_per_connection: 1,
            tokens: if s { 1_000 } else { 2_000 },
            token_ms: 0,
            ramp_ms: 200,
        })
        .await?;
        rows.push((
            "throughput: events/s delivered (model unpaced)".into(),
            format!("{:.0}", r["events_per_sec"].as_f64().unwrap_or(0.0)),
            "≥ 100,000".into(),
        ));
        results.push(r);
    }
    {
        let (_host, url) = weather()?;
        let n = if s { 3_000 } else { 100_000 };
        let r = churn(&ChurnArgs {
            target: Target { url },
            sessions: n,
            warmup: if s { 1_000 } else { 20_000 },
            concurrency: 32,
        })
        .await?;
        rows.push((
            format!("churn: sessions/s ({n} sessions)"),
            format!("{:.0}", r["sessions_per_sec"].as_f64().unwrap_or(0.0)),
            "".into(),
        ));
        rows.push((
            "churn: host RSS growth after".into(),
            format!("{:+.1} %", r["rss_growth_percent"].as_f64().unwrap_or(0.0)),
            "within ±5 % (100,000 sessions)".into(),
        ));
        results.push(r);
    }
    {
        let (_host, url) = stack.host("testkit_agent", &[])?;
        let sessions = if s { 100 } else { 500 };
        let r = tools(&ToolsArgs {
            stream: StreamArgs {
                target: Target { url },
                sessions,
                sessions_per_connection: 1,
                tokens: 100,
                token_ms: 20,
                ramp_ms: 500,
            },
            blockers: 32,
            block_ms: 1500,
        })
        .await?;
        rows.push((
            format!("tools: latency p99 without / with 32 blocking tools ({sessions} sessions)"),
            format!(
                "{:.2} / {:.2} ms",
                r["without_blocking"]["latency_ms"]["p99"]
                    .as_f64()
                    .unwrap_or(0.0),
                r["with_blocking"]["latency_ms"]["p99"]
                    .as_f64()
                    .unwrap_or(0.0)
            ),
            "unaffected".into(),
        ));
        results.push(r);
    }
    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
    let w2 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(10);
    println!("\n{:<w$}  {:>w2$}  target", "measure", "result");
    println!("{}", "-".repeat(w + w2 + 30));
    for (m, v, t) in &rows {
        println!("{m:<w$}  {v:>w2$}  {t}");
    }
    Ok(json!({"suite": if s { "short" } else { "long" }, "results": results}))
}

// ---------------------------------------------------------------------------------------------
// soak

async fn soak_streamer(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, Option<String>) {
    let (mut runs, mut errors, mut first) = (0u64, 0u64, None);
    let mut fail = |e: String| {
        errors += 1;
        first.get_or_insert(e);
    };
    let Ok(mut ws) = connect(&url).await else {
        fail("connect failed".into());
        return (runs, errors, first);
    };
    let Some(sid) = open_session(&mut ws).await else {
        fail("create_session got no agent.session_created".into());
        return (runs, errors, first);
    };
    while !stop.load(Ordering::Relaxed) {
        let m = json!({"event": "user.message", "session_id": sid, "content": "bench:100@20"});
        if ws.send(Message::text(m.to_string())).await.is_err() {
            fail("send failed".into());
            break;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if t.contains("\"agent.error\"") {
                        fail(t.to_string());
                    }
                    if t.contains("\"agent.ready\"") {
                        runs += 1;
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                other => {
                    fail(format!("stream ended: {other:?}"));
                    return (runs, errors, first);
                }
            }
        }
    }
    let _ = ws.close(None).await;
    (runs, errors, first)
}

async fn soak(a: &SoakArgs) -> Result<Value> {
    // Per-session history and replay buffers grow to their caps and stay there; smaller caps
    // than the defaults reach that steady state within the warm-up even in a short soak.
    let stack = Stack::start()?;
    let (_host, url) = stack.host(
        "weather_agent",
        &["--replay-buffer-bytes", "32768", "--memory-budget", "6000"],
    )?;
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    // Allocator arenas and pools reach their working size within ~150,000 churned sessions
    // (about 40 s here); the growth limit applies after that.
    let warmup = (total / 5).max(Duration::from_secs(60)).min(total / 2);
    println!(
        "soak: {:.1} min of {} streaming sessions + {} churning clients against {url}",
        a.minutes, a.streams, a.churners
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streamers = Vec::new();
    for _ in 0..a.streams {
        streamers.push(tokio::spawn(soak_streamer(url.clone(), stop.clone())));
    }
    let churned = Arc::new(AtomicU64::new(0));
    let churn_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut churners = Vec::new();
    for _ in 0..a.churners {
        let (url, stop, churned, errs) = (
            url.clone(),
            stop.clone(),
            churned.clone(),
            churn_errors.clone(),
        );
        churners.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(30), churn_one(&url)).await {
                    Ok(Ok(())) => {
                        churned.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => errs.lock().unwrap().push(e.to_string()),
                    Err(_) => errs.lock().unwrap().push("churn timed out".into()),
                }
            }
        }));
    }
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut baseline = None;
    while t0.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(5).min(total.saturating_sub(t0.elapsed()))).await;
        let (rss, conns) = host_stats(&url).await?;
        samples.push(json!({"secs": t0.elapsed().as_secs(), "rss": rss, "connections": conns}));
        if baseline.is_none() && t0.elapsed() >= warmup {
            baseline = Some(rss);
        }
        println!(
            "soak: {:>4} s  host RSS {:.1} MiB  {} connections  {} sessions churned",
            t0.elapsed().as_secs(),
            mib(rss),
            conns,
            churned.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut runs, mut errors, mut first) = (0, 0, None);
    for s in streamers {
        let (r, e, f) = s.await?;
        runs += r;
        errors += e;
        if first.is_none() {
            first = f;
        }
    }
    for c in churners {
        c.await?;
    }
    let churn_errs = churn_errors.lock().unwrap().clone();
    let (end_rss, _) = host_stats(&url).await?;
    let base = baseline.unwrap_or(end_rss);
    let growth = (end_rss as f64 - base as f64) / base as f64 * 100.0;
    let ok = errors == 0 && churn_errs.is_empty() && growth <= a.max_growth_percent;
    println!(
        "soak: {runs} streamed runs, {} churned sessions, {} errors; host RSS after warm-up {:.1} MiB, at the end {:.1} MiB ({growth:+.1} %, limit {:+.1} %) — {}",
        churned.load(Ordering::Relaxed),
        errors + churn_errs.len() as u64,
        mib(base),
        mib(end_rss),
        a.max_growth_percent,
        if ok { "ok" } else { "FAILED" }
    );
    if let Some(e) = first.as_ref().or(churn_errs.first()) {
        println!(
            "soak: first error: {}",
            e.chars().take(300).collect::<String>()
        );
    }
    let result = json!({"scenario": "soak", "minutes": a.minutes, "streamed_runs": runs, "churned": churned.load(Ordering::Relaxed),
        "errors": errors + churn_errs.len() as u64, "rss_after_warmup": base, "rss_end": end_rss, "growth_percent": growth, "samples": samples, "ok": ok});
    if !ok {
        bail!("soak failed");
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// sweep

async fn sweep(a: &SweepArgs) -> Result<Value> {
    let mut points = Vec::new();
    for &n in &a.sessions {
        // A fresh stack per point.
        let stack = Stack::start()?;
        let (_host, url) = stack.host("weather_agent", &[])?;
        let r = stream(&StreamArgs {
            target: Target { url },
            sessions: n,
            sessions_per_connection: 1,
            tokens: a.tokens,
            token_ms: 20,
            ramp_ms: 1000,
        })
        .await?;
        points.push((
            n,
            r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p999"].as_f64().unwrap_or(0.0),
        ));
    }
    if let Some(parent) = a.svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.svg, svg_plot(&points))?;
    println!("sweep: plot written to {}", a.svg.display());
    for (n, p50, p99, p999) in &points {
        println!("sweep: {n:>5} sessions  p50 {p50:.2} ms  p99 {p99:.2} ms  p99.9 {p999:.2} ms");
    }
    Ok(
        json!({"scenario": "sweep", "points": points.iter().map(|(n, a, b, c)| json!({"sessions": n, "p50_ms": a, "p99_ms": b, "p999_ms": c})).collect::<Vec<_>>()}),
    )
}

/// A small line chart: latency percentiles (ms) against concurrent streaming sessions.
/// (sessions, p50, p99, p99.9)
type Point = (usize, f64, f64, f64);
/// (label, colour, which value)
type Series = (&'static str, &'static str, fn(&Point) -> f64);

fn svg_plot(points: &[Point]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 60.0, 50.0, 40.0, 130.0);
    let max_x = points.iter().map(|p| p.0).max().unwrap_or(1) as f64;
    let max_y = points.iter().map(|p| p.3.max(p.2)).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - bottom - top);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{tx}" y="22" font-size="13" text-anchor="middle">Host-added latency per token vs. concurrent sessions (50 tokens/s each)</text>
<line x1="{left}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="black"/><line x1="{left}" y1="{yb}" x2="{left}" y2="{top}" stroke="black"/>
<text x="{tx}" y="{xl}" text-anchor="middle">concurrent sessions</text>
<text x="16" y="{ym}" transform="rotate(-90 16 {ym})" text-anchor="middle">latency (ms)</text>
"##,
        tx = w / 2.0,
        yb = h - bottom,
        xr = w - right,
        xl = h - 12.0,
        ym = h / 2.0
    );
    for i in 0..=5 {
        let v = max_y * i as f64 / 5.0;
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!(
            "<line x1=\"{l}\" y1=\"{yy}\" x2=\"{r}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{t}\" y=\"{ty}\" text-anchor=\"end\">{v:.1}</text>\n",
            l = left, r = w - right, yy = y(v), t = left - 6.0, ty = y(v) + 4.0));
    }
    for (n, ..) in points {
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "<text x=\"{xx}\" y=\"{ty}\" text-anchor=\"middle\">{n}</text>\n",
                xx = x(*n as f64),
                ty = h - bottom + 16.0
            ),
        );
    }
    let series: [Series; 3] = [
        ("p50", "#2456d6", |p| p.1),
        ("p99", "#d67a24", |p| p.2),
        ("p99.9", "#c4302b", |p| p.3),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0 as f64), y(f(p))))
            .collect();
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            ),
        );
        for p in points {
            let _ = std::fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                    x(p.0 as f64),
                    y(f(p))
                ),
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!(
            "<line x1=\"{a}\" y1=\"{ly}\" x2=\"{b}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{c}\" y=\"{ty}\">{name}</text>\n",
            a = w - right + 15.0, b = w - right + 40.0, c = w - right + 46.0, ty = ly + 4.0));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn markers() {
        let mut h = super::hist();
        let n = super::record_markers("{\"content\":\"~100|~200|\"}", 1100, &mut h);
        assert_eq!(n, 2);
        assert_eq!(h.max(), 1000);
        assert_eq!(
            super::session_of("{\"session_id\":\"abc\",\"x\":1}"),
            Some("abc")
        );
    }
}
