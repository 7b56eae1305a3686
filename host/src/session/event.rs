//! What the session engine publishes (and every door encodes from): [`ServerEvent`] and the [`ErrorCode`] on every error, and how each
//! becomes a frame (a session's events also get `session_id` and `seq`; every frame a
//! `timestamp`).

use crate::agent::usage::UsageTotals;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::time::Timestamp;

mod encode;
mod entries;
mod meta;
pub use entries::{Exceeded, ServedAgent, SessionEntry};
pub use meta::{
    AnswerMeta, ApprovalMeta, FinalMeta, HandoffMeta, ThinkingMeta, ToolCallMeta, ToolResultMeta,
};

/// Double texting: what a `user.message` does when the session is already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnBusy {
    /// Refuse it (`already_running`), as the MyAgent design does.
    #[default]
    Reject,
    /// Run it after the current run (and any queued before it).
    Enqueue,
    /// Cancel the current run (and the queue), then run it.
    Interrupt,
}

/// The stable code on every `agent.error` (docs/protocol.md, "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    MissingEvent,
    UnknownEvent,
    MissingField,
    InvalidField,
    BinaryFrame,
    MessageTooLarge,
    SessionNotFound,
    AlreadyRunning,
    TooManySessions,
    ResumeGap,
    PluginError,
    RunFailed,
    CustomEventFailed,
    EventTooLarge,
    ApprovalNotPending,
    StoreUnavailable,
    HistoryPending,
    TooManyRequests,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
}

impl ErrorCode {
    /// Every code, for documentation checks and fuzzing.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidMessage,
        ErrorCode::MissingEvent,
        ErrorCode::UnknownEvent,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::BinaryFrame,
        ErrorCode::MessageTooLarge,
        ErrorCode::SessionNotFound,
        ErrorCode::AlreadyRunning,
        ErrorCode::TooManySessions,
        ErrorCode::ResumeGap,
        ErrorCode::PluginError,
        ErrorCode::RunFailed,
        ErrorCode::CustomEventFailed,
        ErrorCode::EventTooLarge,
        ErrorCode::ApprovalNotPending,
        ErrorCode::StoreUnavailable,
        ErrorCode::HistoryPending,
        ErrorCode::TooManyRequests,
        ErrorCode::QuotaExceeded,
        ErrorCode::RateLimited,
        ErrorCode::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MissingEvent => "missing_event",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::AlreadyRunning => "already_running",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::ResumeGap => "resume_gap",
            ErrorCode::PluginError => "plugin_error",
            ErrorCode::RunFailed => "run_failed",
            ErrorCode::CustomEventFailed => "custom_event_failed",
            ErrorCode::EventTooLarge => "event_too_large",
            ErrorCode::ApprovalNotPending => "approval_not_pending",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::HistoryPending => "history_pending",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthenticated => "unauthenticated",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent as clients see it (in `system.connected`, `agent.session_created`, reloads).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentInfo {
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}

/// The build still serving after a refused reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Serving {
    /// The agent whose reload was refused.
    pub name: String,
    pub version: String,
    pub generation: u64,
}

/// Everything the server sends (besides a plugin's own custom events). Session events get
/// `session_id`, `seq` and `timestamp` from their session ([`ServerEvent::frame_in_session`]);
/// the others get a `timestamp` ([`ServerEvent::frame`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event")]
pub enum ServerEvent {
    /// Right after the WebSocket opens.
    #[serde(rename = "system.connected")]
    Connected {
        connection_id: String,
        /// The default agent (the first served).
        agent: AgentInfo,
        /// Every agent served, the default first.
        agents: Vec<ServedAgent>,
        auth_required: bool,
        /// The largest client message accepted (a client can size images to fit).
        max_message_bytes: usize,
    },
    #[serde(rename = "system.plugin_reloaded")]
    PluginReloaded { agent: AgentInfo },
    #[serde(rename = "system.plugin_reload_failed")]
    PluginReloadFailed { error: String, serving: Serving },
    /// A plugin build's worker process died (the calls in flight on it failed); it restarts
    /// for the next call, after `restart_in_ms`.
    #[serde(rename = "system.plugin_crashed")]
    PluginCrashed {
        agent: AgentInfo,
        reason: String,
        /// Crashes of this build so far.
        crashes: u64,
        restart_in_ms: u64,
    },
    /// A missing or wrong token; the connection closes with 1008.
    #[serde(rename = "auth.error")]
    AuthError { error: String },
    #[serde(rename = "agent.session_created")]
    SessionCreated {
        /// Only in the frame the creating client receives: the numbered log — replayed to a
        /// resuming client, written to the store — holds the event without it.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        agent: AgentInfo,
        /// The session's own settings, when it asked for any.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_config: Option<crate::agent::SessionSettings>,
    },
    /// Sent before the replayed events (it carries no `seq`).
    #[serde(rename = "agent.session_resumed")]
    SessionResumed {
        /// The session's agent (of several served, the one it talks to).
        agent: AgentInfo,
        last_seq: u64,
        replayed: usize,
        recovered: bool,
        /// Tool calls still waiting for a decision (present when there are any), whether or not
        /// their `agent.tool_approval_required` was among the replayed events.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pending_approvals: Vec<crate::agent::PendingApproval>,
        /// The session's model usage over its life.
        usage: UsageTotals,
    },
    /// A run's model usage and the session's totals, before its `agent.ready`.
    #[serde(rename = "agent.usage")]
    Usage {
        run: UsageTotals,
        session: UsageTotals,
    },
    #[serde(rename = "agent.session_closed")]
    SessionClosed,
    #[serde(rename = "agent.thinking")]
    Thinking {
        content: String,
        metadata: ThinkingMeta,
    },
    #[serde(rename = "agent.partial_answer")]
    PartialAnswer {
        content: String,
        metadata: AnswerMeta,
    },
    #[serde(rename = "agent.tool_call")]
    ToolCall {
        step_id: String,
        content: String,
        metadata: ToolCallMeta,
    },
    /// The call `step_id` waits for a person's approval (`user.tool_approval`).
    #[serde(rename = "agent.tool_approval_required")]
    ToolApprovalRequired {
        step_id: String,
        content: String,
        metadata: ApprovalMeta,
    },
    #[serde(rename = "agent.tool_result")]
    ToolResult {
        step_id: String,
        content: String,
        metadata: ToolResultMeta,
    },
    /// The model handed the conversation over (`transfer_to_<agent>`): the turn goes on under
    /// `to`, which gets the session's next messages.
    #[serde(rename = "agent.handoff")]
    Handoff {
        step_id: String,
        from: String,
        to: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        metadata: HandoffMeta,
    },
    #[serde(rename = "agent.final_answer")]
    FinalAnswer {
        content: String,
        metadata: FinalMeta,
    },
    #[serde(rename = "agent.error")]
    Error {
        error: String,
        code: ErrorCode,
        /// For `quota_exceeded` and `rate_limited`: which limit, and when to try again.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        exceeded: Option<Exceeded>,
    },
    /// The run ended before its answer. `reason` is absent for a cancel (the client's, or an
    /// interrupting message) and `host_lost` for a turn whose host stopped mid-run (found when a
    /// durable session is resumed).
    #[serde(rename = "agent.interrupted")]
    Interrupted {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    #[serde(rename = "agent.ready")]
    Ready,
    /// A message that arrived while the session was running waits (`on_busy`); `position` 1
    /// runs next.
    #[serde(rename = "agent.message_queued")]
    MessageQueued { position: usize },
    /// Answer to `user.get_history`: the conversation the agent remembers, in the OpenAI chat
    /// format, and how many older turns the memory budget dropped.
    #[serde(rename = "agent.history")]
    History {
        messages: Vec<crate::llm::ChatMessage>,
        dropped_turns: u64,
    },
    /// Answer to `user.list_sessions`: the principal's sessions, newest first, and the cursor
    /// of the next page (absent on the last).
    #[serde(rename = "agent.sessions")]
    Sessions {
        sessions: Vec<SessionEntry>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_before: Option<String>,
    },
    /// Answer to `user.delete_session`: the session and its stored events are gone.
    #[serde(rename = "agent.session_deleted")]
    SessionDeleted,
}

/// The largest frame the server sends; a bigger event is replaced by an `agent.error`
/// (`event_too_large`) in its place in the log (the writer's buffer allows two of these).
pub const MAX_EVENT_BYTES: usize = 4 << 20;

impl ServerEvent {
    /// Every event name, in the order of the enum (checked against docs/protocol.md).
    pub const NAMES: [&'static str; 23] = [
        "system.connected",
        "system.plugin_reloaded",
        "system.plugin_reload_failed",
        "auth.error",
        "agent.session_created",
        "agent.session_resumed",
        "agent.session_closed",
        "agent.thinking",
        "agent.partial_answer",
        "agent.tool_call",
        "agent.tool_result",
        "agent.final_answer",
        "agent.error",
        "agent.interrupted",
        "agent.ready",
        "agent.message_queued",
        "agent.history",
        "agent.tool_approval_required",
        "system.plugin_crashed",
        "agent.usage",
        "agent.sessions",
        "agent.session_deleted",
        "agent.handoff",
    ];

    /// The `event` name of an encoded frame (one this module wrote — on this host or, for a
    /// session followed from a shared store, on another); None if it has none.
    pub fn name_of_frame(frame: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            event: std::borrow::Cow<'a, str>,
        }
        serde_json::from_str::<Head>(frame)
            .ok()
            .map(|h| h.event.into_owned())
    }

    /// The `event` name.
    pub fn name(&self) -> &'static str {
        let i = match self {
            ServerEvent::Connected { .. } => 0,
            ServerEvent::PluginReloaded { .. } => 1,
            ServerEvent::PluginReloadFailed { .. } => 2,
            ServerEvent::AuthError { .. } => 3,
            ServerEvent::SessionCreated { .. } => 4,
            ServerEvent::SessionResumed { .. } => 5,
            ServerEvent::SessionClosed => 6,
            ServerEvent::Thinking { .. } => 7,
            ServerEvent::PartialAnswer { .. } => 8,
            ServerEvent::ToolCall { .. } => 9,
            ServerEvent::ToolResult { .. } => 10,
            ServerEvent::FinalAnswer { .. } => 11,
            ServerEvent::Error { .. } => 12,
            ServerEvent::Interrupted { .. } => 13,
            ServerEvent::Ready => 14,
            ServerEvent::MessageQueued { .. } => 15,
            ServerEvent::History { .. } => 16,
            ServerEvent::ToolApprovalRequired { .. } => 17,
            ServerEvent::PluginCrashed { .. } => 18,
            ServerEvent::Usage { .. } => 19,
            ServerEvent::Sessions { .. } => 20,
            ServerEvent::SessionDeleted => 21,
            ServerEvent::Handoff { .. } => 22,
        };
        Self::NAMES[i]
    }

    /// An `agent.error` with its code.
    pub fn error(code: ErrorCode, error: impl Into<String>) -> ServerEvent {
        ServerEvent::Error {
            error: error.into(),
            code,
            exceeded: None,
        }
    }

    /// An `agent.error` for a message over a principal's quota or rate.
    pub fn exceeded(code: ErrorCode, error: impl Into<String>, what: Exceeded) -> ServerEvent {
        ServerEvent::Error {
            error: error.into(),
            code,
            exceeded: Some(what),
        }
    }
}

/// A session's arena ([`ServerEvent::frame_in_arena`]) takes a new block of this size when
/// less than [`ARENA_MIN_ROOM`] is left in the one it writes to (a streamed piece's frame is
/// ~200 bytes: about twenty frames a block).
pub const ARENA_BLOCK: usize = 4096;
pub const ARENA_MIN_ROOM: usize = 512;

/// Stamps a plugin's custom event (a JSON object with `event`) for a session's log.
pub fn custom_frame(mut event: Map<String, Value>, session_id: &str, seq: u64) -> Utf8Bytes {
    event.insert("session_id".into(), Value::String(session_id.to_owned()));
    event.insert("seq".into(), seq.into());
    event.insert("timestamp".into(), Timestamp::now().as_str().into());
    Utf8Bytes::from(Value::Object(event).to_string())
}

#[cfg(test)]
mod tests;
