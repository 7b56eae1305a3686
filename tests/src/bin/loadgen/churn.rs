//! `churn`: connect, create a session, one short conversation, close, in a loop.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::*;
use crate::*;

pub(crate) async fn churn_one(url: &str) -> Result<()> {
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

pub(crate) async fn churn_batch(
    url: &str,
    n: usize,
    concurrency: usize,
) -> (usize, usize, Option<String>) {
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

pub(crate) async fn churn(a: &ChurnArgs) -> Result<Value> {
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
