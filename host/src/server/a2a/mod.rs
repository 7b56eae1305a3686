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
mod rpc;
mod task;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

use super::auth::Credentials;
use super::http::{text, Body, Gateway};
use super::outbox::Outbox;
use crate::agent::Decision;
use crate::llm::{Content, ImageUrl, Part};
use crate::session::event::OnBusy;
use crate::session::Client;
use rpc::{Call, Code, RpcError};
pub(crate) use task::Tasks;
use task::{lock, Control, Shared, State, Task};

/// Frames queued for a task's driver before its session marks it slow (it drains at once).
const DRIVER_QUEUE: usize = 4096;

/// Whether this door answers `path` (so that the HTTP router hands the request here).
pub(crate) fn routes(method: &Method, path: &str) -> bool {
    (method == Method::GET
        && (path == "/.well-known/agent-card.json" || card_agent(path).is_some()))
        || (method == Method::POST && (path == "/a2a" || path.starts_with("/a2a/")))
}

/// `/a2a/{agent}/.well-known/agent-card.json` → the agent's name.
fn card_agent(path: &str) -> Option<&str> {
    path.strip_prefix("/a2a/")?
        .strip_suffix("/.well-known/agent-card.json")
}

/// Serves one A2A request.
pub(crate) async fn serve(
    req: Request<Incoming>,
    gw: &Gateway,
    peer: SocketAddr,
) -> Response<Body> {
    let deps = &gw.deps;
    let path = req.uri().path().to_owned();
    let agent = deps
        .sessions
        .runtime()
        .plugin
        .current()
        .manifest
        .name
        .clone();
    let named = match (req.method(), path.as_str()) {
        (&Method::GET, "/.well-known/agent-card.json") => Some(agent.as_str()),
        (&Method::GET, p) => card_agent(p),
        (_, "/a2a") => Some(agent.as_str()),
        (_, p) => p.strip_prefix("/a2a/"),
    };
    if named != Some(agent.as_str()) {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!(
                "no agent named {:?} here; this host serves {agent:?}\n",
                named.unwrap_or("")
            ),
        );
    }
    if req.method() == Method::GET {
        let base = base_url(&req);
        let body = card::card(deps.sessions.runtime(), &base, deps.auth.required());
        return text(StatusCode::OK, "application/json", body.to_string());
    }
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !deps
        .auth
        .origin_allowed(header(header::ORIGIN), header(header::HOST))
    {
        deps.metrics.connections_refused.inc();
        return text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "origin not allowed\n".into(),
        );
    }
    let principal = match deps.auth.check_request(&req) {
        Credentials::Accepted(p) => p,
        Credentials::Refused | Credentials::Pending => {
            deps.metrics.connections_refused.inc();
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "application/json",
                json!({"error": "a token is required: Authorization: Bearer <token>"}).to_string(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    let version = header(header::HeaderName::from_static("a2a-version")).map(str::to_owned);
    let forwarded: Vec<String> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect();
    let ip = super::forwarded::client_ip(
        peer.ip(),
        forwarded.iter().map(String::as_str),
        &deps.config.trusted_proxies,
    );
    let limit = deps.config.max_message_bytes + 4096;
    let body = match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "application/json",
                json!({"error": format!("a request is at most {limit} bytes")}).to_string(),
            )
        }
    };
    let call = match rpc::parse(&body) {
        Ok(c) => c,
        Err((id, e)) => return json_reply(&rpc::error(&id, &e)),
    };
    if version.as_deref().is_some_and(|v| v != "1.0" && v != "1") {
        let e = RpcError::new(
            Code::Version,
            format!(
                "A2A version {} is not supported; this agent speaks 1.0",
                version.unwrap_or_default()
            ),
        );
        return json_reply(&rpc::error(&call.id, &e));
    }
    let (handle, out) = Outbox::new(deps.connections.next_id(), DRIVER_QUEUE);
    let mut client = Client::new(Arc::new(handle), ip);
    client.principal = principal;
    let ctx = Ctx { gw, client, out };
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
    gw: &'a Gateway,
    client: Client,
    out: Arc<Outbox>,
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
        &self.gw.a2a
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

    fn list(self, p: &Value) -> Result<Reply, RpcError> {
        let context = p["contextId"].as_str();
        let status = match p["status"].as_str() {
            None | Some("TASK_STATE_UNSPECIFIED") => None,
            Some(s) => Some(
                State::parse(s).ok_or_else(|| RpcError::params(format!("unknown status {s}")))?,
            ),
        };
        let size = p["pageSize"].as_u64().unwrap_or(50).clamp(1, 100) as usize;
        let from: usize = match p["pageToken"].as_str().filter(|t| !t.is_empty()) {
            None => 0,
            Some(t) => t.parse().map_err(|_| {
                RpcError::params("`pageToken` is the nextPageToken of an earlier page")
            })?,
        };
        let all = self.tasks().list(self.client.user(), |t| {
            context.is_none_or(|c| t.context_id == c) && status.is_none_or(|s| t.state == s)
        });
        let with_artifacts = p["includeArtifacts"].as_bool().unwrap_or(false);
        let page: Vec<Value> = all
            .iter()
            .skip(from)
            .take(size)
            .map(|t| {
                let mut v = lock(t).to_json(history_length(p));
                if !with_artifacts {
                    v.as_object_mut().map(|o| o.remove("artifacts"));
                }
                v
            })
            .collect();
        let next = if from + page.len() < all.len() {
            (from + page.len()).to_string()
        } else {
            String::new()
        };
        Ok(Reply::Json(
            json!({"tasks": page, "nextPageToken": next, "pageSize": size, "totalSize": all.len()}),
        ))
    }

    /// `SendMessage` / `SendStreamingMessage`: a new task in a new or given context, or the
    /// answer a task waiting for input (an approval) was waiting for.
    async fn send(mut self, p: &Value, streaming: bool) -> Result<Reply, RpcError> {
        let msg = p
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| RpcError::params("`message` is required"))?;
        if !matches!(msg["role"].as_str(), Some("ROLE_USER" | "user")) {
            return Err(RpcError::params("`message.role` must be ROLE_USER"));
        }
        if msg["messageId"].as_str().is_none_or(str::is_empty) {
            return Err(RpcError::params("`message.messageId` is required"));
        }
        let parts = msg["parts"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| RpcError::params("`message.parts` must hold at least one part"))?;
        let blocking = !p["configuration"]["returnImmediately"]
            .as_bool()
            .unwrap_or(false);
        let history = history_length(&p["configuration"]);
        if let Some(task_id) = msg["taskId"].as_str().filter(|t| !t.is_empty()) {
            let task = self
                .tasks()
                .get(task_id, self.client.user())
                .ok_or_else(RpcError::task_not_found)?;
            return answer_input(&task, parts, msg, streaming, blocking, history).await;
        }
        let content = content(parts)?;
        let sessions = self.gw.deps.sessions.clone();
        let (session_id, context_id) = self
            .attach(msg["contextId"].as_str(), &p["metadata"]["agent_config"])
            .await?;
        let mut user = msg.clone();
        let task_id = uuid::Uuid::new_v4().to_string();
        user["contextId"] = context_id.clone().into();
        user["taskId"] = task_id.clone().into();
        let (task, control) = Task::new(
            task_id,
            context_id,
            session_id.clone(),
            self.client.user().cloned(),
            user,
        );
        let task: Shared = Arc::new(std::sync::Mutex::new(task));
        let (first, rx) = {
            let t = lock(&task);
            (t.to_json(None), t.updates.subscribe())
        };
        sessions
            .message(&self.client, &session_id, content, Some(OnBusy::Reject))
            .await;
        let (started, began) = oneshot::channel();
        tokio::spawn(driver::drive(
            sessions,
            self.client,
            self.out,
            task.clone(),
            control,
            started,
        ));
        began
            .await
            .unwrap_or_else(|_| Err(RpcError::new(Code::Internal, "the run could not start")))?;
        self.gw.a2a.insert(task.clone());
        reply(
            &task,
            json!({"task": first}),
            rx,
            streaming,
            blocking,
            history,
        )
        .await
    }

    /// Attaches the caller to context `context` (its session), or to a new session; returns
    /// the session's id and the context id.
    async fn attach(
        &mut self,
        context: Option<&str>,
        agent_config: &Value,
    ) -> Result<(String, String), RpcError> {
        let sessions = self.gw.deps.sessions.clone();
        let anonymous = self.client.principal.is_none();
        let out = self.out.clone();
        let answer = |out: &Outbox| -> Option<Value> {
            std::iter::from_fn(|| out.pop()).find_map(|f| serde_json::from_str::<Value>(&f).ok())
        };
        if let Some(c) = context.filter(|c| !c.is_empty()) {
            let (sid, token) = match c.split_once('.') {
                Some((s, t)) => (s, Some(t)),
                None => (c, None),
            };
            if let Some(running) = self.tasks().running_in(sid) {
                let id = lock(&running).id.clone();
                return Err(RpcError::new(Code::Unsupported, format!("Context {c} has a running task ({id}): wait for it, answer it or cancel it")));
            }
            sessions
                .resume_session(&mut self.client, sid, token, u64::MAX)
                .await;
            let v = answer(&out).unwrap_or_default();
            if v["event"] != "agent.session_resumed" {
                return Err(refused(&v, "contextId"));
            }
            return Ok((sid.to_owned(), c.to_owned()));
        }
        let config = agent_config.as_object().cloned();
        sessions.create(&mut self.client, config).await;
        let v = answer(&out).unwrap_or_default();
        let (Some(sid), Some(token)) = (v["session_id"].as_str(), v["resume_token"].as_str())
        else {
            return Err(refused(&v, "message"));
        };
        let context = if anonymous {
            format!("{sid}.{token}")
        } else {
            sid.to_owned()
        };
        Ok((sid.to_owned(), context))
    }
}

/// The engine's refusal (an `agent.error`) as A2A's.
fn refused(v: &Value, what: &str) -> RpcError {
    match v["code"].as_str() {
        Some("session_not_found") => {
            RpcError::params(format!("Unknown {what}: no such context (or not yours)"))
        }
        Some("invalid_field") => RpcError::params(
            v["error"]
                .as_str()
                .unwrap_or("invalid agent_config")
                .to_owned(),
        ),
        Some(code) => RpcError::new(
            Code::Unsupported,
            format!("{code}: {}", v["error"].as_str().unwrap_or("")),
        ),
        None => RpcError::new(Code::Internal, "the session could not be opened"),
    }
}

/// A message to a task waiting for input: the approval decision it waits for.
async fn answer_input(
    task: &Shared,
    parts: &[Value],
    msg: &Value,
    streaming: bool,
    blocking: bool,
    history: Option<usize>,
) -> Result<Reply, RpcError> {
    let (first, rx) = {
        let mut t = lock(task);
        if t.state.terminal() {
            return Err(RpcError::new(
                Code::Unsupported,
                format!("Task {} is in terminal state: {}", t.id, t.state.as_str()),
            ));
        }
        let Some(pending) = t
            .pending
            .clone()
            .filter(|_| t.state == State::InputRequired)
        else {
            return Err(RpcError::new(
                Code::Unsupported,
                format!("Task {} is working, not waiting for input", t.id),
            ));
        };
        let decision = decision(parts).ok_or_else(|| RpcError::params(format!(
            "Task {} waits for a decision on calling `{}`: reply `approve` or `deny` (a reason may follow), or a data part {{\"approved\": true|false}}",
            t.id, pending.tool)))?;
        let mut m = msg.clone();
        m["contextId"] = t.context_id.clone().into();
        t.history.push(m);
        let _ = t.control.send(Control::Decide {
            step_id: pending.step_id,
            decision,
        });
        (t.to_json(None), t.updates.subscribe())
    };
    reply(
        task,
        json!({"task": first}),
        rx,
        streaming,
        blocking,
        history,
    )
    .await
}

/// The answer to a send: the stream, the task at once, or the task once it ends or needs input.
async fn reply(
    task: &Shared,
    first: Value,
    mut rx: broadcast::Receiver<Value>,
    streaming: bool,
    blocking: bool,
    history: Option<usize>,
) -> Result<Reply, RpcError> {
    if streaming {
        return Ok(Reply::Stream(first, rx));
    }
    if blocking {
        while !lock(task).state.final_for_streams() {
            if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                break;
            }
        }
    }
    Ok(Reply::Json(json!({"task": lock(task).to_json(history)})))
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

/// A message's parts as the model's input: text, and images by URL or inline bytes.
fn content(parts: &[Value]) -> Result<Content, RpcError> {
    let mut out = Vec::new();
    for part in parts {
        let media = part["mediaType"].as_str().unwrap_or("");
        if let Some(t) = part["text"].as_str() {
            out.push(Part::Text { text: t.to_owned() });
        } else if let (Some(url), true) = (part["url"].as_str(), media.starts_with("image/")) {
            out.push(Part::ImageUrl {
                image_url: ImageUrl {
                    url: url.to_owned(),
                    detail: None,
                },
            });
        } else if let (Some(raw), true) = (part["raw"].as_str(), media.starts_with("image/")) {
            out.push(Part::ImageUrl {
                image_url: ImageUrl {
                    url: format!("data:{media};base64,{raw}"),
                    detail: None,
                },
            });
        } else {
            return Err(RpcError::new(
                Code::ContentType,
                "Only text parts and images (url or raw with an image/* mediaType) are supported",
            ));
        }
    }
    Ok(match out.as_slice() {
        [Part::Text { text }] => Content::Text(text.clone()),
        _ => Content::Parts(out),
    })
}

/// An approval decision in a message: a data part `{approved, reason}`, or text starting with
/// approve/yes or deny/no (the rest is the reason).
fn decision(parts: &[Value]) -> Option<Decision> {
    for p in parts {
        if let Some(approved) = p["data"]["approved"].as_bool() {
            let reason = p["data"]["reason"].as_str().map(str::to_owned);
            return Some(Decision { approved, reason });
        }
    }
    let text: String = parts
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let word = word
        .trim_end_matches(['.', '!', ',', ':'])
        .to_ascii_lowercase();
    let approved = match word.as_str() {
        "approve" | "approved" | "yes" | "y" | "ok" | "allow" => true,
        "deny" | "denied" | "no" | "n" | "reject" => false,
        _ => return None,
    };
    let reason = Some(rest.trim().to_owned()).filter(|r| !r.is_empty());
    Some(Decision { approved, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_come_from_words_or_data() {
        let t = |s: &str| decision(&[json!({"text": s})]);
        assert_eq!(t("approve").map(|d| d.approved), Some(true));
        assert_eq!(
            t("Deny: not today").map(|d| (d.approved, d.reason)),
            Some((false, Some("not today".into())))
        );
        assert!(t("maybe").is_none());
        let d = decision(&[json!({"data": {"approved": false, "reason": "no"}})]).unwrap();
        assert_eq!((d.approved, d.reason.as_deref()), (false, Some("no")));
    }

    #[test]
    fn parts_become_content() {
        assert_eq!(
            content(&[json!({"text": "hi"})]).unwrap(),
            Content::Text("hi".into())
        );
        let c = content(&[
            json!({"text": "see"}),
            json!({"url": "https://x/y.png", "mediaType": "image/png"}),
        ])
        .unwrap();
        assert!(matches!(c, Content::Parts(ref p) if p.len() == 2));
        assert_eq!(
            content(&[json!({"url": "https://x/y.pdf", "mediaType": "application/pdf"})])
                .unwrap_err()
                .code,
            Code::ContentType
        );
    }

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
