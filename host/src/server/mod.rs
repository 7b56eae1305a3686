//! The WebSocket door: the accept loop, HTTP endpoints on the same port ([`http`]), one task
//! per WebSocket ([`connection`], transport only) whose requests become calls on the session
//! engine ([`dispatch`], `crate::session`), plugin notices to every connection ([`notices`]),
//! and graceful shutdown. Nothing in the submodules reaches back up into this file: it only wires them.
//!
//! Shutdown goes in three steps (as in mini-redis): detect (the `shutdown` future passed to
//! [`run`]), tell (`Lifecycle::shutdown` stops accepting and runs are cancelled; then
//! `Lifecycle::close_all` makes every connection flush and send a 1001 close), wait (task
//! trackers, bounded by `ServerConfig::shutdown_timeout`).

pub(crate) mod a2a;
pub(crate) mod agui;
pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod connections;
mod dispatch;
mod door;
pub(crate) mod forwarded;
pub(crate) mod gate;
pub(crate) mod http;
mod notices;
pub mod outbox;
mod page;
pub mod protocol;
mod reply;
mod sse;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::agent::AgentRuntime;
use crate::session::{Lifecycle, SessionConfig, Sessions};
use crate::store::Store;
pub use auth::Auth;
pub use config::ServerConfig;
use connection::ConnDeps;
use connections::Connections;
pub use forwarded::ProxyRange;
use http::Gateway;

/// Builds the gateway's parts for `runtime`: the session engine (over `store`, if sessions
/// outlive the process), the connection registry.
pub fn gateway(
    config: ServerConfig,
    sessions: SessionConfig,
    store: Option<Arc<Store>>,
    runtime: Arc<AgentRuntime>,
) -> Arc<Gateway> {
    let metrics = runtime.metrics.clone();
    let lifecycle = Arc::new(Lifecycle::default());
    let auth = Arc::new(Auth::new(
        sessions.principals.clone(),
        config.allowed_origins.clone(),
        config.allowed_hosts.clone(),
    ));
    let connections = Connections::new(config.max_connections_per_ip, metrics.clone());
    let sessions = Sessions::new(sessions, store, runtime, lifecycle.clone());
    Arc::new(Gateway {
        deps: ConnDeps {
            config: Arc::new(config),
            auth,
            sessions,
            connections,
            lifecycle,
            metrics,
        },
        started: Instant::now(),
        a2a: Default::default(),
        agui: Default::default(),
    })
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
pub async fn run(listener: TcpListener, gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let deps = &gw.deps;
    let reload_task = tokio::spawn(notices::forward_reload_notices(
        deps.sessions.runtime().clone(),
        deps.connections.clone(),
    ));
    let trim_task = tokio::spawn(return_freed_memory());
    // Accepting goes on while runs drain, so health checks see `shutting_down` (upgrades are
    // refused with 503 meanwhile); it stops when connections are told to close.
    let mut accept = tokio::spawn(accept_loop(listener, gw.clone()));
    tokio::select! {
        _ = &mut accept => {}
        _ = shutdown => tracing::info!("shutdown requested"),
    }
    reload_task.abort();
    trim_task.abort();
    graceful_shutdown(deps, accept.abort_handle()).await;
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

async fn accept_loop(listener: TcpListener, gw: Arc<Gateway>) {
    let max = gw.deps.config.max_connections;
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
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
            gw.deps.metrics.connections_refused.inc();
            tracing::warn!(%peer, max, "connection cap reached; refusing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        gw.deps
            .lifecycle
            .conns
            .spawn(http::serve_http(stream, peer, gw.clone(), Arc::new(permit)));
    }
}

async fn graceful_shutdown(deps: &ConnDeps, accept: tokio::task::AbortHandle) {
    let deadline = tokio::time::Instant::now() + deps.config.shutdown_timeout;
    let life = &deps.lifecycle;
    life.shutdown.cancel();
    let cancelled = deps.sessions.cancel_all();
    tracing::info!(
        cancelled_runs = cancelled,
        "stopping: WebSocket upgrades refused, running sessions interrupted"
    );
    life.runs.close();
    let _ = tokio::time::timeout_at(deadline, life.runs.wait()).await;
    accept.abort();
    life.close_all.cancel();
    life.conns.close();
    if tokio::time::timeout_at(deadline, life.conns.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached with connections still open; exiting anyway");
    }
}
