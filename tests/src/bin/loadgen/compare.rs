//! `compare`: the host against the floor of our own stack (`myagent-floor`, a minimal relay
//! with the same libraries and protocol subset), one after the other on the same fake model,
//! same client, same machine; prints each and the ratio.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::suite::Stack;
use crate::{stream::stream, StreamArgs, Target};
use myagent_tests::{cpu_time_of, serving_port, Proc};

#[derive(clap::Args, Clone)]
pub(crate) struct CompareArgs {
    /// Sessions in the unpaced (throughput) run.
    #[arg(long, default_value_t = 300)]
    pub sessions: usize,
    /// Chunks per answer in the unpaced run.
    #[arg(long, default_value_t = 1000)]
    pub tokens: usize,
    /// Sessions in the paced (latency) run, 50 tokens/s each.
    #[arg(long, default_value_t = 1000)]
    pub paced_sessions: usize,
    /// Rounds (host then floor, floor then host, ...): the best of each is reported, the median
    /// of the rounds' ratios, and each paced round.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

/// Starts `myagent-floor` (next to this binary) on a free port; returns it and its URL.
fn floor(stack: &Stack) -> Result<(Proc, String)> {
    let mut cmd = std::process::Command::new(stack.dir.join("myagent-floor"));
    cmd.args(["--port", "0", "--base-url", &stack.llm.base_url()]);
    let proc = Proc::spawn(cmd);
    let line = proc.wait_line("Serving on", std::time::Duration::from_secs(10));
    let port = serving_port(&line).context("floor's port")?;
    Ok((proc, format!("ws://127.0.0.1:{port}")))
}

/// A number field of a result (0 if absent).
fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// Microseconds of CPU time per event delivered in a stream run.
fn per_event(cpu: std::time::Duration, run: &Value) -> f64 {
    cpu.as_secs_f64() * 1e6 / num(run, "events").max(1.0)
}

async fn run(url: String, sessions: usize, tokens: usize, token_ms: u64) -> Result<Value> {
    stream(&StreamArgs {
        target: Target { url },
        sessions,
        sessions_per_connection: 1,
        tokens,
        token_ms,
        ramp_ms: if token_ms == 0 { 200 } else { 1000 },
    })
    .await
}

pub(crate) async fn compare(a: &CompareArgs) -> Result<Value> {
    let stack = Stack::start()?;
    let (mut host_eps, mut floor_eps) = (0f64, 0f64);
    let mut runs = Vec::new();
    for round in 0..a.rounds.max(1) {
        // Which goes first alternates: the machine's speed drifts within a round too.
        let floor_first = round % 2 == 1;
        let (mut h, mut f) = (None, None);
        for floor_turn in [floor_first, !floor_first] {
            if floor_turn {
                let (floor_proc, furl) = floor(&stack)?;
                let cpu0 = cpu_time_of(floor_proc.pid());
                let r = run(furl, a.sessions, a.tokens, 0).await?;
                f = Some((per_event(cpu_time_of(floor_proc.pid()) - cpu0, &r), r));
            } else {
                let (host, url) = stack.host("weather_agent", &["--answer-holdback", "0"])?;
                let cpu0 = host.cpu_time();
                let r = run(url, a.sessions, a.tokens, 0).await?;
                h = Some((per_event(host.cpu_time() - cpu0, &r), r));
            }
        }
        let ((h_cpu, h), (f_cpu, f)) = (h.context("host run")?, f.context("floor run")?);
        host_eps = host_eps.max(num(&h, "events_per_sec"));
        floor_eps = floor_eps.max(num(&f, "events_per_sec"));
        let ratio = num(&h, "events_per_sec") / num(&f, "events_per_sec").max(f64::MIN_POSITIVE);
        runs.push(
            json!({"round": round, "host": h, "floor": f, "ratio": ratio,
            "floor_first": floor_first,
            "host_cpu_us_per_event": h_cpu, "floor_cpu_us_per_event": f_cpu}),
        );
    }
    let mut round_ratios: Vec<f64> = runs.iter().map(|r| num(r, "ratio")).collect();
    round_ratios.sort_by(f64::total_cmp);
    let round_ratio = round_ratios[round_ratios.len() / 2];
    // The server's own CPU time per event (user and kernel, from /proc): what throughput
    // measures when the machine is quiet, without the neighbours' noise in it.
    let mut cpu_ratios: Vec<f64> = runs
        .iter()
        .map(|r| {
            let n = |k: &str| num(r, k);
            n("floor_cpu_us_per_event") / n("host_cpu_us_per_event").max(f64::MIN_POSITIVE)
        })
        .collect();
    cpu_ratios.sort_by(f64::total_cmp);
    let cpu_ratio = cpu_ratios[cpu_ratios.len() / 2];
    // Paced: alternate too, each run on a fresh process after a pause (the unpaced runs leave
    // the machine busy for a moment: reclaimed memory, closing connections). Each run also
    // reports the CPU time the server process used, which is what decides whether host, model
    // stand-in and client together still fit on the machine's cores.
    let p99 = |v: &Value| v["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
    let mut paced = Vec::new();
    for round in 0..a.rounds.max(1) {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let (host, url) = stack.host("weather_agent", &["--answer-holdback", "0"])?;
        let cpu0 = host.cpu_time();
        let h = run(url, a.paced_sessions, 250, 20).await?;
        let h_cpu = (host.cpu_time() - cpu0).as_secs_f64();
        drop(host);
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let (floor_proc, furl) = floor(&stack)?;
        let cpu0 = cpu_time_of(floor_proc.pid());
        let f = run(furl, a.paced_sessions, 250, 20).await?;
        let f_cpu = (cpu_time_of(floor_proc.pid()) - cpu0).as_secs_f64();
        drop(floor_proc);
        paced.push(
            json!({"round": round, "host_p99_ms": p99(&h), "floor_p99_ms": p99(&f),
            "host_cpu_s": h_cpu, "floor_cpu_s": f_cpu, "host": h, "floor": f}),
        );
    }
    let ratio = if floor_eps > 0.0 {
        host_eps / floor_eps
    } else {
        0.0
    };
    println!(
        "\ncompare: {} sessions × {} chunks unpaced, best of {} rounds",
        a.sessions, a.tokens, a.rounds
    );
    println!("  host  {host_eps:>9.0} events/s");
    println!("  floor {floor_eps:>9.0} events/s");
    println!("  host / floor = {ratio:.2}  (target ≥ 0.85)");
    for r in &runs {
        let n = |k: &str| num(r, k);
        println!(
            "  round {} ({} first): host/floor {:.2}; CPU per event host {:.2} µs, floor {:.2} µs",
            r["round"],
            if r["floor_first"] == true {
                "floor"
            } else {
                "host"
            },
            n("ratio"),
            n("host_cpu_us_per_event"),
            n("floor_cpu_us_per_event")
        );
    }
    println!("  host / floor per round, median = {round_ratio:.2}");
    println!("  floor CPU / host CPU per event = {cpu_ratio:.2} (median of rounds)");
    println!(
        "compare: {} sessions × 50 tokens/s (250 chunks each), p99 host-added latency and the server's CPU time per round:",
        a.paced_sessions
    );
    for r in &paced {
        let n = |k: &str| num(r, k);
        println!(
            "  round {}: host {:>8.2} ms ({:.2} s CPU)   floor {:>8.2} ms ({:.2} s CPU)",
            r["round"],
            n("host_p99_ms"),
            n("host_cpu_s"),
            n("floor_p99_ms"),
            n("floor_cpu_s")
        );
    }
    let best = |k: &str| {
        paced
            .iter()
            .map(|r| r[k].as_f64().unwrap_or(f64::MAX))
            .fold(f64::MAX, f64::min)
    };
    let (hp, fp) = (best("host_p99_ms"), best("floor_p99_ms"));
    println!(
        "  best of {}: p99 host {hp:.2} ms, floor {fp:.2} ms, difference {:+.2} ms (target: within 1 ms)",
        a.rounds,
        hp - fp
    );
    Ok(json!({
        "host_events_per_sec": host_eps, "floor_events_per_sec": floor_eps, "ratio": ratio,
        "round_ratio": round_ratio,
        "cpu_ratio": cpu_ratio,
        "paced": {"sessions": a.paced_sessions, "host_p99_ms": hp, "floor_p99_ms": fp, "rounds": paced},
        "runs": runs,
    }))
}
