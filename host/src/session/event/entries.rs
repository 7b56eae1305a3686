//! The payloads of the principal-level answers: a session list's entries (`agent.sessions`)
//! and what a refused message was over (`quota_exceeded`, `rate_limited`) — and the agents a
//! host serves (`system.connected.agents`).

use serde::Serialize;

use crate::agent::usage::UsageTotals;
use crate::store::Listed;
use crate::time::Timestamp;

/// One session of `agent.sessions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionEntry {
    pub session_id: String,
    /// The first user message (at most 80 characters); empty before it.
    pub title: String,
    pub agent: String,
    pub created_at: String,
    pub updated_at: String,
    pub turns: u64,
    pub running: bool,
    pub usage: UsageTotals,
}

impl SessionEntry {
    pub fn of(l: Listed) -> SessionEntry {
        let at = |ms: i64| {
            Timestamp::at(std::time::Duration::from_millis(ms.max(0) as u64))
                .as_str()
                .to_owned()
        };
        SessionEntry {
            title: l.listing.title,
            agent: l.listing.agent,
            created_at: at(l.listing.created),
            updated_at: at(l.updated),
            turns: l.listing.turns,
            running: l.running,
            usage: serde_json::from_str(&l.usage).unwrap_or_default(),
            session_id: l.id,
        }
    }
}

/// The limit a refused message was over (on `agent.error`, `quota_exceeded` and
/// `rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exceeded {
    /// Which: `tokens_per_day`, `tokens_per_hour`, `messages_per_minute`, `concurrent_runs`.
    pub quota: &'static str,
    pub limit: u64,
    pub used: u64,
    /// When to try again (for `concurrent_runs`: 0, it frees when a run ends).
    pub retry_after_ms: u64,
}

/// One agent the host serves (`system.connected.agents`): what `user.create_session.agent`
/// names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServedAgent {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Questions to start with (the plugin's starters), when it declares any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub starters: Vec<String>,
}

impl ServedAgent {
    pub fn of(plugin: &crate::plugin::Plugin) -> ServedAgent {
        let m = &plugin.manifest;
        ServedAgent {
            name: m.name.clone(),
            version: m.version.clone(),
            description: m.description.clone(),
            starters: m.starters.clone(),
        }
    }
}
