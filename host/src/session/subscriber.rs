//! Who watches a session: the engine publishes each session's numbered events to the one
//! [`Subscriber`] that owns it now (a WebSocket connection, or another door's stream), and
//! answers a request through the [`Client`] that made it. A door implements [`Subscriber`];
//! the engine knows no transport.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::event::{ErrorCode, ServerEvent};

/// Where a session's events go: queued, never blocking the engine.
pub trait Subscriber: Send + Sync {
    /// Unique among the host's subscribers.
    fn id(&self) -> u64;
    /// Queues one frame.
    fn send(&self, frame: Utf8Bytes);
    /// Queues a model read's frames, taken from `frames` (whose room the session keeps for
    /// the next read), and wakes the writer once: one queue lock a read, not one a piece.
    fn send_pieces(&self, frames: &mut Vec<Utf8Bytes>);
    /// Queues a replay, accepted whole (its size is bounded by the session's replay buffer).
    fn send_batch(&self, frames: Vec<Utf8Bytes>);
}

/// A subscriber, shared by the sessions it owns.
pub type Sub = Arc<dyn Subscriber>;

/// Queues `event` about `session_id` outside its numbered log (answers to requests).
pub fn send_about(sub: &dyn Subscriber, session_id: Option<&str>, event: &ServerEvent) {
    sub.send(event.frame_about(session_id));
}

/// A door's client as sessions see it: where its events go, who it is, what it holds.
pub struct Client {
    pub sub: Sub,
    /// The client's address (behind a trusted proxy: from `X-Forwarded-For`).
    pub ip: IpAddr,
    /// Sessions this client created or resumed (some may have moved on).
    pub(super) sessions: HashSet<String>,
    /// Who the client authenticated as; None: anonymous (no tokens configured).
    pub principal: Option<super::principal::Principal>,
    /// Whether it can decide tool approvals (a WebSocket client declares the `tool_approval`
    /// capability when it creates or resumes a session; doors that always can say so).
    pub approves: bool,
    /// Tools the client runs itself (AG-UI's frontend tools), offered to the model in the runs
    /// its messages start; WebSocket clients offer none.
    pub tools: Vec<crate::llm::ToolSpec>,
    /// The trace of the request that opened the connection (its `traceparent` header): the
    /// parent of the runs the client's messages start, unless a message names its own.
    pub trace: Option<crate::otel::TraceParent>,
}

impl Client {
    pub fn new(sub: Sub, ip: IpAddr) -> Client {
        Client {
            sub,
            ip,
            sessions: HashSet::new(),
            principal: None,
            approves: true,
            tools: Vec::new(),
            trace: None,
        }
    }

    /// The user the client's sessions belong to (None: anonymous).
    pub fn user(&self) -> Option<&std::sync::Arc<str>> {
        self.principal.as_ref().map(|p| &p.user)
    }

    pub fn id(&self) -> u64 {
        self.sub.id()
    }

    /// Answers with an `agent.error` about `session_id`.
    pub fn error(&self, session_id: Option<&str>, code: ErrorCode, text: &str) {
        send_about(&*self.sub, session_id, &ServerEvent::error(code, text));
    }

    /// Answers with `event` about `session_id`, outside the session's log.
    pub fn send_about(&self, session_id: Option<&str>, event: &ServerEvent) {
        send_about(&*self.sub, session_id, event);
    }
}
