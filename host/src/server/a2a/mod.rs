//! The A2A door (Agent2Agent 1.0, JSON-RPC binding): the agent card at
//! `/.well-known/agent-card.json` (and `/a2a/{agent}/.well-known/agent-card.json`), and the
//! methods at `POST /a2a` (and `/a2a/{agent}`) — `SendMessage`, `SendStreamingMessage` (SSE),
//! `GetTask`, `CancelTask`, `SubscribeToTask`, `ListTasks` — over the same sessions, auth,
//! principals, limits and usage accounting as the WebSocket. A context is a session (on an
//! anonymous host its id also carries the session's resume token); a task is one run, kept in
//! this host's memory ([`task`]) and driven by a client of the session engine ([`driver`]); a
//! tool call waiting for approval is `TASK_STATE_INPUT_REQUIRED`, decided by the next message in
//! that task.

mod card;
mod driver;
mod list;
mod rpc;
mod send;
mod task;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::connection::ConnDeps;
use super::outbox::Outbox;
use super::reply::{text, Body};
use crate::session::Client;
use rpc::{Call, Code, RpcError};
pub(crate) use task::Tasks;
use task::{lock, Control, Shared, State};

/// Frames queued for a task's driver before its session marks it slow (it drains at once).
const DRIVER_QUEUE: usize = 4096;

/// Whether this door answers `path` (so that the HTTP router hands the request here).
pub(crate) fn routes(method: &Method, path: &str) -> bool {
    (method == Method::GET
        && (path == "/.well-known/agent-card.json"
            || path == "/a2a/.well-known/agent-card.json"
            || card_agent(path).is_some()))
        || (method == Method::POST && (path == "/a2a" || path.starts_with("/a2a/")))
}

/// `/a2a/{agent}/.well-known/agent-card.json` → the agent's name.
fn card_agent(path: &str) -> Option<&str> {
    path.strip_prefix("/a2a/")?
        .strip_suffix("/.well-known/agent-card.json")
}

/// Serves one A2A request (`tasks`: this door's tasks).
pub(crate) async fn serve(
    req: Request<Incoming>,
    deps: &ConnDeps,
    tasks: &Tasks,
    peer: SocketAddr,
) -> Response<Body> {
    let agents = &deps.sessions.runtime().agents;
    let path = req.uri().path();
    // The first agent answers the bare paths; `/a2a/{agent}` names any served one.
    let slot = match (req.method(), path) {
        (&Method::GET, "/.well-known/agent-card.json" | "/a2a/.well-known/agent-card.json")
        | (_, "/a2a") => Some(agents.first()),
        (&Method::GET, p) => card_agent(p).and_then(|n| agents.named(n)),
        (_, p) => p.strip_prefix("/a2a/").and_then(|n| agents.named(n)),
    };
    let Some(slot) = slot else {
        let asked = card_agent(path)
            .or(path.strip_prefix("/a2a/"))
            .unwrap_or("");
        let served = agents.names().join(", ");
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no agent named {asked:?} here; this host serves {served}\n"),
        );
    };
    let plugin = slot.current();
    let agent = plugin.manifest.name.clone();
    if req.method() == Method::GET {
        let body = card::card(&plugin, &base_url(&req), deps.auth.required());
        return text(StatusCode::OK, "application/json", body.to_string());
    }
    let (principal, ip) = match super::door::admit(&req, deps, peer) {
        Ok(who) => who,
        Err(refusal) => return *refusal,
    };
    let trace = super::door::trace_of(req.headers());
    let version = req
        .headers()
        .get("a2a-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limit = deps.config.max_message_bytes + 4096;
    let Ok(body) = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    else {
        let too_big = json!({"error": format!("a request is at most {limit} bytes")});
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "application/json",
            too_big.to_string(),
        );
    };
    let call = match rpc::parse(&body.to_bytes()) {
        Ok(c) => c,
        Err((id, e)) => return json_reply(&rpc::error(&id, &e)),
    };
    if let Some(v) = version.filter(|v| v != "1.0" && v != "1") {
        let e = RpcError::new(
            Code::Version,
            format!("A2A version {v} is not supported; this agent speaks 1.0"),
        );
        return json_reply(&rpc::error(&call.id, &e));
    }
    let (handle, out) = Outbox::new(deps.connections.next_id(), DRIVER_QUEUE);
    let mut client = Client::new(Arc::new(handle), ip);
    client.principal = principal;
    client.trace = trace;
    let ctx = Ctx {
        deps,
        tasks,
        client,
        out,
        agent,
    };
    match ctx.call(&call).await {
        Ok(Reply::Json(v)) => json_reply(&rpc::result(&call.id, v)),
        Ok(Reply::Stream(first, rx)) => stream(call.id, first, rx),
        Err(e) => json_reply(&rpc::error(&call.id, &e)),
    }
}

/// `http://` or, behind a proxy that says so, `https://` — and the `Host` the client used.
fn base_url(req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        == Some("https");
    format!("{}://{host}", if https { "https" } else { "http" })
}

fn json_reply(v: &Value) -> Response<Body> {
    text(StatusCode::OK, "application/json", v.to_string())
}

/// What a method answers: a JSON result, or a stream (the task now, then its updates).
enum Reply {
    Json(Value),
    Stream(Value, broadcast::Receiver<Value>),
}

/// One call's context: the gateway, and the caller as the session engine sees it (with the
/// queue its session events arrive in).
struct Ctx<'a> {
    deps: &'a ConnDeps,
    tasks: &'a Tasks,
    client: Client,
    out: Arc<Outbox>,
    /// The agent the request's path names (new contexts are its sessions).
    agent: String,
}

impl Ctx<'_> {
    async fn call(self, call: &Call) -> Result<Reply, RpcError> {
        let p = &call.params;
        match call.method.as_str() {
            "SendMessage" => self.send(p, false).await,
            "SendStreamingMessage" => self.send(p, true).await,
            "GetTask" => {
                let task = self.task(p)?;
                let t = lock(&task);
                Ok(Reply::Json(t.to_json(history_length(p))))
            }
            "CancelTask" => self.cancel(p).await,
            "SubscribeToTask" => {
                let task = self.task(p)?;
                let t = lock(&task);
                if t.state.terminal() {
                    return Err(RpcError::new(
                        Code::Unsupported,
                        format!("Task {} is in terminal state: {}", t.id, t.state.as_str()),
                    ));
                }
                Ok(Reply::Stream(
                    json!({"task": t.to_json(None)}),
                    t.updates.subscribe(),
                ))
            }
            "ListTasks" => self.list(p),
            m if m.contains("PushNotification") => Err(RpcError::new(
                Code::PushNotSupported,
                "Push notifications are not supported",
            )),
            "GetExtendedAgentCard" => Err(RpcError::new(
                Code::Unsupported,
                "There is no extended agent card",
            )),
            m => Err(RpcError::new(
                Code::MethodNotFound,
                format!("Method not found: {m}"),
            )),
        }
    }

    fn tasks(&self) -> &Tasks {
        self.tasks
    }

    /// The task `params.id` names, if the caller may see it.
    fn task(&self, p: &Value) -> Result<Shared, RpcError> {
        let id = p["id"]
            .as_str()
            .ok_or_else(|| RpcError::params("`id` (the task's) is required"))?;
        self.tasks()
            .get(id, self.client.user())
            .ok_or_else(RpcError::task_not_found)
    }

    async fn cancel(self, p: &Value) -> Result<Reply, RpcError> {
        let task = self.task(p)?;
        let mut rx = {
            let t = lock(&task);
            if t.state.terminal() {
                return Err(RpcError::new(
                    Code::TaskNotCancelable,
                    "Task cannot be canceled",
                ));
            }
            let _ = t.control.send(Control::Cancel);
            t.updates.subscribe()
        };
        let ended = async {
            while lock(&task).state.terminal().then_some(()).is_none() {
                if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ended).await;
        let t = lock(&task);
        Ok(Reply::Json(t.to_json(None)))
    }
}

/// The updates of a task as SSE, from `first` (the task) until it ends or needs input; a
/// keep-alive comment every 15 s. A dropped stream leaves the task running.
fn stream(id: Value, first: Value, mut rx: broadcast::Receiver<Value>) -> Response<Body> {
    let (tx, response) = super::sse::stream();
    tokio::spawn(async move {
        let done = final_update(&first);
        if tx
            .send(super::sse::data(&rpc::result(&id, first)))
            .await
            .is_err()
            || done
        {
            return;
        }
        let mut keep_alive = tokio::time::interval(super::sse::KEEP_ALIVE);
        keep_alive.reset();
        loop {
            let frame: Bytes = tokio::select! {
                u = rx.recv() => match u {
                    Ok(u) => {
                        let done = final_update(&u);
                        if tx.send(super::sse::data(&rpc::result(&id, u))).await.is_err() || done {
                            return;
                        }
                        continue;
                    }
                    // Too slow to follow: the stream ends; SubscribeToTask starts from the task.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = keep_alive.tick() => super::sse::keep_alive(),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    response
}

/// Whether a streamed result ends the stream (a terminal state, or input required).
fn final_update(v: &Value) -> bool {
    let state = v["statusUpdate"]["status"]["state"]
        .as_str()
        .or_else(|| v["task"]["status"]["state"].as_str());
    state
        .and_then(State::parse)
        .is_some_and(State::final_for_streams)
}

fn history_length(p: &Value) -> Option<usize> {
    p["historyLength"].as_u64().map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_paths_name_the_agent() {
        assert_eq!(
            card_agent("/a2a/weather/.well-known/agent-card.json"),
            Some("weather")
        );
        assert!(routes(&Method::POST, "/a2a") && routes(&Method::POST, "/a2a/weather"));
        assert!(!routes(&Method::GET, "/a2a/weather"));
    }
}
