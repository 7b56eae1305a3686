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
use std::net::IpAddr;
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
    /// WebSocket connections per client address at most (0: no limit); more get HTTP 429.
    pub max_connections_per_ip: usize,
    pub max_sessions_per_connection: usize,
    /// Sessions alive at once (attached or waiting for a resume), over all clients.
    pub max_sessions: usize,
    /// Sessions per client address at most (0: no limit).
    pub max_sessions_per_ip: usize,
    /// Peers whose `X-Forwarded-For` is believed (a reverse proxy such as nginx): the client
    /// address is then the right-most address in that header that is not itself a trusted proxy.
    pub trusted_proxies: Vec<IpAddr>,
    /// An HTTP request's headers must arrive within this (slowloris); also bounds the time from
    /// the `101 Switching Protocols` answer to a working WebSocket.
    pub header_read_timeout: Duration,
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

/// Everything connections share.
pub struct Hub {
    pub config: ServerConfig,
    pub plugin: Arc<PluginSlot>,
    pub model: Model,
    pub agent_config: AgentConfig,
    pub tracer: Option<TraceWriter>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    sessions: Mutex<SessionTable>,
    /// Open WebSocket connections per client address (only kept with a per-address limit).
    conns_per_ip: Mutex<HashMap<IpAddr, usize>>,
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
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            sessions: Mutex::new(SessionTable::default()),
            conns_per_ip: Mutex::new(HashMap::new()),
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

    fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.table().map.get(id).cloned()
    }

    /// Whether one more session for `ip` would be within the global and per-address caps.
    /// Checked before the plugin's factory runs, and again, atomically, by [`Hub::insert_session`].
    pub fn session_room(&self, ip: IpAddr) -> Result<(), SessionRefusal> {
        self.table().room(&self.config, ip)
    }

    /// Adds a session unless that would break the global or per-address cap.
    pub fn insert_session(&self, s: Arc<Session>) -> Result<(), SessionRefusal> {
        let mut t = self.table();
        if let Err(why) = t.room(&self.config, s.client_ip) {
            drop(t);
            self.metrics.sessions_refused.inc();
            return Err(why);
        }
        if self.config.max_sessions_per_ip > 0 {
            *t.per_ip.entry(s.client_ip).or_default() += 1;
        }
        t.map.insert(s.id.clone(), s);
        drop(t);
        self.metrics.sessions.inc();
        self.metrics.sessions_total.inc();
        Ok(())
    }

    pub fn remove_session(&self, id: &str) -> Option<Arc<Session>> {
        let mut t = self.table();
        let s = t.map.remove(id);
        if let Some(s) = &s {
            if let Some(n) = t.per_ip.get_mut(&s.client_ip) {
                *n -= 1;
                if *n == 0 {
                    t.per_ip.remove(&s.client_ip);
                }
            }
        }
        drop(t);
        if s.is_some() {
            self.metrics.sessions.dec();
        }
        s
    }

    pub fn active_sessions(&self) -> usize {
        self.table().map.len()
    }

    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.table().map.values().cloned().collect()
    }

    /// Takes a WebSocket connection slot for `ip`, or `None` when that address is at
    /// `max_connections_per_ip`. The slot is given back when the returned guard drops.
    pub fn connection_slot_for(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let max = self.config.max_connections_per_ip;
        if max == 0 {
            return Some(IpSlot { hub: None, ip });
        }
        let mut m = self.conns_per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            hub: Some(self.clone()),
            ip,
        })
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

/// Every session, and how many each client address holds.
#[derive(Default)]
struct SessionTable {
    map: HashMap<String, Arc<Session>>,
    /// Only kept when `max_sessions_per_ip` is set.
    per_ip: HashMap<IpAddr, usize>,
}

impl SessionTable {
    fn room(&self, config: &ServerConfig, ip: IpAddr) -> Result<(), SessionRefusal> {
        if self.map.len() >= config.max_sessions {
            return Err(SessionRefusal::Server(config.max_sessions));
        }
        let max_ip = config.max_sessions_per_ip;
        if max_ip > 0 && self.per_ip.get(&ip).copied().unwrap_or(0) >= max_ip {
            return Err(SessionRefusal::Address(max_ip));
        }
        Ok(())
    }
}

/// Why a session could not be created (the client gets `too_many_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The server holds `max_sessions`.
    Server(usize),
    /// The client's address holds `max_sessions_per_ip`.
    Address(usize),
    /// The connection holds `max_sessions_per_connection`.
    Connection(usize),
}

impl std::fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRefusal::Server(n) => write!(f, "Too many sessions on this server (limit {n}); close a session or try again later"),
            SessionRefusal::Address(n) => write!(f, "Too many sessions from your address (limit {n}); close a session first"),
            SessionRefusal::Connection(n) => write!(f, "Too many sessions on this connection (limit {n})"),
        }
    }
}

/// A WebSocket connection's place under `max_connections_per_ip`; released on drop.
pub struct IpSlot {
    /// `None` when there is no per-address limit (nothing to release).
    hub: Option<Arc<Hub>>,
    pub ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(hub) = &self.hub {
            let mut m = hub.conns_per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
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
