//! `soak` (stream + churn for minutes, RSS sampled) and `sweep` (latency against sessions).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::churn::*;
use crate::client::*;
use crate::plot::*;
use crate::stream::*;
use crate::suite::*;
use crate::*;

pub(crate) async fn soak_streamer(
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

pub(crate) async fn soak(a: &SoakArgs) -> Result<Value> {
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
