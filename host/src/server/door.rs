//! What the HTTP doors (A2A, AG-UI) share in front of the session engine: admitting a request
//! (the origin allowed, the token's principal, the client's address) and opening the session a
//! conversation names — resumed, restored from the store, or created under the name the client
//! chose. A door is a client of the engine like a WebSocket connection: the answers to its
//! requests arrive in its outbox.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::auth::Credentials;
use super::connection::ConnDeps;
use super::outbox::Outbox;
use super::reply::{text, Body};
use crate::session::principal::Principal;
use crate::session::{Client, Sessions};

/// Who is calling (the origin allowed, the token's principal) and from where — or the refusal.
pub(crate) fn admit(
    req: &Request<Incoming>,
    deps: &ConnDeps,
    peer: SocketAddr,
) -> Result<(Option<Principal>, IpAddr), Box<Response<Body>>> {
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !deps
        .auth
        .origin_allowed(header(header::ORIGIN), header(header::HOST))
    {
        deps.metrics.connections_refused.inc();
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "origin not allowed\n".into(),
        )));
    }
    let principal = match deps.auth.check_request(req) {
        Credentials::Accepted(p) => p,
        Credentials::Refused | Credentials::Pending => {
            deps.metrics.connections_refused.inc();
            let body = json!({"error": "a token is required: Authorization: Bearer <token>"});
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "application/json",
                body.to_string(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(Box::new(r));
        }
    };
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"));
    let ip = super::forwarded::client_ip(peer.ip(), forwarded, &deps.config.trusted_proxies);
    Ok((principal, ip))
}

/// The request's W3C trace context (`traceparent`, `tracestate`), if it carries a valid one:
/// the parent of the runs the request starts.
pub(crate) fn trace_of(headers: &hyper::HeaderMap) -> Option<crate::otel::TraceParent> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::otel::TraceParent::parse(get("traceparent")?, get("tracestate"))
}

/// The first event queued for a door's client (the answer to its request).
pub(crate) fn first_answer(out: &Outbox) -> Value {
    std::iter::from_fn(|| out.pop())
        .find_map(|f| serde_json::from_str::<Value>(&f).ok())
        .unwrap_or_default()
}

/// A conversation opened by name: the session's id and the engine's `agent.session_resumed`
/// (or `agent.session_created`) answer.
pub(crate) struct Opened {
    pub session_id: String,
    pub answer: Value,
}

/// Opens the session `name` names for `client`, replaying what came after `after`: `id` (a
/// principal's own session) or `id.token` (an anonymous host's: the session and its resume
/// token). A name nobody holds becomes a new session by that name (on an anonymous host the
/// name is also its key) with `agent` (None: the first served). The refusal is the engine's
/// `agent.error`.
pub(crate) async fn open(
    sessions: &Arc<Sessions>,
    client: &mut Client,
    out: &Outbox,
    name: &str,
    (agent, config): (Option<&str>, Option<Map<String, Value>>),
    after: u64,
) -> Result<Opened, Value> {
    let anonymous = client.principal.is_none();
    let (sid, token) = match name.split_once('.') {
        Some((s, t)) => (s, Some(t)),
        None if anonymous => (name, Some(name)),
        None => (name, None),
    };
    sessions.resume_session(client, sid, token, after).await;
    let v = first_answer(out);
    if v["event"] == "agent.session_resumed" {
        return Ok(Opened {
            session_id: sid.to_owned(),
            answer: v,
        });
    }
    if v["code"] != "session_not_found" || name.contains('.') {
        return Err(v);
    }
    // A new conversation the client named: a session by that name (unless it is anyone's).
    let token = token.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    sessions
        .create_named(client, (agent, config), (name.to_owned(), token))
        .await;
    let v = first_answer(out);
    if v["event"] != "agent.session_created" {
        return Err(v);
    }
    Ok(Opened {
        session_id: name.to_owned(),
        answer: v,
    })
}
