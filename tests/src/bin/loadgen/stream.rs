//! `stream` and `tools`: sessions streaming answers at a set token rate; events/s, host-added
//! latency per event, time to first event, errors — optionally beside sessions whose tools
//! block a thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::*;
use crate::*;

#[derive(Default)]
pub(crate) struct StreamStats {
    latency: Option<Histogram<u64>>,
    ttfe: Option<Histogram<u64>>,
    /// From a session's `agent.final_answer` to its `agent.ready`: what the acknowledgement
    /// (the store's commit) adds.
    ack: Option<Histogram<u64>>,
    events: u64,
    finals: u64,
    readies: u64,
    errors: u64,
    first_error: Option<String>,
}

pub(crate) fn hist() -> Histogram<u64> {
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
        self.ack
            .get_or_insert_with(hist)
            .add(o.ack.unwrap_or_else(hist))
            .ok();
        self.events += o.events;
        self.finals += o.finals;
        self.readies += o.readies;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Records the latency of every `~<micros>|` marker in an event's text.
pub(crate) fn record_markers(text: &str, now: u64, h: &mut Histogram<u64>) -> usize {
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
pub(crate) async fn stream_connection(
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
        ack: Some(hist()),
        ..Default::default()
    };
    let mut final_at: std::collections::HashMap<String, Instant> = Default::default();
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
    while st.readies + st.errors < total as u64 {
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
            if let Some(sid) = session_of(text) {
                final_at.insert(sid.to_owned(), Instant::now());
            }
        } else if text.contains("\"agent.ready\"") {
            st.readies += 1;
            if let Some(at) = session_of(text).and_then(|sid| final_at.remove(sid)) {
                st.ack
                    .as_mut()
                    .unwrap()
                    .saturating_record(at.elapsed().as_micros().max(1) as u64);
            }
        } else if text.contains("\"agent.error\"") {
            fail(&mut st, text.to_owned());
        }
    }
    let _ = ws.close(None).await;
    st
}

pub(crate) fn session_of(text: &str) -> Option<&str> {
    let i = text.find("\"session_id\":\"")? + 14;
    let rest = &text[i..];
    Some(&rest[..rest.find('"')?])
}

pub(crate) async fn stream(a: &StreamArgs) -> Result<Value> {
    let r = stream_run(a, "stream", 0, 0).await?;
    Ok(r)
}

/// Runs the stream scenario; with `blockers > 0`, that many extra sessions loop on a blocking
/// tool call (`call:sleep`) during it.
pub(crate) async fn stream_run(
    a: &StreamArgs,
    label: &str,
    blockers: usize,
    block_ms: u64,
) -> Result<Value> {
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
    let ack = total.ack.unwrap_or_else(hist);
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
    println!(
        "{label}: agent.final_answer → agent.ready (the acknowledgement, n={}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ack.len(),
        ms(&ack, 0.5),
        ms(&ack, 0.99),
        ack.max() as f64 / 1000.0
    );
    Ok(json!({
        "scenario": label, "sessions": a.sessions, "sessions_per_connection": per, "tokens": a.tokens, "token_ms": a.token_ms,
        "final_answers": total.finals, "errors": total.errors, "first_error": total.first_error,
        "secs": took.as_secs_f64(), "events": total.events, "events_per_sec": eps,
        "latency_ms": {"n": lat.len(), "p50": ms(&lat, 0.5), "p99": ms(&lat, 0.99), "p999": ms(&lat, 0.999), "max": lat.max() as f64 / 1000.0},
        "first_event_ms": {"p50": ms(&ttfe, 0.5), "p99": ms(&ttfe, 0.99)},
        "ack_ms": {"n": ack.len(), "p50": ms(&ack, 0.5), "p99": ms(&ack, 0.99), "max": ack.max() as f64 / 1000.0},
        "host_rss_before": rss0, "host_rss_after": rss1,
        "blockers": blockers, "blocking_calls": blocker_calls.load(Ordering::Relaxed),
    }))
}

pub(crate) async fn tools(a: &ToolsArgs) -> Result<Value> {
    let without = stream_run(&a.stream, "tools (baseline)", 0, 0).await?;
    let with = stream_run(&a.stream, "tools (blocking)", a.blockers, a.block_ms).await?;
    Ok(json!({"scenario": "tools", "without_blocking": without, "with_blocking": with}))
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
