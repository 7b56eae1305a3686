//! HTTP on the WebSocket port (hyper): `GET /health`, `GET /metrics`, the web client on `GET /`,
//! and the WebSocket upgrade on `/` and `/ws` (origin, token and per-address checks first).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::auth::{constant_time_eq, Credentials};
use super::config::ServerConfig;
use super::connection::{self, ConnDeps};
use super::forwarded::client_ip;
use super::gate::Gate;
use super::protocol::MAX_EVENT_BYTES;
use super::reply::{text, Body};

/// Before authentication: the largest frame a client may send (a first message with a token)
/// and the most bytes in all (also bounded in time by `--auth-timeout`).
const PRE_AUTH_FRAME: u64 = 8 * 1024;
const PRE_AUTH_TOTAL: u64 = 32 * 1024;

/// A slot under the connection cap, held by the HTTP connection and, after an upgrade, by the
/// WebSocket connection it became.
pub(crate) type Slot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// What the HTTP side serves from: the connection dependencies, the start time, and the A2A
/// door's tasks.
pub struct Gateway {
    pub deps: ConnDeps,
    pub started: Instant,
    pub(crate) a2a: super::a2a::Tasks,
    /// The threads the AG-UI door is streaming.
    pub(crate) agui: Arc<super::agui::Threads>,
}

/// Serves HTTP/1.1 on one TCP connection, handing WebSocket upgrades to [`connection::serve`].
///
/// Each request's headers must arrive within `header_read_timeout` — also on an idle keep-alive
/// connection — or the connection is closed and its slot freed (no slowloris).
pub(crate) async fn serve_http(stream: TcpStream, peer: SocketAddr, gw: Arc<Gateway>, slot: Slot) {
    let io = TokioIo::new(stream);
    let metrics = gw.deps.metrics.clone();
    let header_timeout = gw.deps.config.header_read_timeout;
    let lifecycle = gw.deps.lifecycle.clone();
    let svc = hyper::service::service_fn(move |req| {
        let gw = gw.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(route(req, &gw, slot, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    // At shutdown an idle keep-alive connection closes at once (one mid-request finishes it).
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = lifecycle.close_all.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.header_timeouts.inc();
            tracing::debug!(%peer, "request headers not received in time; connection closed");
        } else {
            tracing::debug!(%peer, error = %e, "http connection ended with an error");
        }
    }
}

async fn route(
    req: Request<Incoming>,
    gw: &Gateway,
    slot: Slot,
    peer: SocketAddr,
) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !gw.deps.auth.host_allowed(host) {
        // A page whose own name resolves here (DNS rebinding), or a name nobody configured.
        gw.deps.metrics.connections_refused.inc();
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain",
            "unknown host name; start the host with --allowed-host NAME to serve it\n".into(),
        );
    }
    if super::a2a::routes(req.method(), req.uri().path()) {
        return super::a2a::serve(req, &gw.deps, &gw.a2a, peer).await;
    }
    if super::agui::routes(req.method(), req.uri().path()) {
        return super::agui::serve(req, &gw.deps, &gw.agui, peer).await;
    }
    let path = req.uri().path();
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    match (req.method(), path) {
        (&Method::GET, "/" | "/ws") if is_upgrade => upgrade(req, &gw.deps, slot, peer),
        (&Method::GET, "/_echo") if is_upgrade && gw.deps.config.conformance_echo => {
            upgrade_echo(req, &gw.deps, slot)
        }
        (&Method::GET, "/health") => {
            // With tokens required, process details (the worker's pid) only for the holder of
            // the metrics token; the status stays open for load balancers.
            let cfg = &gw.deps.config;
            let details = !gw.deps.auth.required()
                || (cfg.metrics_token.is_some() && metrics_allowed(&req, cfg));
            health(gw, details)
        }
        (&Method::GET, "/metrics") if !metrics_allowed(&req, &gw.deps.config) => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "metrics need a token\n".into(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        (&Method::GET, "/metrics") => {
            let runtime = gw.deps.sessions.runtime();
            let generation = runtime.agents.first().current().generation;
            let mut body = gw.deps.metrics.render(generation);
            body.push_str("# HELP myagent_agent_generation Generation of each served agent's plugin build.\n# TYPE myagent_agent_generation gauge\n");
            for slot in runtime.agents.all() {
                let p = slot.current();
                let name = p.manifest.name.replace(['\\', '"', '\n'], "_");
                body.push_str(&format!(
                    "myagent_agent_generation{{agent=\"{name}\"}} {}\n",
                    p.generation
                ));
            }
            body.push_str(&runtime.mcp.render_metrics());
            if let Some(store) = gw.deps.sessions.store() {
                store.render_metrics(&mut body);
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        (&Method::GET, "/" | "/index.html") => super::page::page(),
        (&Method::GET, "/ws") => text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// `/metrics` is open unless `--metrics-token` is set.
fn metrics_allowed(req: &Request<Incoming>, cfg: &ServerConfig) -> bool {
    let Some(token) = &cfg.metrics_token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim(), token))
}

fn health(gw: &Gateway, details: bool) -> Response<Body> {
    let agents = &gw.deps.sessions.runtime().agents;
    let plugin = agents.first().current();
    // While draining, load balancers should send new clients elsewhere.
    let draining = gw.deps.lifecycle.shutdown.is_cancelled();
    let mut body = json!({
        "status": if draining { "shutting_down" } else { "healthy" },
        "timestamp": crate::time::Timestamp::now(),
        "active_sessions": gw.deps.sessions.count(),
        "connections": gw.deps.metrics.connections.get(),
        "uptime_seconds": gw.started.elapsed().as_secs(),
        "plugin": {"name": plugin.manifest.name, "version": plugin.manifest.version, "generation": plugin.generation,
            "isolation": plugin.isolation(), "worker_pid": plugin.worker_pid()},
    });
    // Every agent served (the first is `plugin` above, as before).
    body["agents"] = agents
        .all()
        .iter()
        .map(|s| {
            let p = s.current();
            json!({"name": p.manifest.name, "version": p.manifest.version, "generation": p.generation,
                "isolation": p.isolation(), "worker_pid": if details { json!(p.worker_pid()) } else { json!(null) }})
        })
        .collect();
    if !details {
        body["plugin"]["worker_pid"] = serde_json::Value::Null;
    }
    // The store: `ok`, or `degraded` while writes fail (buffered and retried; the host serves on).
    if let Some(store) = gw.deps.sessions.store() {
        body["store"] = json!(store.health());
    }
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    text(status, "application/json", body.to_string())
}

fn upgrade(
    mut req: Request<Incoming>,
    deps: &ConnDeps,
    slot: Slot,
    peer: SocketAddr,
) -> Response<Body> {
    if deps.lifecycle.shutdown.is_cancelled() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "server shutting down\n".into(),
        );
    }
    let cfg = &deps.config;
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
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
    let key = match handshake_key(&req) {
        Ok(key) => key,
        Err(refusal) => return *refusal,
    };
    let credentials = deps.auth.check_request(&req);
    let trace = super::door::trace_of(req.headers());
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"));
    let ip = client_ip(peer.ip(), forwarded, &cfg.trusted_proxies);
    let Some(ip_slot) = deps.connections.slot_for(ip) else {
        deps.metrics.connections_refused_per_ip.inc();
        tracing::info!(client = %ip, max = cfg.max_connections_per_ip, "per-address connection limit reached; refusing");
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain",
            format!(
                "too many connections from your address (limit {})\n",
                cfg.max_connections_per_ip
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return r;
    };
    let ws_config = ws_config(cfg);
    let handshake_deadline = cfg.header_read_timeout;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let deps2 = deps.clone();
    let fut = async move {
        // A client that never reads the 101 answer keeps hyper from handing the socket over;
        // give up on it (and free its slots) after the same deadline as for headers.
        match tokio::time::timeout(handshake_deadline, on_upgrade).await {
            Ok(Ok(upgraded)) => {
                // Until a token arrives, the client's bytes go through a closed gate.
                let io = TokioIo::new(upgraded);
                let (io, key) = match credentials {
                    Credentials::Pending => {
                        let (gate, key) = Gate::closed(io, PRE_AUTH_FRAME, PRE_AUTH_TOTAL);
                        (gate, Some(key))
                    }
                    _ => (Gate::open(io), None),
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
                connection::serve(ws, deps2, credentials, key, (ip_slot, trace)).await;
                drop(slot);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "websocket upgrade failed"),
            Err(_) => {
                deps2.metrics.header_timeouts.inc();
                tracing::debug!("websocket handshake not completed in time");
            }
        }
    };
    deps.lifecycle.conns.spawn(fut);
    switching_protocols(&key)
}

/// The request's `Sec-WebSocket-Key`, or the answer to a request that is not a version-13
/// WebSocket handshake.
fn handshake_key(req: &Request<Incoming>) -> Result<HeaderValue, Box<Response<Body>>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing Sec-WebSocket-Key\n".into(),
        )));
    };
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    if !version_ok {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "text/plain",
            "unsupported WebSocket version\n".into(),
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(r));
    }
    Ok(key)
}

/// `/_echo` (with `--conformance-echo`): the same WebSocket stack and limits, echoing every
/// message, so the Autobahn fuzzing client can check framing, fragmentation, UTF-8 and close
/// handling of the real server.
fn upgrade_echo(mut req: Request<Incoming>, deps: &ConnDeps, slot: Slot) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing Sec-WebSocket-Key\n".into(),
        );
    };
    let ws_config = ws_config(&deps.config);
    let on_upgrade = hyper::upgrade::on(&mut req);
    deps.lifecycle.conns.spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = Gate::open(TokioIo::new(upgraded));
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                _ => continue, // pings are answered and closes echoed by tungstenite
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        drop(slot);
    });
    switching_protocols(&key)
}

/// A connection's writer gathers fed frames up to this many bytes before writing them (the
/// batch's `flush` writes the rest), so its buffer holds about this much at most.
const WRITE_BATCH_BYTES: usize = 8 * 1024;

fn ws_config(cfg: &ServerConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer_bytes)
        // Frames fed in one batch go out in one write (up to this many bytes each): at 0 every
        // frame was its own `send` — one system call per token under load.
        .write_buffer_size(WRITE_BATCH_BYTES)
        // Room for two of the largest events the server sends (their size is capped).
        .max_write_buffer_size(2 * MAX_EVENT_BYTES + 64 * 1024)
        .max_message_size(Some(cfg.max_frame_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes))
}

fn switching_protocols(key: &HeaderValue) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
