//! One WebSocket connection, transport only: read a frame → check size and authentication →
//! parse → hand the message to [`Sessions`]; write queued frames in small batches (so a burst
//! on one connection does not starve the others), ping, close. One task per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::auth::{Auth, Credentials};
use super::config::ServerConfig;
use super::connections::{Connections, IpSlot};
use super::gate::{Gate, GateKey};
use super::outbox::Outbox;
use super::protocol::{self, AgentInfo, ErrorCode, ServedAgent, ServerEvent};
use crate::metrics::Metrics;
use crate::session::{Client, Lifecycle, Sessions};

/// Close code for a client that does not read fast enough (its events stay resumable).
pub(crate) const CLOSE_SLOW_CLIENT: u16 = 4008;
/// Close code for a peer that stopped answering pings.
pub(crate) const CLOSE_KEEPALIVE: u16 = 4000;

type Ws = WebSocketStream<Gate<TokioIo<Upgraded>>>;
type Sink = SplitSink<Ws, Message>;

/// What a connection task needs from the server.
#[derive(Clone)]
pub struct ConnDeps {
    pub config: Arc<ServerConfig>,
    pub auth: Arc<Auth>,
    pub sessions: Arc<Sessions>,
    pub connections: Arc<Connections>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
}

enum Flow {
    Continue,
    Close(CloseCode, &'static str),
    /// The socket stopped taking writes: drop it without a close frame.
    Drop,
    /// The peer is gone (or closed): stop.
    End,
}

/// Runs one write (or flush) under `limit`. A peer that stops reading fills the socket buffer
/// and a write would wait forever; no write may keep the loop from keepalive, the slow-client
/// check or shutdown. `Err(true)` means timed out (the socket is then dropped: a write cut off
/// mid-frame cannot be resumed), `Err(false)` that the peer is gone.
///
/// The deadline timer is only armed when the write does not complete at once (the socket
/// buffer is full): most writes never touch the timer wheel.
async fn within<T>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<T, tokio_tungstenite::tungstenite::Error>>,
) -> Result<T, bool> {
    let mut write = std::pin::pin!(write);
    let done = match futures_util::poll!(write.as_mut()) {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(limit, write).await,
    };
    match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

/// Serves one upgraded WebSocket until it closes. `credentials` is what the upgrade request
/// carried (`gate` opens the byte gate once a first message authenticates); `ip_slot` the
/// client's place under the per-address limit, held until it closes; `trace` the upgrade
/// request's trace context (the parent of the runs its messages start).
pub(crate) async fn serve(
    ws: Ws,
    deps: ConnDeps,
    credentials: Credentials,
    gate: Option<GateKey>,
    (ip_slot, trace): (IpSlot, Option<crate::otel::TraceParent>),
) {
    let id = deps.connections.next_id();
    let (handle, out) = Outbox::new(id, deps.config.outbound_queue);
    deps.connections.register(handle.clone());
    let mut client = Client::new(Arc::new(handle), ip_slot.ip);
    client.trace = trace;
    let mut attached = Attached {
        client,
        deps: deps.clone(),
        _ip_slot: ip_slot,
    };
    // What the client and the log know the connection by (the number is internal).
    let cid = uuid::Uuid::new_v4(); // 16 bytes, formatted only when written
    let span = tracing::debug_span!("conn", connection_id = %cid);
    serve_loop(
        ws,
        &deps,
        &mut attached.client,
        &out,
        credentials,
        gate,
        cid,
    )
    .instrument(span)
    .await;
}

/// A connection's hold on the registry and its sessions, let go however the connection task
/// ends — a panic included, so its sessions still expire.
struct Attached {
    client: Client,
    deps: ConnDeps,
    _ip_slot: IpSlot,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.deps.connections.unregister(self.client.id());
        self.deps.sessions.release(&self.client);
    }
}

async fn serve_loop(
    ws: Ws,
    deps: &ConnDeps,
    client: &mut Client,
    out: &Outbox,
    credentials: Credentials,
    gate: Option<GateKey>,
    cid: uuid::Uuid,
) {
    let (mut sink, mut stream) = ws.split();
    let limit = deps.config.write_timeout;
    if credentials == Credentials::Refused {
        let _ = within(limit, sink.send(Message::Text(auth_error().frame()))).await;
        let _ = within(limit, close(&mut sink, CloseCode::Policy, "Invalid token")).await;
        deps.metrics.connections_refused.inc();
        return;
    }
    let mut authed = accepted(credentials, client);
    if !greet(&mut sink, deps, cid, authed).await {
        return;
    }
    // A client that has not authenticated within this is closed (1008), pings or not.
    let auth_deadline = tokio::time::sleep(deps.config.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut ping = tokio::time::interval(deps.config.ping_interval);
    ping.reset();
    let mut last_seen = Instant::now();
    let dead_after = deps.config.ping_interval + deps.config.pong_timeout;
    // One token for every connection: watched, not polled at each wake (`cancel.rs`).
    let mut close_all = crate::cancel::Watch::new(&deps.lifecycle.close_all);
    loop {
        let flow = tokio::select! {
            biased;
            // Queued events (e.g. agent.interrupted) are delivered before the close, below.
            _ = close_all.done() => Flow::Close(CloseCode::Away, "server shutting down"),
            _ = &mut auth_deadline, if !authed => {
                deps.metrics.connections_refused.inc();
                tracing::info!(connection_id = %cid, "no token within the authentication deadline");
                refuse_auth(client)
            }
            _ = out.wake.notified() => {
                if out.is_slow() {
                    deps.metrics.slow_client_disconnects.inc();
                    tracing::warn!(connection_id = %cid, "client too slow; closing (its sessions stay resumable)");
                    Flow::Close(CloseCode::Library(CLOSE_SLOW_CLIENT), "slow client: outbound queue full; resume the session to continue")
                } else {
                    match within(limit, write_batch(&mut sink, out)).await {
                        Ok(()) => Flow::Continue,
                        Err(true) => Flow::Drop,
                        Err(false) => Flow::End,
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > dead_after {
                    tracing::info!(connection_id = %cid, "peer stopped answering pings; dropping");
                    Flow::Close(CloseCode::Library(CLOSE_KEEPALIVE), "keepalive timeout")
                } else {
                    match within(limit, sink.send(Message::Ping(Default::default()))).await {
                        Ok(()) => Flow::Continue,
                        Err(true) => Flow::Drop,
                        Err(false) => Flow::End,
                    }
                }
            }
            msg = stream.next() => {
                last_seen = Instant::now();
                match msg {
                    None => Flow::End,
                    Some(Err(e)) => read_failed(e, deps, cid),
                    // Boxed: the dispatch future is large and only lives while a message is handled.
                    Some(Ok(Message::Text(text))) => {
                        let was = authed;
                        let flow = Box::pin(on_text(deps, client, &mut authed, text.as_str())).await;
                        if authed && !was {
                            if let Some(g) = &gate {
                                g.open();
                            }
                        }
                        flow
                    }
                    Some(Ok(Message::Binary(_))) if !authed => refuse_auth(client),
                    Some(Ok(Message::Binary(b))) => {
                        deps.metrics.client_errors.inc();
                        client.send_about(None, &ServerEvent::error(ErrorCode::BinaryFrame,
                            format!("Binary frames are not supported ({} bytes ignored); send JSON text frames", b.len())));
                        Flow::Continue
                    }
                    Some(Ok(Message::Close(_))) => Flow::End,
                    Some(Ok(_)) => Flow::Continue, // ping (auto-answered) / pong
                }
            }
        };
        if !matches!(flow, Flow::Continue) {
            return end(flow, &mut sink, out, deps, cid).await;
        }
    }
}

/// Whether the upgrade request authenticated the client (and as whom).
fn accepted(credentials: Credentials, client: &mut Client) -> bool {
    match credentials {
        Credentials::Accepted(principal) => {
            client.principal = principal;
            true
        }
        _ => false,
    }
}

/// Sends `system.connected`; false when the peer is already gone.
async fn greet(sink: &mut Sink, deps: &ConnDeps, cid: uuid::Uuid, authed: bool) -> bool {
    let agents = &deps.sessions.runtime().agents;
    let plugin = agents.first().current();
    let hello = ServerEvent::Connected {
        connection_id: cid.to_string(),
        agent: AgentInfo {
            name: plugin.manifest.name.clone(),
            version: plugin.manifest.version.clone(),
            generation: None,
            tools: None,
        },
        agents: agents
            .all()
            .iter()
            .map(|s| ServedAgent::of(&s.current()))
            .collect(),
        auth_required: !authed,
        max_message_bytes: deps.config.max_message_bytes,
    };
    drop(plugin);
    let limit = deps.config.write_timeout;
    within(limit, sink.send(Message::Text(hello.frame())))
        .await
        .is_ok()
}

/// What a failed read means for the connection.
fn read_failed(e: tokio_tungstenite::tungstenite::Error, deps: &ConnDeps, cid: uuid::Uuid) -> Flow {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Capacity(c) => {
            tracing::info!(connection_id = %cid, error = %c, "frame over the hard size limit");
            Flow::Close(CloseCode::Size, "message too big")
        }
        E::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            deps.metrics.connections_refused.inc();
            tracing::info!(connection_id = %cid, error = %e, "unauthenticated client over its input limit; dropped");
            Flow::End
        }
        E::ConnectionClosed | E::AlreadyClosed | E::Io(_) => Flow::End,
        other => {
            tracing::info!(connection_id = %cid, error = %other, "protocol error");
            Flow::Close(CloseCode::Protocol, "protocol error")
        }
    }
}

/// Ends the connection as `flow` says: dropped (it stopped reading), closed with a code after
/// what was queued (e.g. `auth.error`), or simply over.
async fn end(flow: Flow, sink: &mut Sink, out: &Outbox, deps: &ConnDeps, cid: uuid::Uuid) {
    let limit = deps.config.write_timeout;
    match flow {
        Flow::Drop => {
            deps.metrics.slow_client_disconnects.inc();
            tracing::warn!(connection_id = %cid, timeout_ms = limit.as_millis() as u64,
                "client stopped reading (a write timed out); dropping it (its sessions stay resumable)");
        }
        Flow::Close(code, reason) => {
            // Not to a client that is being dropped for not reading.
            if !out.is_slow() {
                let drain = async {
                    while let Some(t) = out.pop() {
                        if sink.feed(Message::Text(t)).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), Box::pin(drain)).await;
            }
            let _ = within(limit, Box::pin(close(sink, code, reason))).await;
        }
        Flow::Continue | Flow::End => {}
    }
}

/// Writes up to 64 queued frames and flushes, then yields (so one busy connection does not
/// starve the others on this worker); wakes itself again if more are queued.
async fn write_batch(
    sink: &mut Sink,
    out: &Outbox,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (batch, more) = out.take(64);
    for t in batch {
        sink.feed(Message::Text(t)).await?;
    }
    sink.flush().await?;
    if more {
        out.wake.notify_one();
    }
    Ok(())
}

async fn close(
    sink: &mut Sink,
    code: CloseCode,
    reason: &'static str,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    sink.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })))
    .await?;
    sink.flush().await
}

fn auth_error() -> ServerEvent {
    ServerEvent::AuthError {
        error: "Invalid token".into(),
    }
}

async fn on_text(deps: &ConnDeps, client: &mut Client, authed: &mut bool, text: &str) -> Flow {
    let max = deps.config.max_message_bytes;
    if text.len() > max && !*authed {
        return refuse_auth(client);
    }
    if text.len() > max {
        deps.metrics.client_errors.inc();
        client.send_about(
            None,
            &ServerEvent::error(
                ErrorCode::MessageTooLarge,
                format!(
                    "Message too large: {} bytes; the limit is {max} bytes",
                    text.len()
                ),
            ),
        );
        return Flow::Continue;
    }
    // The serving builds, borrowed for their prefixes (no copy of a prefix per message).
    let builds: Vec<_> = deps
        .sessions
        .runtime()
        .agents
        .all()
        .iter()
        .map(|s| s.current())
        .collect();
    let prefixes: Vec<&str> = builds
        .iter()
        .filter_map(|p| p.manifest.event_prefix.as_deref())
        .collect();
    let parsed = match protocol::parse_for(text, &prefixes) {
        Ok(p) => p,
        Err(_) if !*authed => return refuse_auth(client),
        Err(e) => {
            deps.metrics.client_errors.inc();
            let session = e.session_id.as_deref();
            client.send_about(session, &ServerEvent::error(e.code, e.message));
            return Flow::Continue;
        }
    };
    if !*authed {
        match parsed
            .token
            .as_deref()
            .and_then(|t| deps.auth.authenticate(t))
        {
            Some(principal) => {
                client.principal = Some(principal);
                *authed = true;
            }
            None => return refuse_auth(client),
        }
    }
    super::dispatch::dispatch(&deps.sessions, client, parsed.message).await;
    Flow::Continue
}

fn refuse_auth(client: &Client) -> Flow {
    client.sub.send(auth_error().frame());
    Flow::Close(CloseCode::Policy, "Invalid token")
}
