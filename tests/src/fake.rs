//! The scriptable OpenAI-compatible server behind the `fake-llm` binary.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

mod auto;
pub use auto::auto_step;

/// The text of every message with `role` in a chat request the fake model received, in order.
pub fn texts_of(request: &Value, role: &str) -> Vec<String> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == role)
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect()
}

/// Server-wide options.
#[derive(Clone, Default)]
pub struct Options {
    /// Pause between streamed chunks unless a step says otherwise.
    pub token_delay_ms: u64,
}

/// One scripted answer (or failure). Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Step {
    /// Answer text, streamed in `chunk_chars` pieces.
    pub text: String,
    /// Reasoning streamed before the text as `reasoning_content` (as DeepSeek does).
    pub reasoning: String,
    /// Tool calls; `arguments` is sent as is (it may be invalid JSON on purpose).
    pub tool_calls: Vec<ScriptCall>,
    /// Answer with this HTTP status and `body` instead of a stream.
    pub status: Option<u16>,
    pub body: Option<String>,
    /// Extra response headers (e.g. `retry-after`).
    pub headers: Vec<(String, String)>,
    /// Characters per chunk for text and tool arguments (default 4).
    pub chunk_chars: Option<usize>,
    pub delay_ms: Option<u64>,
    /// Wait this long before the response head.
    pub delay_head_ms: u64,
    /// After this many chunks: stall (`stall_ms`), send an error object, garbage, or reset.
    pub after_chunks: Option<usize>,
    pub stall_ms: Option<u64>,
    pub error_message: Option<String>,
    pub garbage: bool,
    pub reset: bool,
    /// Answer with one `chat.completion` JSON object instead of a stream.
    pub non_streaming: bool,
    /// Send this SSE body as is (a provider's stream shape, from `tests/fixtures/providers/`),
    /// one event (up to a blank line) per write, `delay_ms` apart.
    pub raw_sse: Option<String>,
    /// The `usage` object to report (default: 10 prompt tokens a message, a completion token
    /// per 4 characters of text).
    pub usage: Option<Value>,
    /// Report no usage at all (as some providers do).
    pub no_usage: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ScriptCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Default)]
struct State {
    script: VecDeque<Step>,
    requests: Vec<Value>,
    /// Each chat request's `traceparent` header (null without one), in order.
    traceparents: Vec<Value>,
}

type Body = BoxBody<Bytes, std::io::Error>;

pub async fn serve(listener: tokio::net::TcpListener, opts: Options) {
    let state = Arc::new(Mutex::new(State::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, opts) = (state.clone(), opts.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(req, state.clone(), opts.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    opts: Options,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map_or(Value::Null, |v| Value::String(v.to_owned()));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let resp = match (method.as_str(), path.as_str()) {
        ("POST", "/_control/script") => match serde_json::from_slice::<Vec<Step>>(&body) {
            Ok(steps) => {
                state.lock().unwrap().script.extend(steps);
                full(StatusCode::OK, "{}".into())
            }
            Err(e) => full(StatusCode::BAD_REQUEST, format!("bad script: {e}")),
        },
        ("POST", "/_control/reset") => {
            *state.lock().unwrap() = State::default();
            full(StatusCode::OK, "{}".into())
        }
        ("GET", "/_control/requests") => {
            let reqs = state.lock().unwrap().requests.clone();
            full(StatusCode::OK, Value::Array(reqs).to_string())
        }
        ("GET", "/_control/traceparents") => {
            let seen = state.lock().unwrap().traceparents.clone();
            full(StatusCode::OK, Value::Array(seen).to_string())
        }
        ("POST", p) if p.ends_with("/chat/completions") => {
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                return Ok(full(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {"message": "body is not JSON"}}).to_string(),
                ));
            };
            let step = {
                let mut st = state.lock().unwrap();
                if st.requests.len() >= 10_000 {
                    // Long load runs: keep the recent ones only.
                    st.requests.drain(..5_000);
                    st.traceparents.drain(..5_000);
                }
                st.requests.push(request.clone());
                st.traceparents.push(traceparent);
                st.script.pop_front()
            };
            let step = step.unwrap_or_else(|| auto_step(&request));
            respond(step, &request, &opts).await
        }
        _ => full(StatusCode::NOT_FOUND, "not found".into()),
    };
    Ok(resp)
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null
    });
    format!("data: {c}\n\n")
}

fn split(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

async fn respond(step: Step, request: &Value, opts: &Options) -> Response<Body> {
    if step.delay_head_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_head_ms)).await;
    }
    if let Some(status) = step.status {
        let body = step.body.clone().unwrap_or_else(|| {
            json!({"error": {"message": format!("scripted status {status}")}}).to_string()
        });
        let mut r = full(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        );
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        for (k, v) in &step.headers {
            if let (Ok(k), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(k.as_bytes()),
                v.parse(),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
        return r;
    }
    if let Some(raw) = &step.raw_sse {
        let chunks: Vec<Chunk> = raw
            .split_inclusive("\n\n")
            .map(|e| Chunk::Data(e.to_owned()))
            .collect();
        return stream_response(chunks, step.delay_ms.unwrap_or(opts.token_delay_ms));
    }
    let usage = match (&step.usage, step.no_usage) {
        (_, true) => Value::Null,
        (Some(u), false) => u.clone(),
        (None, false) => {
            json!({"prompt_tokens": request["messages"].as_array().map_or(0, |m| m.len() * 10), "completion_tokens": step.text.len() / 4 + 1})
        }
    };
    if step.non_streaming {
        let calls: Vec<Value> = step.tool_calls.iter().enumerate().map(|(i, c)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": c.name, "arguments": c.arguments}})).collect();
        let msg = json!({"role": "assistant", "content": step.text, "tool_calls": if calls.is_empty() { Value::Null } else { Value::Array(calls) }});
        let body = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": msg, "finish_reason": if step.tool_calls.is_empty() {"stop"} else {"tool_calls"}}], "usage": usage});
        let mut r = full(StatusCode::OK, body.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return r;
    }

    // Build the chunks.
    let n = step.chunk_chars.unwrap_or(4);
    let mut chunks: Vec<Chunk> = vec![Chunk::Data(chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    if let Some(count) = step.text.strip_prefix("\u{0}bench:") {
        for _ in 0..count.parse::<usize>().unwrap_or(10) {
            chunks.push(Chunk::Bench);
        }
    } else {
        for piece in split(&step.reasoning, n) {
            chunks.push(Chunk::Data(chunk(
                json!({"reasoning_content": piece}),
                None,
            )));
        }
        for piece in split(&step.text, n) {
            chunks.push(Chunk::Data(chunk(json!({"content": piece}), None)));
        }
    }
    for (i, call) in step.tool_calls.iter().enumerate() {
        chunks.push(Chunk::Data(chunk(
            json!({"tool_calls": [{"index": i, "id": format!("call_{}_{i}", now_micros() % 1_000_000), "type": "function", "function": {"name": call.name, "arguments": ""}}]}),
            None,
        )));
        for piece in split(&call.arguments, n) {
            chunks.push(Chunk::Data(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                None,
            )));
        }
    }
    let finish = if step.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    chunks.push(Chunk::Data(chunk(json!({}), Some(finish))));
    chunks.push(Chunk::Data(format!("data: {}\n\n", json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}))));
    chunks.push(Chunk::Data("data: [DONE]\n\n".into()));
    if let Some(k) = step.after_chunks {
        let k = k.min(chunks.len());
        let fault = if let Some(ms) = step.stall_ms {
            Some(Chunk::Stall(ms))
        } else if let Some(m) = &step.error_message {
            Some(Chunk::Data(format!(
                "data: {}\n\n",
                json!({"error": {"message": m, "type": "server_error"}})
            )))
        } else if step.garbage {
            Some(Chunk::Data("data: {this is not json\n\n".into()))
        } else if step.reset {
            Some(Chunk::Reset)
        } else {
            None
        };
        if let Some(f) = fault {
            let stop = !matches!(f, Chunk::Stall(_));
            chunks.insert(k, f);
            if stop {
                chunks.truncate(k + 1);
            }
        }
    }
    stream_response(chunks, step.delay_ms.unwrap_or(opts.token_delay_ms))
}

fn stream_response(chunks: Vec<Chunk>, delay_ms: u64) -> Response<Body> {
    let delay = Duration::from_millis(delay_ms);
    let stream = futures_util::stream::iter(chunks).then(move |c| async move {
        match c {
            Chunk::Data(s) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(Frame::data(Bytes::from(s)))
            }
            Chunk::Bench => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(Frame::data(Bytes::from(chunk(
                    json!({"content": format!("~{}|", now_micros())}),
                    None,
                ))))
            }
            Chunk::Stall(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Frame::data(Bytes::new()))
            }
            Chunk::Reset => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "scripted reset",
            )),
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r.headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    r
}

enum Chunk {
    Data(String),
    Bench,
    Stall(u64),
    Reset,
}
