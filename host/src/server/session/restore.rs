//! Restoring a session from the durable store when a client resumes one this process does
//! not hold (after a restart, or after the resume window let it go from memory).

use std::sync::Arc;

use super::durable;
use super::log::{AgentSlot, Session};
use super::{Client, Sessions};
use crate::agent::{Memory, SessionSettings};
use crate::server::auth::constant_time_eq;
use crate::server::protocol::ErrorCode;

impl Sessions {
    /// A session this process does not hold may be in the durable store (the host restarted,
    /// or the resume window let it go from memory): with the right token it is rebuilt — memory,
    /// settings, the tail of its log — on the current plugin build. A turn that was running
    /// when its host stopped is closed now: recorded as interrupted, and the client gets
    /// `agent.interrupted` with reason `host_lost` once it has resumed.
    /// Returns the session when a lost turn is to be announced (after the resume's replay).
    pub(super) async fn restore_if_stored(
        &self,
        client: &mut Client,
        session_id: &str,
        token: &str,
    ) -> Option<Arc<Session>> {
        let durable = self.config.durable.clone()?;
        if self.store.get(session_id).is_some() {
            return None;
        }
        let id = session_id.to_owned();
        let d = durable.clone();
        let stored = match tokio::task::spawn_blocking(move || d.load(&id)).await {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "session store read failed");
                client.error(
                    Some(session_id),
                    ErrorCode::StoreUnavailable,
                    &format!("Cannot resume: {e}"),
                );
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "session store read failed");
                client.error(
                    Some(session_id),
                    ErrorCode::StoreUnavailable,
                    "Cannot resume: the session store read failed",
                );
                return None;
            }
        };
        if !constant_time_eq(&stored.token_hash, &durable::hash_token(token)) {
            return None; // the resume answers "Session not found"
        }
        if let Err(why) = self.store.room(client.ip) {
            self.refuse(client, Some(session_id), why);
            return None;
        }
        let plugin = self.runtime.plugin.current();
        let timeout = self.runtime.config.tool_timeout_for(&plugin.manifest);
        let instance = match plugin.instantiate(timeout).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                self.factory_failed(client, &e);
                return None;
            }
            Err(e) => {
                self.factory_failed(client, &e);
                return None;
            }
        };
        let settings: SessionSettings = serde_json::from_str(&stored.settings).unwrap_or_default();
        let settings = match settings.check(&plugin.manifest) {
            Ok(()) => settings,
            Err(_) => SessionSettings::default(),
        };
        #[derive(serde::Deserialize, Default)]
        struct SavedMemory {
            messages: Vec<crate::llm::ChatMessage>,
            dropped_turns: u64,
        }
        let saved: SavedMemory = serde_json::from_str(&stored.memory).unwrap_or_default();
        let mut memory = Memory::restore(
            self.runtime.config.memory_budget_chars,
            saved.messages,
            saved.dropped_turns,
        );
        let lost_turn = stored
            .running_input
            .as_deref()
            .and_then(|i| serde_json::from_str::<crate::llm::Content>(i).ok());
        if let Some(input) = &lost_turn {
            memory.push(crate::llm::ChatMessage::user(input.clone()));
            memory.push(crate::llm::ChatMessage::assistant(
                Some(crate::agent::INTERRUPTED_NOTE.into()),
                Vec::new(),
            ));
            memory.trim();
            durable.turn_end(session_id, &memory);
        }
        let slot = AgentSlot {
            memory,
            settings,
            plugin: plugin.clone(),
            instance,
        };
        let session = Arc::new(Session::new(
            session_id.to_owned(),
            token.to_owned(),
            slot,
            client.conn.clone(),
            client.ip,
            self.config.replay_buffer_bytes,
            self.budget.clone(),
            Some(durable.clone()),
        ));
        session.restore_log(stored.events);
        if let Err(why) = self.store.insert(session.clone()) {
            self.refuse(client, Some(session_id), why);
            return None;
        }
        self.runtime.metrics.sessions.inc();
        tracing::info!(
            session_id,
            lost_turn = lost_turn.is_some(),
            "session restored from the store"
        );
        lost_turn.map(|_| session)
    }
}
