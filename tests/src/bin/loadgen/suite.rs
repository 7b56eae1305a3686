//! `suite`: fake-llm and fresh hosts (release binaries beside this one, started with the shared
//! test harness) for each scenario, then a table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::churn::*;
use crate::idle::*;
use crate::stream::*;
use crate::*;
use myagent_tests::{FakeLlm, Host};

/// fake-llm and fresh hosts, from the release binaries beside this executable, started with
/// the shared test harness (`myagent_tests`): killed and cleaned up on drop.
pub(crate) struct Stack {
    pub(crate) dir: PathBuf,
    pub(crate) llm: FakeLlm,
    /// Passed to every host (the suite's `--host-arg`).
    pub(crate) host_args: Vec<String>,
}

impl Stack {
    pub(crate) fn start() -> Result<Stack> {
        let dir = std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_owned();
        let llm = FakeLlm::start_at(&dir.join("fake-llm"), &["--port", "0"]);
        Ok(Stack {
            dir,
            llm,
            host_args: Vec::new(),
        })
    }

    /// A fresh host serving `lib{plugin}.so`; returns it and its WebSocket URL.
    pub(crate) fn host(&self, plugin: &str, extra: &[&str]) -> Result<(Host, String)> {
        let mut args = vec![
            "--max-connections",
            "19500",
            "--no-watch",
            "--resume-window",
            "5",
            "--llm-first-token-timeout",
            "60",
            "--llm-idle-timeout",
            "60",
            // Every load-generator client comes from 127.0.0.1: the stored-session cap per
            // address would stop a long run (the per-session limits stay on).
            "--max-stored-sessions-per-ip",
            "0",
        ];
        args.extend_from_slice(extra);
        args.extend(self.host_args.iter().map(String::as_str));
        let host = Host::launch(
            &self.dir.join("myagent-host"),
            &self.dir.join(format!("lib{plugin}.so")),
            &self.llm,
            &args,
            &[],
            "warn,myagent_host=info",
        );
        let url = host.ws_url();
        Ok((host, url))
    }
}

pub(crate) async fn suite(a: &SuiteArgs) -> Result<Value> {
    let mut stack = Stack::start()?;
    stack.host_args = a.host_args.clone();
    let s = a.short;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut results = Vec::new();

    // Each scenario gets a fresh host, so that one's memory does not colour the next. They
    // measure the event path, so the answer hold-back (which delays the first answer characters
    // on purpose, docs/protocol.md) is off; one scenario measures it on its own.
    const NO_HOLDBACK: &[&str] = &["--answer-holdback", "0"];
    let weather = || stack.host("weather_agent", NO_HOLDBACK);
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
    // The paced streaming load, run twice: without and with the default answer hold-back.
    let sessions = if s { 200 } else { 1_000 };
    let paced = |url| StreamArgs {
        target: Target { url },
        sessions,
        sessions_per_connection: 1,
        tokens: if s { 100 } else { 250 },
        token_ms: 20,
        ramp_ms: 1000,
    };
    {
        let (_host, url) = weather()?;
        let r = stream(&paced(url)).await?;
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
        // The same load with the default hold-back: what it costs the first answer token.
        let (_host, url) = stack.host("weather_agent", &[])?;
        let mut r = stream(&paced(url)).await?;
        rows.push((
            "stream, default answer hold-back: first token p99 / latency p99".into(),
            format!(
                "{:.1} / {:.1} ms",
                r["first_event_ms"]["p99"].as_f64().unwrap_or(0.0),
                r["latency_ms"]["p99"].as_f64().unwrap_or(0.0)
            ),
            "+ time to write 80 chars".into(),
        ));
        r["scenario"] = "stream_default_holdback".into();
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
        let (_host, url) = stack.host("testkit_agent", NO_HOLDBACK)?;
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
