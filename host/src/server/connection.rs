//! One WebSocket connection: reads client messages, dispatches them, and writes the events
//! queued for it. One task per connection; writes are fed in small batches and flushed, so a
//! burst on one connection does not starve the others.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::protocol::{self, ClientMessage, ProtocolError};
use super::session::{AgentSlot, ResumeOutcome, Session, SessionSink};
use super::{Hub, IpSlot, SessionRefusal};
use crate::agent::{run_agent, Memory, RunContext, RunOutcome};

/// Close code for a client that does not read fast enough (its events stay resumable).
pub const CLOSE_SLOW_CLIENT: u16 = 4008;
/// Close code for a peer that stopped answering pings.
pub const CLOSE_KEEPALIVE: u16 = 4000;

/// Events waiting to be written to one connection. A plain locked deque instead of a channel:
/// it allocates nothing while empty (most connections are idle most of the time), and the
/// "slow client" flag lives beside it.
struct Outbox {
    queue: std::sync::Mutex<Queue>,
    /// Events queued at most (replay batches excepted) before the client is marked slow.
    cap: usize,
    /// Wakes the connection task: something was queued, or the client was marked slow.
    wake: Notify,
    slow: AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Utf8Bytes>,
    /// Replayed events still queued: they do not count against the cap.
    replay: usize,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<Utf8Bytes> {
        let mut q = self.lock();
        let t = q.items.pop_front();
        q.replay = q.replay.saturating_sub(1);
        if q.items.is_empty() && q.items.capacity() > 64 {
            // A burst is over: give its memory back.
            q.items = VecDeque::new();
        }
        t
    }

    fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }
}

/// The sending side of a connection, held by its sessions and the hub.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    out: Arc<Outbox>,
}

impl ConnHandle {
    /// Queues an event; never blocks. A full queue marks the client slow: the connection then
    /// closes with [`CLOSE_SLOW_CLIENT`].
    pub fn send(&self, text: Utf8Bytes) {
        {
            let mut q = self.out.lock();
            if q.items.len() >= self.out.cap + q.replay {
                self.out.slow.store(true, Ordering::Relaxed);
            } else {
                q.items.push_back(text);
            }
        }
        self.out.wake.notify_one();
    }

    /// Queues a replay: accepted whole (its size is bounded by the session's replay buffer).
    pub fn send_batch(&self, texts: Vec<Utf8Bytes>) {
        if texts.is_empty() {
            return;
        }
        {
            let mut q = self.out.lock();
            q.replay += texts.len();
            q.items.extend(texts);
        }
        self.out.wake.notify_one();
    }

    fn send_value(&self, v: &Value) {
        self.send(Utf8Bytes::from(v.to_string()));
    }
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

enum Flow {
    Continue,
    Close(CloseCode, &'static str),
}

/// Serves one upgraded WebSocket until it closes. `authed` says whether the HTTP request
/// already carried a valid token (or none is required); `bad_token` whether it carried a wrong one.
/// `ip_slot` is the client's place under the per-address connection limit, held until it closes.
pub async fn serve(ws: Ws, hub: Arc<Hub>, authed: bool, bad_token: bool, ip_slot: IpSlot) {
    let id = hub.next_connection_id();
    let out = Arc::new(Outbox {
        queue: std::sync::Mutex::new(Queue::default()),
        cap: hub.config.outbound_queue,
        wake: Notify::new(),
        slow: AtomicBool::new(false),
    });
    let handle = ConnHandle {
        id,
        out: out.clone(),
    };
    hub.register_connection(handle.clone());
    hub.metrics.connections.inc();
    hub.metrics.connections_total.inc();
    let span = tracing::debug_span!("conn", connection_id = id);
    let mut state = ConnState {
        id,
        handle: handle.clone(),
        authed,
        sessions: HashSet::new(),
        client_ip: ip_slot.ip,
    };
    serve_loop(ws, &hub, &mut state, &out, bad_token)
        .instrument(span)
        .await;
    hub.unregister_connection(id);
    hub.metrics.connections.dec();
    release_sessions(&hub, &state);
    drop(ip_slot);
}

struct ConnState {
    id: u64,
    handle: ConnHandle,
    authed: bool,
    /// Sessions this connection created or resumed (some may have moved on).
    sessions: HashSet<String>,
    /// The client's address (behind a trusted proxy: from `X-Forwarded-For`).
    client_ip: std::net::IpAddr,
}

async fn serve_loop(ws: Ws, hub: &Arc<Hub>, state: &mut ConnState, out: &Outbox, bad_token: bool) {
    let (mut sink, mut stream) = ws.split();
    let plugin = hub.plugin.current();
    let hello = json!({
        "event": "system.connected", "connection_id": state.id.to_string(), "timestamp": crate::now_secs(),
        "agent": {"name": plugin.manifest.name, "version": plugin.manifest.version},
        "auth_required": !state.authed,
    });
    if bad_token {
        let _ = sink.send(Message::text(auth_error())).await;
        let _ = close(&mut sink, CloseCode::Policy, "Invalid token").await;
        hub.metrics.connections_refused.inc();
        return;
    }
    if sink.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(hub.config.ping_interval);
    ping.reset();
    let mut last_seen = Instant::now();
    let dead_after = hub.config.ping_interval + hub.config.pong_timeout;
    loop {
        let flow = tokio::select! {
            biased;
            // Queued events (e.g. agent.interrupted) are delivered before the close, below.
            _ = hub.close_all.cancelled() => Flow::Close(CloseCode::Away, "server shutting down"),
            _ = out.wake.notified() => {
                if out.slow.load(Ordering::Relaxed) {
                    hub.metrics.slow_client_disconnects.inc();
                    tracing::warn!(connection_id = state.id, "client too slow; closing (its sessions stay resumable)");
                    Flow::Close(CloseCode::Library(CLOSE_SLOW_CLIENT), "slow client: outbound queue full; resume the session to continue")
                } else {
                    // Write a batch, flush, and come back for more (so one busy connection
                    // does not starve the others on this worker).
                    let mut r = Ok(());
                    let mut n = 0;
                    while r.is_ok() && n < 64 {
                        let Some(t) = out.pop() else { break };
                        r = sink.feed(Message::Text(t)).await;
                        n += 1;
                    }
                    if r.is_err() || sink.flush().await.is_err() { break; }
                    if !out.is_empty() { out.wake.notify_one(); }
                    Flow::Continue
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > dead_after {
                    tracing::info!(connection_id = state.id, "peer stopped answering pings; dropping");
                    Flow::Close(CloseCode::Library(CLOSE_KEEPALIVE), "keepalive timeout")
                } else if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                } else {
                    Flow::Continue
                }
            }
            msg = stream.next() => {
                last_seen = Instant::now();
                match msg {
                    None => break,
                    Some(Err(e)) => {
                        use tokio_tungstenite::tungstenite::Error as E;
                        match e {
                            E::Capacity(c) => {
                                tracing::info!(connection_id = state.id, error = %c, "frame over the hard size limit");
                                Flow::Close(CloseCode::Size, "message too big")
                            }
                            E::ConnectionClosed | E::AlreadyClosed | E::Io(_) => break,
                            other => {
                                tracing::info!(connection_id = state.id, error = %other, "protocol error");
                                Flow::Close(CloseCode::Protocol, "protocol error")
                            }
                        }
                    }
                    // Boxed: the dispatch future is large and only lives while a message is handled.
                    Some(Ok(Message::Text(text))) => Box::pin(on_text(hub, state, text.as_str())).await,
                    Some(Ok(Message::Binary(b))) => {
                        hub.metrics.client_errors.inc();
                        state.handle.send_value(&protocol::error_event(None, "binary_frame",
                            &format!("Binary frames are not supported ({} bytes ignored); send JSON text frames", b.len())));
                        Flow::Continue
                    }
                    Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => Flow::Continue, // ping (auto-answered) / pong
                }
            }
        };
        if let Flow::Close(code, reason) = flow {
            // Deliver what was queued before the close (e.g. `auth.error`), except to a client
            // that is being dropped for not reading.
            if !out.slow.load(Ordering::Relaxed) {
                let drain = async {
                    while let Some(t) = out.pop() {
                        if sink.feed(Message::Text(t)).await.is_err() {
                            break;
                        }
                    }
                };
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), Box::pin(drain)).await;
            }
            let _ = Box::pin(close(&mut sink, code, reason)).await;
            break;
        }
    }
}

async fn close(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
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

fn auth_error() -> String {
    json!({"event": "auth.error", "error": "Invalid token", "timestamp": crate::now_secs()})
        .to_string()
}

async fn on_text(hub: &Arc<Hub>, state: &mut ConnState, text: &str) -> Flow {
    if text.len() > hub.config.max_message_bytes {
        hub.metrics.client_errors.inc();
        state.handle.send_value(&protocol::error_event(
            None,
            "message_too_large",
            &format!(
                "Message too large: {} bytes; the limit is {} bytes",
                text.len(),
                hub.config.max_message_bytes
            ),
        ));
        return Flow::Continue;
    }
    let prefix = hub.plugin.current().manifest.event_prefix.clone();
    let parsed = match protocol::parse(text, prefix.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            if !state.authed {
                return refuse_auth(state);
            }
            return reply_error(hub, state, e);
        }
    };
    if !state.authed {
        match &parsed.token {
            Some(t)
                if hub
                    .config
                    .auth_tokens
                    .iter()
                    .any(|k| constant_time_eq(k, t)) =>
            {
                state.authed = true
            }
            _ => return refuse_auth(state),
        }
    }
    dispatch(hub, state, parsed.message).await;
    Flow::Continue
}

fn refuse_auth(state: &ConnState) -> Flow {
    state.handle.send(Utf8Bytes::from(auth_error()));
    Flow::Close(CloseCode::Policy, "Invalid token")
}

fn reply_error(hub: &Hub, state: &ConnState, e: ProtocolError) -> Flow {
    hub.metrics.client_errors.inc();
    state.handle.send_value(&protocol::error_event(
        e.session_id.as_deref(),
        e.code,
        &e.message,
    ));
    Flow::Continue
}

pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session `id` if this connection owns it; otherwise answers "Session not found".
fn owned_session(hub: &Hub, state: &ConnState, id: &str) -> Option<Arc<Session>> {
    match hub.session(id) {
        Some(s) if s.owned_by(state.id) => Some(s),
        _ => {
            state.handle.send_value(&protocol::error_event(
                Some(id),
                "session_not_found",
                "Session not found",
            ));
            None
        }
    }
}

async fn dispatch(hub: &Arc<Hub>, state: &mut ConnState, msg: ClientMessage) {
    match msg {
        ClientMessage::CreateSession => create_session(hub, state).await,
        ClientMessage::Message {
            session_id,
            content,
        } => {
            let Some(session) = owned_session(hub, state, &session_id) else {
                return;
            };
            let Some(cancel) = session.start_run() else {
                state.handle.send_value(&protocol::error_event(
                    Some(&session_id),
                    "already_running",
                    "Agent is already running",
                ));
                return;
            };
            let hub2 = hub.clone();
            let span = tracing::info_span!("session", session_id = %session.id);
            hub.runs
                .spawn(run_session(hub2, session, cancel, content).instrument(span));
        }
        ClientMessage::Cancel { session_id } => {
            let Some(session) = owned_session(hub, state, &session_id) else {
                return;
            };
            if !session.cancel() {
                state.handle.send_value(&protocol::error_event(
                    Some(&session_id),
                    "not_running",
                    "Agent is not running",
                ));
            }
        }
        ClientMessage::CloseSession { session_id } => {
            let Some(session) = owned_session(hub, state, &session_id) else {
                return;
            };
            session.cancel();
            hub.remove_session(&session_id);
            state.sessions.remove(&session_id);
            state.handle.send_value(&json!({"event": "agent.session_closed", "session_id": session_id, "timestamp": crate::now_secs()}));
        }
        ClientMessage::Resume {
            session_id,
            resume_token,
            last_seq,
        } => {
            let session = match hub.session(&session_id) {
                Some(s) if constant_time_eq(&s.resume_token, &resume_token) => s,
                _ => {
                    state.handle.send_value(&protocol::error_event(
                        Some(&session_id),
                        "session_not_found",
                        "Session not found",
                    ));
                    return;
                }
            };
            if !state.sessions.contains(&session_id)
                && owned_count(hub, state) >= hub.config.max_sessions_per_connection
            {
                refuse_session(
                    hub,
                    state,
                    Some(&session_id),
                    SessionRefusal::Connection(hub.config.max_sessions_per_connection),
                );
                return;
            }
            state.sessions.insert(session_id.clone());
            if let ResumeOutcome::Gap {
                first_available, ..
            } = session.resume(state.handle.clone(), last_seq, &hub.metrics)
            {
                state.handle.send_value(&protocol::error_event(Some(&session_id), "resume_gap", &format!(
                    "Cannot fully resume: events {}..{} are no longer in the replay buffer; later events were replayed",
                    last_seq + 1, first_available - 1)));
            }
        }
        ClientMessage::Custom { session_id, event } => {
            let Some(session) = owned_session(hub, state, &session_id) else {
                return;
            };
            let hub2 = hub.clone();
            hub.runs.spawn(custom_event(hub2, session, event));
        }
    }
}

fn owned_count(hub: &Hub, state: &ConnState) -> usize {
    state
        .sessions
        .iter()
        .filter(|id| hub.session(id).is_some_and(|s| s.owned_by(state.id)))
        .count()
}

fn refuse_session(hub: &Hub, state: &ConnState, session_id: Option<&str>, why: SessionRefusal) {
    if !matches!(why, SessionRefusal::Connection(_)) {
        tracing::info!(client = %state.client_ip, reason = %why, "session refused");
    }
    hub.metrics.client_errors.inc();
    state.handle.send_value(&protocol::error_event(
        session_id,
        "too_many_sessions",
        &why.to_string(),
    ));
}

async fn create_session(hub: &Arc<Hub>, state: &mut ConnState) {
    if owned_count(hub, state) >= hub.config.max_sessions_per_connection {
        let why = SessionRefusal::Connection(hub.config.max_sessions_per_connection);
        return refuse_session(hub, state, None, why);
    }
    // Refuse before the plugin's factory runs; checked again, atomically, on insert.
    if let Err(why) = hub.session_room(state.client_ip) {
        hub.metrics.sessions_refused.inc();
        return refuse_session(hub, state, None, why);
    }
    let plugin = hub.plugin.current();
    let p2 = plugin.clone();
    let instance = match tokio::task::spawn_blocking(move || p2.new_instance()).await {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "plugin factory failed");
            state.handle.send_value(&protocol::error_event(
                None,
                "plugin_error",
                &format!("The agent could not be created: {e}"),
            ));
            return;
        }
        Err(e) => {
            state.handle.send_value(&protocol::error_event(
                None,
                "plugin_error",
                &format!("The agent could not be created: {e}"),
            ));
            return;
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let slot = AgentSlot {
        memory: Memory::new(hub.agent_config.memory_budget_chars),
        plugin: plugin.clone(),
        instance,
    };
    let session = Arc::new(Session::new(
        id.clone(),
        token.clone(),
        slot,
        state.handle.clone(),
        state.client_ip,
        hub.config.replay_buffer_bytes,
    ));
    if let Err(why) = hub.insert_session(session.clone()) {
        return refuse_session(hub, state, None, why);
    }
    state.sessions.insert(id.clone());
    let m = &plugin.manifest;
    session.emit(
        json!({
            "event": "agent.session_created",
            "resume_token": token,
            "agent": {"name": m.name, "version": m.version, "tools": m.tools.iter().map(|t| &t.name).collect::<Vec<_>>()},
        }),
        &hub.metrics,
    );
}

/// One agent run on a session; emits everything through the session.
async fn run_session(
    hub: Arc<Hub>,
    session: Arc<Session>,
    cancel: CancellationToken,
    content: String,
) {
    let mut slot = session.agent.lock().await;
    let current = hub.plugin.current();
    if current.generation != slot.plugin.generation {
        // Hot reload: the conversation is kept, the agent comes from the new build.
        match current.new_instance() {
            Ok(instance) => {
                slot.plugin = current;
                slot.instance = instance;
                session.set_instance(&slot.instance);
            }
            Err(e) => {
                tracing::error!(error = %e, "new plugin build failed to create an agent; keeping the old one")
            }
        }
    }
    let AgentSlot {
        memory,
        plugin,
        instance,
    } = &mut *slot;
    let sink = SessionSink {
        session: &session,
        metrics: &hub.metrics,
    };
    let ctx = RunContext {
        model: &hub.model,
        manifest: &plugin.manifest,
        instance,
        config: &hub.agent_config,
        sink: &sink,
        cancel: &cancel,
        tracer: hub.tracer.as_ref(),
        metrics: &hub.metrics,
        session_id: &session.id,
    };
    let outcome = run_agent(&ctx, memory, &content).await;
    if outcome == RunOutcome::Cancelled {
        session.finish_run(json!({"event": "agent.interrupted"}), &hub.metrics);
    }
}

async fn custom_event(hub: Arc<Hub>, session: Arc<Session>, event: Value) {
    let instance = session.instance();
    // A hook gets as long as a tool call.
    let timeout = hub
        .plugin
        .current()
        .manifest
        .tool_timeout_ms
        .map(std::time::Duration::from_millis)
        .unwrap_or(hub.agent_config.tool_timeout);
    match instance
        .handle_event(&session.id, event.to_string(), timeout)
        .await
    {
        Ok(events) => {
            for ev in events {
                if ev.get("event").and_then(Value::as_str).is_some() {
                    session.emit(ev, &hub.metrics);
                } else {
                    tracing::warn!("plugin event handler returned an event without an `event` name; dropped");
                }
            }
        }
        Err(e) => session.emit(json!({"event": "agent.error", "error": format!("Custom event failed: {e}"), "code": "custom_event_failed"}), &hub.metrics),
    }
}

/// The connection is gone: its sessions wait `resume_window` for a resume, then end.
fn release_sessions(hub: &Arc<Hub>, state: &ConnState) {
    for id in &state.sessions {
        let Some(session) = hub.session(id) else {
            continue;
        };
        let Some(epoch) = session.detach(state.id) else {
            continue;
        };
        if hub.shutdown.is_cancelled() {
            session.cancel();
            hub.remove_session(id);
            continue;
        }
        let hub2 = hub.clone();
        let window = hub.config.resume_window;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(window) => {}
                _ = hub2.shutdown.cancelled() => {}
            }
            if session.still_detached(epoch) {
                session.cancel();
                hub2.remove_session(&session.id);
                tracing::debug!(session_id = %session.id, "session expired without resume");
            }
        });
    }
}
