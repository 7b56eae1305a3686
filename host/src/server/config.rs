//! The gateway's limits and policies. Built by the CLI from its arguments (where every default
//! lives, documented in README.md); there is no `Default` here on purpose.

use std::time::Duration;

/// Connections, HTTP and shutdown.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Open TCP connections (HTTP and WebSocket) at most; more are refused at accept.
    pub max_connections: usize,
    /// WebSocket connections per client address at most (0: no limit); more get HTTP 429.
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` is believed (a reverse proxy such as nginx).
    pub trusted_proxies: Vec<crate::server::forwarded::ProxyRange>,
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
    /// A write (or flush) to a client that takes longer drops the connection: the client has
    /// stopped reading and its socket buffer is full.
    pub write_timeout: Duration,
    pub ping_interval: Duration,
    /// A peer silent for `ping_interval + pong_timeout` is dropped.
    pub pong_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// A client that has not authenticated (when tokens are required) within this is closed.
    pub auth_timeout: Duration,
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
    /// Accepted `Origin` headers; empty: same-origin or localhost pages; `*`: any.
    pub allowed_origins: Vec<String>,
    /// Accepted `Host` names besides IP literals and `localhost`; `*`: any.
    pub allowed_hosts: Vec<String>,
    /// Serve a WebSocket echo on `/_echo` (same stack and limits), for conformance testing
    /// with the Autobahn fuzzing client.
    pub conformance_echo: bool,
}
