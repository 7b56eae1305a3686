//! The WebSocket gateway: accept loop, the shared [`Hub`] (sessions, connections, plugin,
//! model), HTTP endpoints on the same port, and graceful shutdown.
//!
//! Shutdown goes in three steps (as in mini-redis): detect (the `shutdown` future passed to
//! [`run`]), tell (`Hub::shutdown` stops accepting and cancels runs; `Hub::close_all` then makes
//! every connection flush and send a 1001 close), wait (task trackers, bounded by
//! `ServerConfig::shutdown_timeout`).

pub mod connection;
pub mod http;
pub mod protocol;
pub mod session;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{AgentConfig, TraceWriter};
use crate::llm::Model;
use crate::metrics::Metrics;
use crate::plugin::reload::PluginSlot;
use connection::ConnHandle;
use session::Session;

/// Limits and policies of the gateway. Defaults are documented in README.md.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Open TCP connections (HTTP and WebSocket) at most; more are refused at accept.
    pub max_connections: usize,
    pub max_sessions_per_connection: usize,
    /// Larger client messages get an `agent.error` (code `message_too_large`) and are dropped.
    pub max_message_bytes: usize,
    /// Larger frames close the connection with 1009 (they are not even buffered).
    pub max_frame_bytes: usize,
    /// tungstenite's read buffer per connection (its 128 KiB default costs ~135 KB per client).
    pub read_buffer_bytes: usize,
    /// Outbound events queued per connection before it is closed as too slow (4008).
    pub outbound_queue: usize,
    /// Bytes of past events kept per session for resume.
    pub replay_buffer_bytes: usize,
    pub ping_interval: Duration,
    /// A peer silent for `ping_interval + pong_timeout` is dropped.
    pub pong_timeout: Duration,
    /// How long a session (and its run) outlives its connection, waiting for a resume.
    pub resume_window: Duration,
    pub shutdown_timeout: Duration,
    /// Accepted tokens; empty means no authentication.
    pub auth_tokens: Vec<String>,
    /// Accepted `Origin` headers; empty means any.
    pub allowed_origins: Vec<String>,
    /// Serve a WebSocket echo on `/_echo` (same stack and limits), for conformance testing
    /// with the Autobahn fuzzing client. Off by default.
    pub conformance_echo: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 16_000,
            max_sessions_per_connection: 16,
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 1024 * 1024,
            read_buffer_bytes: 4096,
            outbound_queue: 1024,
            replay_buffer_bytes: 256 * 1024,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            resume_window: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            auth_tokens: Vec::new(),
            allowed_origins: Vec::new(),
            conformance_echo: false,
        }
    }
}

/// Everything connections share.
pub struct Hub {
    pub config: ServerConfig,
    pub plugin: Arc<PluginSlot>,
    pub model: Model,
    pub agent_config: AgentConfig,
    pub tracer: Option<TraceWriter>,
    pub metrics: Metrics,
    pub started: Instant,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Live connections, for broadcasts (plugin reloads).
    connections: Mutex<HashMap<u64, ConnHandle>>,
    next_conn: AtomicU64,
    /// Cancelled first on shutdown: stop accepting, cancel runs.
    pub shutdown: CancellationToken,
    /// Cancelled once runs have wound down: connections flush and close with 1001.
    pub close_all: CancellationToken,
    /// Agent runs and other session work; waited for on shutdown.
    pub runs: TaskTracker,
    /// Connection tasks; waited for on shutdown.
    pub conns: TaskTracker,
}

impl Hub {
    pub fn new(
        config: ServerConfig,
        plugin: Arc<PluginSlot>,
        model: Model,
        agent_config: AgentConfig,
        tracer: Option<TraceWriter>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            config,
            plugin,
            model,
            agent_config,
            tracer,
            metrics: Metrics::default(),
            started: Instant::now(),
            sessions: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            close_all: CancellationToken::new(),
            runs: TaskTracker::new(),
            conns: TaskTracker::new(),
        })
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn insert_session(&self, s: Arc<Session>) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id.clone(), s);
        self.metrics.sessions.inc();
        self.metrics.sessions_total.inc();
    }

    pub fn remove_session(&self, id: &str) -> Option<Arc<Session>> {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if s.is_some() {
            self.metrics.sessions.dec();
        }
        s
    }

    pub fn active_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn register_connection(&self, h: ConnHandle) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.id, h);
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Sends a connection-level event (no session, no seq) to every connection.
    pub fn broadcast(&self, event: &serde_json::Value) {
        let text = tokio_tungstenite::tungstenite::Utf8Bytes::from(event.to_string());
        for h in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            h.send(text.clone());
            self.metrics.events_sent.inc();
        }
    }
}

/// Listens on `addr` (`host:port`; the first address that binds) with a deep accept backlog:
/// a burst of connections (a reconnect storm, a load test) must not overflow the kernel's queue,
/// whose overflow costs each dropped client a one-second SYN retransmit.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolved to nothing",
        )
    }))
}

/// Serves `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(listener: TcpListener, hub: Arc<Hub>, shutdown: impl Future<Output = ()>) {
    let reload_task = tokio::spawn(http::forward_reload_notices(hub.clone()));
    let trim_task = tokio::spawn(return_freed_memory());
    let accept = accept_loop(listener, hub.clone());
    tokio::select! {
        _ = accept => {}
        _ = shutdown => tracing::info!("shutdown requested"),
    }
    reload_task.abort();
    trim_task.abort();
    graceful_shutdown(&hub).await;
}

/// glibc keeps memory freed after a burst (queued events, replay buffers of expired sessions)
/// mapped in its arenas; RSS then stays near the peak. Every 30 s, hand free pages back.
async fn return_freed_memory() {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    every.tick().await;
    loop {
        every.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory; it has no preconditions.
            unsafe { libc::malloc_trim(0) }
        })
        .await;
    }
}

async fn accept_loop(listener: TcpListener, hub: Arc<Hub>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(hub.config.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning on a full fd table.
                tracing::error!(error = %e, "accept failed; backing off 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            hub.metrics.connections_refused.inc();
            tracing::warn!(%peer, max = hub.config.max_connections, "connection cap reached; refusing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let hub2 = hub.clone();
        hub.conns
            .spawn(http::serve_http(stream, peer, hub2, Arc::new(permit)));
    }
}

async fn graceful_shutdown(hub: &Arc<Hub>) {
    let deadline = tokio::time::Instant::now() + hub.config.shutdown_timeout;
    hub.shutdown.cancel();
    let cancelled = hub.all_sessions().iter().filter(|s| s.cancel()).count();
    tracing::info!(
        cancelled_runs = cancelled,
        "stopping: no new connections; running sessions interrupted"
    );
    hub.runs.close();
    let _ = tokio::time::timeout_at(deadline, hub.runs.wait()).await;
    hub.close_all.cancel();
    hub.conns.close();
    if tokio::time::timeout_at(deadline, hub.conns.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached with connections still open; exiting anyway");
    }
}
