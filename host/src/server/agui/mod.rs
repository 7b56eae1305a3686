//! The AG-UI door: `POST /agui` takes AG-UI's `RunAgentInput` and answers with the run as
//! `text/event-stream`, one AG-UI event per frame, each with `id:` our session event's `seq` —
//! over the same sessions, auth, principals, limits and usage accounting as the WebSocket. A
//! thread is one of our sessions (an unknown `threadId` becomes a new session by that name); a
//! run is one turn, or the rest of one after an approval interrupt; a tool call that waits for
//! approval ends the run with an interrupt, and the next run's `resume` carries the decision.
//! Posting the same run again with `Last-Event-ID` replays what came after that frame and goes
//! on live ([`stream`]). The mapping itself is [`translate`].

mod frame;
mod input;
mod stream;
mod threads;
mod translate;

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::connection::ConnDeps;
use super::door;
use super::outbox::Outbox;
use super::reply::{text, Body};
use crate::session::event::OnBusy;
use crate::session::Client;
use input::Ask;
pub(crate) use threads::Threads;
use translate::{FrameId, Run};

/// Frames queued for a run's driver before its session marks it slow (it drains at once).
const DRIVER_QUEUE: usize = 4096;

/// Whether this door answers the request: `/agui` (the first agent served) or
/// `/agui/{agent}`.
pub(crate) fn routes(method: &Method, path: &str) -> bool {
    method == Method::POST && (path == "/agui" || path.starts_with("/agui/"))
}

/// The request's `RunAgentInput`, or its refusal (too large: 413; not one: 400).
async fn read_input(
    req: Request<Incoming>,
    deps: &ConnDeps,
) -> Result<input::Input, Box<Response<Body>>> {
    // The whole conversation comes with each run: room for several messages at the limit.
    let limit = deps.config.max_message_bytes.saturating_mul(4).max(1 << 20);
    let Ok(body) = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    else {
        let why = format!("a request is at most {limit} bytes");
        return Err(Box::new(refuse(StatusCode::PAYLOAD_TOO_LARGE, &why)));
    };
    input::parse(&body.to_bytes()).map_err(|e| Box::new(refuse(StatusCode::BAD_REQUEST, &e)))
}

/// The agent a request's path names: None for the first (`/agui`, `/agui/`), else a served
/// agent's name — or 404 naming those served.
fn agent_of(path: &str, deps: &ConnDeps) -> Result<Option<String>, Box<Response<Body>>> {
    let Some(name) = path.strip_prefix("/agui/").filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    let agents = &deps.sessions.runtime().agents;
    if agents.named(name).is_none() {
        let served = agents.names().join(", ");
        let why = format!("no agent named {name:?} here; this host serves {served}");
        return Err(Box::new(refuse(StatusCode::NOT_FOUND, &why)));
    }
    Ok(Some(name.to_owned()))
}

/// Serves one AG-UI request.
pub(crate) async fn serve(
    req: Request<Incoming>,
    deps: &ConnDeps,
    threads: &Arc<Threads>,
    peer: SocketAddr,
) -> Response<Body> {
    let (principal, ip) = match door::admit(&req, deps, peer) {
        Ok(who) => who,
        Err(refusal) => return *refusal,
    };
    let agent = match agent_of(req.uri().path(), deps) {
        Ok(a) => a,
        Err(refusal) => return *refusal,
    };
    let trace = door::trace_of(req.headers());
    let last_event = match last_event_id(&req) {
        Ok(l) => l,
        Err(refusal) => return *refusal,
    };
    let input = match read_input(req, deps).await {
        Ok(i) => i,
        Err(refusal) => return *refusal,
    };
    let sessions = deps.sessions.clone();
    // One client per session: a run streaming here is not taken over by a message that
    // would only wait (or be refused) behind it.
    let key = input
        .thread_id
        .split_once('.')
        .map_or(input.thread_id.as_str(), |(s, _)| s);
    let new_message = last_event.is_none() && matches!(input.ask, Ask::Message(_));
    if new_message && threads.streaming(key) && sessions.on_busy() != OnBusy::Interrupt {
        let why = "Agent is already running: this thread's run is being streamed; post the next message after its RUN_FINISHED";
        return text(
            StatusCode::CONFLICT,
            "application/json",
            json!({"error": why, "code": "already_running"}).to_string(),
        );
    }
    let hold = threads.hold(key);
    let (handle, out) = Outbox::new(deps.connections.next_id(), DRIVER_QUEUE);
    let mut client = Client::new(Arc::new(handle), ip);
    client.principal = principal;
    client.approves = true;
    client.tools = input.tools.clone();
    client.trace = trace;
    let after = if last_event.is_some() { 0 } else { u64::MAX };
    let config = input.agent_config.clone();
    let opened = match door::open(
        &sessions,
        &mut client,
        &out,
        &input.thread_id,
        (agent.as_deref(), config),
        after,
    )
    .await
    {
        Ok(o) => o,
        Err(v) => {
            sessions.release(&client);
            return engine_refusal(&v);
        }
    };
    let approval_secs = sessions.runtime().config.approval_timeout.as_secs();
    let run = Run::new(
        &input.thread_id,
        &input.run_id,
        input.messages.clone(),
        approval_secs,
    );
    // Where this run starts: after the last event of a resumed session, or a new one's first.
    let last_seq = opened.answer["last_seq"]
        .as_u64()
        .or(opened.answer["seq"].as_u64())
        .unwrap_or(0);
    let pending = opened.answer["pending_approvals"].clone();
    let driver = stream::Driver::new(
        sessions.clone(),
        client,
        out,
        opened.session_id,
        input.background,
        hold,
    );
    if let Some(last) = last_event {
        return driver.reconnect(run, last);
    }
    let started = run.start(last_seq, input.parent_run_id.as_deref());
    begin(driver, run, started, &input, &pending).await
}

/// Starts the run a request asks for — a new message, or the rest of one whose interrupts it
/// answers — and streams it; or refuses it (RUN_ERROR) as AG-UI's interrupt contract says.
async fn begin(
    mut driver: stream::Driver,
    mut run: Run,
    started: translate::Frame,
    input: &input::Input,
    pending: &Value,
) -> Response<Body> {
    let pending_ids: Vec<&str> = pending
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["step_id"].as_str())
        .collect();
    match &input.ask {
        Ask::Message(content) => {
            if !pending_ids.is_empty() {
                let e = Run::refused(&format!("this thread's last run is waiting for approval of {}: answer its interrupts with `resume` (resolved with payload {{\"approved\": true|false}}, or cancelled)", pending_ids.join(", ")), "interrupt_pending");
                return driver.refuse_run(started, e);
            }
            if let Err(v) = driver.send(content.clone()).await {
                driver.release();
                return engine_refusal(&v);
            }
        }
        Ask::Resume => {
            if let Err(why) = answers_every_interrupt(&input.resume, &pending_ids) {
                return driver.refuse_run(started, Run::refused(&why, "invalid_resume"));
            }
            run.begun_earlier(pending_ids.iter().copied());
            let decisions = input.resume.clone();
            if let Err(v) = driver.hand(|s, c, sid| {
                for (step_id, d) in &decisions {
                    s.approve(c, sid, step_id, d.clone());
                }
            }) {
                let why = v["error"]
                    .as_str()
                    .unwrap_or("the decision could not be delivered");
                return driver.refuse_run(started, Run::refused(why, "invalid_resume"));
            }
        }
        Ask::ToolResults(results) => {
            run.answered_by_client(results.iter().map(|(id, _)| id.as_str()));
            if let Err(v) = driver.hand(|s, c, sid| {
                for (step_id, result) in results {
                    s.client_tool_result(c, sid, step_id, result.clone());
                }
            }) {
                let why = v["error"]
                    .as_str()
                    .unwrap_or("the result could not be delivered");
                return driver.refuse_run(started, Run::refused(why, "invalid_tool_result"));
            }
        }
    }
    driver.live(run, started)
}

/// A `resume` must answer exactly the thread's open interrupts (AG-UI's interrupt contract).
fn answers_every_interrupt(
    resume: &[(String, crate::agent::Decision)],
    open: &[&str],
) -> Result<(), String> {
    let answered: Vec<&str> = resume.iter().map(|(id, _)| id.as_str()).collect();
    let stale: Vec<&str> = answered
        .iter()
        .copied()
        .filter(|id| !open.contains(id))
        .collect();
    let missing: Vec<&str> = open
        .iter()
        .copied()
        .filter(|id| !answered.contains(id))
        .collect();
    if stale.is_empty() && missing.is_empty() {
        return Ok(());
    }
    Err(format!("`resume` must answer exactly the thread's open interrupts: not open {stale:?}, unanswered {missing:?}"))
}

/// The `Last-Event-ID` a reconnect names, if any; a malformed one is refused.
fn last_event_id(req: &Request<Incoming>) -> Result<Option<FrameId>, Box<Response<Body>>> {
    let Some(v) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("");
    FrameId::parse(text).map(Some).ok_or_else(|| {
        let why = format!("Last-Event-ID {text:?} is not an id this host sent");
        Box::new(refuse(StatusCode::BAD_REQUEST, &why))
    })
}

/// A refusal before any stream: a status and a JSON body saying why.
fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    text(
        status,
        "application/json",
        json!({"error": why}).to_string(),
    )
}

/// The engine's refusal (an `agent.error`) as an HTTP answer.
fn engine_refusal(v: &Value) -> Response<Body> {
    let code = v["code"].as_str().unwrap_or("");
    let status = match code {
        "session_not_found" => StatusCode::NOT_FOUND,
        "already_running" => StatusCode::CONFLICT,
        "too_many_requests" | "rate_limited" | "quota_exceeded" => StatusCode::TOO_MANY_REQUESTS,
        "too_many_sessions" | "store_unavailable" | "server_shutting_down" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut body = json!({"error": v["error"], "code": code});
    if let Some(r) = v.get("retry_after_ms") {
        body["retry_after_ms"] = r.clone();
    }
    text(status, "application/json", body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::protocol::{ErrorCode, ServerEvent};

    #[test]
    fn only_posts_to_agui_are_ours() {
        assert!(routes(&Method::POST, "/agui"));
        assert!(!routes(&Method::GET, "/agui") && !routes(&Method::POST, "/a2a"));
    }

    #[test]
    fn engine_refusals_keep_their_code() {
        let busy = ServerEvent::error(ErrorCode::AlreadyRunning, "busy").frame_about(Some("s"));
        let r = engine_refusal(&serde_json::from_str(&busy).unwrap());
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }
}
