//! The HTTP model client (reqwest): streaming, retries as the official OpenAI client does, and
//! timeouts for connect, first byte and an idle stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::pump::Pump;
use super::sse::StreamParser;
use super::{ApiKey, ChatRequest, ChatResponse, Delta, LlmError, OnDelta, Recorder};
use crate::cancel::Watch;

/// Where and how to reach the model.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Base URL including `/v1`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<ApiKey>,
    pub connect_timeout: Duration,
    /// Longest wait for the response head and first data.
    pub first_token_timeout: Duration,
    /// Longest gap between two pieces of the stream.
    pub idle_timeout: Duration,
    /// Retries after the first attempt (the official client's default is 2).
    pub max_retries: u32,
    /// Longest one attempt may take, whatever the stream does (the idle timer restarts with
    /// every chunk; this does not).
    pub call_timeout: Duration,
    /// Bytes of answer (text and tool-call arguments) accepted per call; more is an error.
    pub max_output_bytes: usize,
    /// Sent as `max_tokens` (the model stops there); `None` sends nothing.
    pub max_tokens: Option<u32>,
}

/// Error bodies are read up to this much (the message is in the first few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Reads a response body, refusing more than `limit` bytes (never buffering more).
async fn read_capped(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, LlmError> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(classify)?;
        if out.len() + chunk.len() > limit {
            return Err(LlmError::TooLong(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `url` with any `user:password@` and query string replaced, for logs and banners.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let userinfo = if authority.contains('@') { "***@" } else { "" };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_owned(),
    };
    let sep = if scheme.is_empty() { "" } else { "://" };
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}{sep}{userinfo}{host}{slash}{path}")
}

pub struct HttpModel {
    config: LlmConfig,
    client: reqwest::Client,
    url: String,
    recorder: Option<Recorder>,
}

impl HttpModel {
    pub fn new(config: LlmConfig, recorder: Option<Recorder>) -> Result<HttpModel, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // Idle model connections keep their (grown) read buffers: after a burst of many
            // concurrent streams, hundreds of KB each. Keep enough for reuse, not all of them.
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(128)
            .build()
            .map_err(|e| LlmError::Connect(e.to_string()))?;
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(HttpModel {
            config,
            client,
            url,
            recorder,
        })
    }

    pub fn describe(&self) -> String {
        let rec = self
            .recorder
            .as_ref()
            .map(|r| format!(", recording to {}", r.path().display()))
            .unwrap_or_default();
        let key = if self.config.api_key.is_some() {
            "API key set"
        } else {
            "no API key"
        };
        format!("{} ({key}{rec})", redact_url(&self.config.base_url))
    }

    pub async fn chat(
        &self,
        req: &ChatRequest,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let traceparent = req.traceparent.as_deref();
        let mut body = req.to_body();
        if let Some(n) = self.config.max_tokens {
            body["max_tokens"] = n.into();
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut parser = StreamParser::with_limit(self.config.max_output_bytes);
            let deadline = self.config.call_timeout;
            let (result, retry_after) = {
                // Watched: the attempt wakes per model read, the deadline's timer is polled once.
                let mut over = Watch::on(tokio::time::sleep(deadline));
                let attempt = self.attempt(&body, traceparent, &mut parser, on_delta);
                tokio::pin!(attempt);
                tokio::select! {
                    biased;
                    r = &mut attempt => r,
                    () = over.done() => (Err(LlmError::Deadline(deadline.as_secs())), None),
                }
            };
            match result {
                Ok(resp) => {
                    if let Some(rec) = &self.recorder {
                        rec.record(req, &resp);
                    }
                    return Ok(resp);
                }
                // Output already reached the client: a retry would repeat it.
                Err(e) if parser.started || !e.is_retryable() => return Err(e),
                Err(e) if attempt > self.config.max_retries => {
                    return Err(if self.config.max_retries == 0 {
                        e
                    } else {
                        LlmError::RetriesExhausted {
                            attempts: attempt,
                            last: Box::new(e),
                        }
                    });
                }
                Err(e) => {
                    let wait = retry_after.unwrap_or_else(|| backoff(attempt));
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "model call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One HTTP attempt. Returns the server's requested retry delay alongside any error.
    async fn attempt(
        &self,
        body: &serde_json::Value,
        traceparent: Option<&str>,
        parser: &mut StreamParser,
        on_delta: &mut OnDelta<'_>,
    ) -> (Result<ChatResponse, LlmError>, Option<Duration>) {
        let mut rb = self.client.post(&self.url).json(body);
        if let Some(key) = &self.config.api_key {
            rb = rb.bearer_auth(key.expose());
        }
        if let Some(tp) = traceparent {
            rb = rb.header("traceparent", tp);
        }
        let first = self.config.first_token_timeout;
        let resp = match tokio::time::timeout(first, rb.send()).await {
            Err(_) => return (Err(LlmError::Stalled(first.as_millis() as u64)), None),
            Ok(Err(e)) => return (Err(classify(e)), None),
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return refused(resp, first).await;
        }
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            return (self.whole(resp, on_delta).await, None);
        }
        (self.stream(resp, parser, on_delta).await, None)
    }

    /// A non-streamed answer (some servers ignore `stream: true`).
    async fn whole(
        &self,
        resp: reqwest::Response,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let first = self.config.first_token_timeout;
        // The JSON envelope around the answer is small; allow it beside the output limit.
        let limit = self.config.max_output_bytes.saturating_add(64 * 1024);
        let bytes = match tokio::time::timeout(first, read_capped(resp, limit)).await {
            Err(_) => return Err(LlmError::Stalled(first.as_millis() as u64)),
            Ok(r) => r?,
        };
        StreamParser::whole(&bytes, self.config.max_output_bytes, on_delta)
    }

    /// The answer's stream, under the first-token and then the idle limit. The body is read
    /// by a [`Pump`]; this run wakes only at its pauses and sends each pause's pieces at once.
    async fn stream(
        &self,
        resp: reqwest::Response,
        parser: &mut StreamParser,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let first = self.config.first_token_timeout;
        let mut pump = Pump::spawn(resp.bytes_stream());
        let mut chunks = VecDeque::new();
        let mut wait = first;
        let started = Instant::now();
        // The stall timer moves lazily: a pause only notes its time, and the timer, when it
        // fires, re-arms at (last pause + wait) if that is still ahead. Re-arming it per pause
        // would take the timer wheel's lock twice; watched, it is not polled per pause either.
        let mut last = tokio::time::Instant::now();
        let mut stall = Watch::on(tokio::time::sleep(wait));
        'read: loop {
            let end = tokio::select! {
                biased;
                end = pump.take(&mut chunks) => end,
                () = stall.done() => {
                    let due = last + wait;
                    if due > tokio::time::Instant::now() {
                        stall.rearm().reset(due);
                        continue;
                    }
                    return Err(LlmError::Stalled(wait.as_millis() as u64));
                }
            };
            last = tokio::time::Instant::now();
            let fed = !chunks.is_empty();
            while let Some(bytes) = chunks.pop_front() {
                if parser.feed(&bytes, on_delta)? {
                    break 'read;
                }
            }
            match end {
                None => {}
                // Some servers close without `[DONE]`; accept when the finish arrived.
                Some(Ok(())) if parser.has_finish() => break 'read,
                Some(Ok(())) => {
                    return Err(LlmError::Malformed(
                        "the stream ended before the answer was complete".into(),
                    ))
                }
                Some(Err(e)) => {
                    return Err(LlmError::Malformed(format!(
                        "the stream broke off: {}",
                        without_url(&e)
                    )))
                }
            }
            if fed {
                on_delta(Delta::Pause);
            }
            if parser.started && wait != self.config.idle_timeout {
                // Once, at the first token: from here on the idle limit applies.
                wait = self.config.idle_timeout;
                stall.rearm().reset(last + wait);
            }
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model stream complete"
        );
        std::mem::take(parser).finish_with(on_delta)
    }
}

/// An error status: the error, and the server's requested retry delay.
async fn refused(
    resp: reqwest::Response,
    first: Duration,
) -> (Result<ChatResponse, LlmError>, Option<Duration>) {
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let text = tokio::time::timeout(first, read_capped(resp, MAX_ERROR_BODY))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    let error = LlmError::Status {
        status: status.as_u16(),
        message,
    };
    (Err(error), retry_after)
}

fn classify(e: reqwest::Error) -> LlmError {
    if e.is_connect() || e.is_timeout() || e.is_request() {
        LlmError::Connect(without_url(&e))
    } else {
        LlmError::Malformed(without_url(&e))
    }
}

/// reqwest errors name the URL; a URL can carry credentials, so keep only the reason.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.without_url_ref().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let s = self.to_string();
        match self.url() {
            Some(u) => s
                .replace(&format!(" ({u})"), "")
                .replace(u.as_str(), "<model endpoint>"),
            None => s,
        }
    }
}

/// `retry-after-ms`, then `retry-after` in seconds (≤ 120 s), as the official client reads them.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    if let Some(ms) = get("retry-after-ms").filter(|ms| *ms >= 0.0 && *ms <= 120_000.0) {
        return Some(Duration::from_millis(ms as u64));
    }
    get("retry-after")
        .filter(|s| *s >= 0.0 && *s <= 120.0)
        .map(Duration::from_secs_f64)
}

/// `min(0.5 · 2^(n-1), 8)` seconds less up to 25 % jitter.
fn backoff(attempt: u32) -> Duration {
    let base = (0.5 * 2f64.powi(attempt.saturating_sub(1) as i32)).min(8.0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 1.0 - 0.25 * (nanos % 1000) as f64 / 1000.0;
    Duration::from_secs_f64(base * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "9999".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://user:pw@llm.example/v1?key=abc"),
            "https://***@llm.example/v1?***"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/v1"), "http://127.0.0.1:9/v1");
        assert_eq!(
            redact_url("https://api.openai.com"),
            "https://api.openai.com"
        );
    }

    #[test]
    fn backoff_is_capped() {
        assert!(
            backoff(1) <= Duration::from_millis(500) && backoff(1) >= Duration::from_millis(375)
        );
        assert!(backoff(10) <= Duration::from_secs(8));
    }
}
