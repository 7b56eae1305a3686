//! `myagent-floor`: the floor of our own stack, for `myagent-loadgen compare` — the least a
//! server can do to relay a streamed model answer to WebSocket clients with the same libraries
//! (tokio-tungstenite, reqwest, serde_json) and the same protocol subset: `system.connected`,
//! `user.create_session` → `agent.session_created`, `user.message` → one `agent.partial_answer`
//! per model token (with `session_id`, `seq`, `timestamp`, as the host sends them), written as
//! the host writes them (coalesced while more of the model's stream is ready), then
//! `agent.final_answer` and `agent.ready`. No agent loop, no tools, no replay buffer, no limits:
//! a benchmark reference, not a server. `/metrics` reports RSS and
//! connections as the host does, so the load generator measures both alike.
//!
//!   myagent-floor --port 0 --base-url http://127.0.0.1:PORT/v1

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use myagent_host::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// The model server (OpenAI-compatible), e.g. fake-llm's.
    #[arg(long)]
    base_url: String,
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Serialize)]
struct Partial<'a> {
    event: &'static str,
    content: &'a str,
    metadata: Step,
    session_id: &'a str,
    seq: u64,
    timestamp: Timestamp,
}

#[derive(Serialize)]
struct Step {
    step: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
        println!("Serving on ws://{}", listener.local_addr()?);
        let model = Arc::new(Model {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()?,
            url: format!("{}/chat/completions", args.base_url.trim_end_matches('/')),
        });
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, model.clone()));
        }
    })
}

struct Model {
    http: reqwest::Client,
    url: String,
}

/// `/metrics` for the load generator, or a WebSocket connection.
async fn serve(mut stream: TcpStream, model: Arc<Model>) {
    let mut head = [0u8; 1024];
    let n = stream.peek(&mut head).await.unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    if head.starts_with("GET /metrics") {
        let body = format!(
            "process_resident_memory_bytes {}\nmyagent_connections {}\n",
            rss(),
            CONNECTIONS.load(Ordering::Relaxed)
        );
        let resp = format!(
            "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // Take the request off the socket first (closing with unread bytes resets it).
        let mut sink = vec![0u8; n];
        let _ = stream.read_exact(&mut sink).await;
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut source) = ws.split();
    // One writer per connection: each batch (a model read's tokens) is fed, then flushed once.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<String>>();
    let writer = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for frame in batch {
                if sink.feed(Message::text(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let hello = json!({"event": "system.connected", "connection_id": NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string(), "timestamp": Timestamp::now()});
    let _ = tx.send(vec![hello.to_string()]);
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match v["event"].as_str() {
            Some("user.create_session") => {
                let id = format!("floor-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
                let created = json!({"event": "agent.session_created", "session_id": id, "seq": 1, "timestamp": Timestamp::now()});
                let _ = tx.send(vec![created.to_string()]);
            }
            Some("user.message") => {
                let session = v["session_id"].as_str().unwrap_or("").to_owned();
                let content = v["content"].as_str().unwrap_or("").to_owned();
                tokio::spawn(relay(model.clone(), tx.clone(), session, content));
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
    CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
}

/// A chunk as the floor reads it: only the text of the first choice, borrowed from the line
/// (as the host's parser does: no `Value` tree).
#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChoiceIn<'a>>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// One `agent.partial_answer` frame, serialised directly (the host's bytes: event, content,
/// metadata, session_id, seq, timestamp).
fn partial(session: &str, seq: u64, text: &str) -> String {
    serde_json::to_string(&Partial {
        event: "agent.partial_answer",
        content: text,
        metadata: Step { step: 1 },
        session_id: session,
        seq,
        timestamp: Timestamp::now(),
    })
    .unwrap_or_default()
}

/// Streams one answer from the model to the client: a frame per token, a batch per read.
/// Lines are parsed in place; only a line split across reads is copied.
async fn relay(
    model: Arc<Model>,
    tx: mpsc::UnboundedSender<Vec<String>>,
    session: String,
    content: String,
) {
    let body = json!({"model": "floor", "stream": true, "messages": [{"role": "user", "content": content}]});
    let mut seq = 1u64;
    let mut answer = String::new();
    let mut partial_line: Vec<u8> = Vec::new();
    let mut done = false;
    // A data line's text, if it carries some: Some(None) at `[DONE]`.
    let text_of = |line: &[u8]| -> Option<Option<String>> {
        let data = line.strip_prefix(b"data: ")?;
        if data == b"[DONE]" {
            return Some(None);
        }
        let chunk: ChunkIn<'_> = serde_json::from_slice(data).ok()?;
        let text = chunk.choices.into_iter().next()?.delta?.content?;
        (!text.is_empty()).then(|| Some(text.into_owned()))
    };
    if let Ok(resp) = model.http.post(&model.url).json(&body).send().await {
        let mut bytes = resp.bytes_stream();
        // Writes coalesced as the host's are (`llm/http.rs`): while the next chunk is ready
        // (after one yield to the HTTP client's connection task), up to 16 chunks a batch.
        let mut batch = Vec::new();
        let mut chunks = 0;
        loop {
            let mut ready = bytes.next().now_or_never();
            if ready.is_none() && chunks > 0 && chunks < 16 {
                tokio::task::yield_now().await;
                ready = bytes.next().now_or_never();
            }
            if ready.is_none() || chunks >= 16 {
                if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).is_err() {
                    return;
                }
                chunks = 0;
            }
            let next = match ready {
                Some(next) => next,
                None => bytes.next().await,
            };
            let Some(Ok(chunk)) = next else { break };
            chunks += 1;
            let mut rest: &[u8] = &chunk;
            while let Some(i) = memchr::memchr(b'\n', rest) {
                let (line, tail) = rest.split_at(i);
                rest = &tail[1..];
                let got = if partial_line.is_empty() {
                    text_of(line)
                } else {
                    partial_line.extend_from_slice(line);
                    let whole = std::mem::take(&mut partial_line);
                    text_of(&whole)
                };
                match got {
                    Some(Some(text)) => {
                        seq += 1;
                        batch.push(partial(&session, seq, &text));
                        answer.push_str(&text);
                    }
                    Some(None) => {
                        done = true;
                        break;
                    }
                    None => {}
                }
            }
            partial_line.extend_from_slice(rest);
            if done {
                break;
            }
        }
        if !batch.is_empty() && tx.send(batch).is_err() {
            return;
        }
    }
    let fin = json!({"event": "agent.final_answer", "content": answer, "metadata": {"steps": 1, "reason": "answer"}, "session_id": session, "seq": seq + 1, "timestamp": Timestamp::now()});
    let ready = json!({"event": "agent.ready", "session_id": session, "seq": seq + 2, "timestamp": Timestamp::now()});
    let _ = tx.send(vec![fin.to_string(), ready.to_string()]);
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
