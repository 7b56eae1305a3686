//! `agui`: N AG-UI runs at once over `POST {url}` (our `/agui`, or any AG-UI server — the
//! benchmark puts a pydantic-ai `AGUIAdapter` server beside ours), each asking fake-llm for
//! `bench:TOKENS@MS`; events/s (SSE `data:` frames), answer deltas/s, time to first delta,
//! errors. The same numbers as `stream` gives for the WebSocket.

use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stream::hist;

#[derive(clap::Args, Clone)]
pub(crate) struct AguiArgs {
    /// The AG-UI endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/agui")]
    url: String,
    /// Runs at once (each on its own thread).
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Chunks per answer.
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Milliseconds between chunks (0: as fast as fake-llm sends them).
    #[arg(long, default_value_t = 0)]
    token_ms: u64,
    /// What the report calls this endpoint.
    #[arg(long, default_value = "agui")]
    label: String,
}

#[derive(Default)]
struct RunStats {
    events: u64,
    deltas: u64,
    finished: bool,
    error: Option<String>,
    first_delta: Option<Duration>,
}

/// One run: POST, then read the stream to its end.
async fn one(client: reqwest::Client, url: String, content: String, thread: String) -> RunStats {
    let mut st = RunStats::default();
    let body = json!({"threadId": thread, "runId": "r1", "state": {}, "tools": [], "context": [],
        "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": content}]});
    let t0 = Instant::now();
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_string())
        .send()
        .await;
    let mut resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            st.error = Some(format!("HTTP {}", r.status()));
            return st;
        }
        Err(e) => {
            st.error = Some(e.to_string());
            return st;
        }
    };
    // Frames are read in place from a byte buffer compacted once per chunk (the WebSocket
    // client, too, looks at each frame without a JSON parse): the load generator shares the
    // machine with the host, so its own cost per event must not favour one door.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) => break,
            Err(e) => {
                st.error = Some(e.to_string());
                break;
            }
        }
        let mut start = 0;
        while let Some(i) = find(&buf[start..], b"\n\n") {
            let block = &buf[start..start + i + 2];
            start += i + 2;
            if find(block, b"data:").is_none() {
                continue;
            }
            st.events += 1;
            if find(block, b"\"TEXT_MESSAGE_CONTENT\"").is_some() {
                st.deltas += 1;
                st.first_delta.get_or_insert_with(|| t0.elapsed());
            } else if find(block, b"\"RUN_FINISHED\"").is_some() {
                st.finished = true;
            } else if find(block, b"\"RUN_ERROR\"").is_some() {
                st.error
                    .get_or_insert_with(|| String::from_utf8_lossy(block).into_owned());
            }
        }
        buf.drain(..start);
    }
    if !st.finished && st.error.is_none() {
        st.error = Some("the stream ended without RUN_FINISHED".into());
    }
    st
}

pub(crate) async fn agui(a: &AguiArgs) -> Result<Value> {
    let content = format!("bench:{}@{}", a.tokens, a.token_ms);
    println!(
        "{}: {} runs at once over {}, {} chunks each every {} ms",
        a.label, a.runs, a.url, a.tokens, a.token_ms
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.runs)
        .build()?;
    let t0 = Instant::now();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tasks: Vec<_> = (0..a.runs)
        .map(|i| {
            let thread = format!("bench-{stamp}-{i}");
            tokio::spawn(one(client.clone(), a.url.clone(), content.clone(), thread))
        })
        .collect();
    let (mut events, mut deltas, mut done, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut ttfd: Histogram<u64> = hist();
    for t in tasks {
        let st = t.await?;
        events += st.events;
        deltas += st.deltas;
        done += u64::from(st.finished);
        if let Some(e) = st.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
        if let Some(d) = st.first_delta {
            ttfd.saturating_record(d.as_micros().max(1) as u64);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let ms = |q: f64| ttfd.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {done}/{} runs finished in {secs:.2} s: {:.0} events/s, {:.0} answer deltas/s; first delta p50 {:.1} ms, p99 {:.1} ms; {errors} errors{}",
        a.runs,
        events as f64 / secs,
        deltas as f64 / secs,
        ms(0.5),
        ms(0.99),
        first_error.map(|e| format!(" (first: {})", e.chars().take(200).collect::<String>())).unwrap_or_default()
    );
    Ok(
        json!({"label": a.label, "runs": a.runs, "finished": done, "seconds": secs,
        "events_per_sec": events as f64 / secs, "deltas_per_sec": deltas as f64 / secs,
        "first_delta_p50_ms": ms(0.5), "first_delta_p99_ms": ms(0.99), "errors": errors}),
    )
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}
