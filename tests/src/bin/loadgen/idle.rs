//! `idle`: open N connections and hold them; server RSS per connection, connect rate.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::client::*;
use crate::*;

pub(crate) async fn idle(a: &IdleArgs) -> Result<Value> {
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
