//! `soak` (stream + churn for minutes, RSS sampled) and `sweep` (latency against sessions).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::churn::*;
use crate::client::*;
use crate::plot::*;
use crate::stream::*;
use crate::suite::*;
use crate::*;

/// What the soak's clients have done so far.
#[derive(Default)]
pub(crate) struct Counters {
    runs: AtomicU64,
    churned: AtomicU64,
}

pub(crate) async fn soak_streamer(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    counters: Arc<Counters>,
) -> (u64, Option<String>) {
    let (mut errors, mut first) = (0u64, None);
    let mut fail = |e: String| {
        errors += 1;
        first.get_or_insert(e);
    };
    let Ok(mut ws) = connect(&url).await else {
        fail("connect failed".into());
        return (errors, first);
    };
    let Some(sid) = open_session(&mut ws).await else {
        fail("create_session got no agent.session_created".into());
        return (errors, first);
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
                        counters.runs.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                other => {
                    fail(format!("stream ended: {other:?}"));
                    return (errors, first);
                }
            }
        }
    }
    let _ = ws.close(None).await;
    (errors, first)
}

/// The host hands freed memory back every 30 s (`server::return_freed_memory`), so RSS between
/// two hand-backs includes what was freed since. The low point of 35 s of samples comes just
/// after a hand-back: the soak compares the low points of the measured minutes' first and last
/// 35 s — like with like, whatever the phase.
const LOW_POINT_WINDOW: Duration = Duration::from_secs(35);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The warm-up lasts at least this long, whatever the counts.
const MIN_WARMUP: Duration = Duration::from_secs(60);

pub(crate) async fn soak(a: &SoakArgs) -> Result<Value> {
    let measured = Duration::from_secs_f64(a.minutes * 60.0);
    if measured < 2 * LOW_POINT_WINDOW {
        bail!(
            "--minutes {} is too short to judge: the low points of the first and the last {} s are compared (at least {:.2} minutes)",
            a.minutes,
            LOW_POINT_WINDOW.as_secs(),
            (2 * LOW_POINT_WINDOW).as_secs_f64() / 60.0
        );
    }
    // Per-session history and replay buffers grow to their caps and stay there; smaller caps
    // than the defaults reach that steady state within the warm-up even in a short soak.
    let stack = Stack::start()?;
    let (_host, url) = stack.host(
        "weather_agent",
        &["--replay-buffer-bytes", "32768", "--memory-budget", "6000"],
    )?;
    println!(
        "soak: {} streaming sessions + {} churning clients against {url}; warm-up until {} runs a stream and {} churned sessions, then {:.1} min measured",
        a.streams, a.churners, a.warmup_runs, a.warmup_churned, a.minutes
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut streamers = Vec::new();
    for _ in 0..a.streams {
        streamers.push(tokio::spawn(soak_streamer(
            url.clone(),
            stop.clone(),
            counters.clone(),
        )));
    }
    let churn_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut churners = Vec::new();
    for _ in 0..a.churners {
        let (url, stop, counters, errs) = (
            url.clone(),
            stop.clone(),
            counters.clone(),
            churn_errors.clone(),
        );
        churners.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(30), churn_one(&url)).await {
                    Ok(Ok(())) => {
                        counters.churned.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => errs.lock().unwrap().push(e.to_string()),
                    Err(_) => errs.lock().unwrap().push("churn timed out".into()),
                }
            }
        }));
    }
    let sampled = sample(a, &url, &counters).await;
    stop.store(true, Ordering::Relaxed);
    let (mut errors, mut first) = (0, None);
    for s in streamers {
        let (e, f) = s.await?;
        errors += e;
        if first.is_none() {
            first = f;
        }
    }
    for c in churners {
        c.await?;
    }
    let sampled = sampled?;
    let churn_errs = churn_errors.lock().unwrap().clone();
    let (runs, churned) = (
        counters.runs.load(Ordering::Relaxed),
        counters.churned.load(Ordering::Relaxed),
    );
    let (base, end) = (sampled.first_low, sampled.last_low);
    let growth = (end as f64 - base as f64) / base as f64 * 100.0;
    let ok = errors == 0 && churn_errs.is_empty() && growth <= a.max_growth_percent;
    println!(
        "soak: {runs} streamed runs, {churned} churned sessions, {} errors; host RSS low point after the warm-up {:.1} MiB, at the end {:.1} MiB ({growth:+.1} %, limit {:+.1} %) — {}",
        errors + churn_errs.len() as u64,
        mib(base),
        mib(end),
        a.max_growth_percent,
        if ok { "ok" } else { "FAILED" }
    );
    if let Some(e) = first.as_ref().or(churn_errs.first()) {
        println!(
            "soak: first error: {}",
            e.chars().take(300).collect::<String>()
        );
    }
    let result = json!({"scenario": "soak", "minutes": a.minutes, "streamed_runs": runs, "churned": churned,
        "errors": errors + churn_errs.len() as u64, "warmup_secs": sampled.warmup.as_secs(), "warmup_by_counts": sampled.by_counts,
        "rss_after_warmup": base, "rss_end": end, "growth_percent": growth, "samples": sampled.samples, "ok": ok});
    if !ok {
        bail!("soak failed");
    }
    Ok(result)
}

/// The samples of a soak, and the low points it is judged by.
struct Sampled {
    samples: Vec<Value>,
    /// When the warm-up ended, and whether its counts were reached (or its time ran out).
    warmup: Duration,
    by_counts: bool,
    first_low: u64,
    last_low: u64,
}

/// Samples host RSS every 5 s through the warm-up and the measured minutes.
async fn sample(a: &SoakArgs, url: &str, c: &Counters) -> Result<Sampled> {
    let measured = Duration::from_secs_f64(a.minutes * 60.0);
    let max_warmup = Duration::from_secs_f64(a.max_warmup_minutes * 60.0);
    let t0 = Instant::now();
    let mut warm: Option<(Duration, bool)> = None;
    let (mut samples, mut after) = (Vec::new(), Vec::new());
    loop {
        let left = warm.map(|(w, _)| (w + measured).saturating_sub(t0.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            break;
        }
        tokio::time::sleep(left.map_or(SAMPLE_EVERY, |l| l.min(SAMPLE_EVERY))).await;
        let (rss, conns) = host_stats(url).await?;
        let t = t0.elapsed();
        let (runs, churned) = (
            c.runs.load(Ordering::Relaxed),
            c.churned.load(Ordering::Relaxed),
        );
        samples.push(json!({"secs": t.as_secs(), "rss": rss, "connections": conns, "runs": runs, "churned": churned}));
        println!(
            "soak: {:>4} s  host RSS {:.1} MiB  {conns} connections  {runs} runs  {churned} sessions churned",
            t.as_secs(),
            mib(rss),
        );
        match warm {
            Some((w, _)) => after.push((t - w, rss)),
            None => {
                let counted =
                    runs >= a.warmup_runs * a.streams as u64 && churned >= a.warmup_churned;
                if (counted && t >= MIN_WARMUP) || t >= max_warmup {
                    warm = Some((t, counted));
                    println!(
                        "soak: warm-up over at {} s{}; measuring {:.1} min",
                        t.as_secs(),
                        if counted {
                            ""
                        } else {
                            " (--max-warmup-minutes: the counts were not reached)"
                        },
                        a.minutes
                    );
                }
            }
        }
    }
    let low = |from: Duration, to: Duration| {
        after
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|&(_, rss)| rss)
            .min()
            .context("no samples in a low-point window")
    };
    let (warmup, by_counts) = warm.unwrap_or_default();
    Ok(Sampled {
        first_low: low(Duration::ZERO, LOW_POINT_WINDOW)?,
        last_low: low(
            measured.saturating_sub(LOW_POINT_WINDOW),
            measured + SAMPLE_EVERY,
        )?,
        samples,
        warmup,
        by_counts,
    })
}

pub(crate) async fn sweep(a: &SweepArgs) -> Result<Value> {
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
