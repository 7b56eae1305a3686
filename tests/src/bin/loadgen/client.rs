//! The load generator's WebSocket and HTTP client side: connect, open a session, read the
//! host's memory and connection count from `/metrics`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

pub(crate) fn ws_config() -> WebSocketConfig {
    // Small buffers: the load generator holds as many connections as the host.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

pub(crate) async fn connect(url: &str) -> Result<Ws> {
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
pub(crate) async fn open_session(ws: &mut Ws) -> Option<String> {
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

pub(crate) fn http_base(ws_url: &str) -> String {
    let rest = ws_url
        .strip_prefix("ws://")
        .unwrap_or(ws_url)
        .trim_end_matches('/');
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport.to_owned()
}

pub(crate) async fn http_get(ws_url: &str, path: &str) -> Result<String> {
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
pub(crate) async fn host_stats(url: &str) -> Result<(u64, u64)> {
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

pub(crate) fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
