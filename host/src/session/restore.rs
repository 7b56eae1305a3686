//! Restoring a session from the durable store when a client resumes one this process does
//! not hold (after a restart, or after the resume window let it go from memory).

use std::sync::Arc;

use super::event::ErrorCode;
use super::log::{Bound, Identity, Session};
use super::{Client, Sessions};
use crate::agent::{Memory, SessionSettings};
use crate::store::{hash_token, Access};

/// What resuming found in the store.
pub(super) enum Restored {
    /// Nothing restored (held here already, not stored, refused): the resume goes on as usual.
    None,
    /// Restored; its turn's host is gone: announce the lost turn after the replay.
    LostTurn(Arc<Session>),
    /// Restored while its turn runs on another host: follow that turn from the store after
    /// the replay (from stream entry `after`).
    Follow {
        session: Arc<Session>,
        after: Option<String>,
    },
}

impl Sessions {
    /// What `client` offers to have a session: its principal, and the hash of `token` if it
    /// gave one.
    pub(super) fn access(&self, client: &Client, token: Option<&str>) -> Access {
        Access {
            token_hash: token.filter(|t| !t.is_empty()).map(hash_token),
            owner: client.user().map(|u| u.to_string()),
        }
    }
}

/// Who a restored session is: as stored, now held for `client`'s address.
fn identity_of(session_id: &str, stored: &crate::store::Stored, client: &Client) -> Identity {
    Identity {
        id: session_id.to_owned(),
        token_hash: stored.token_hash.clone(),
        user: stored.owner.as_deref().map(Arc::from),
        client_ip: client.ip,
        listing: stored.listing.clone(),
    }
}

/// `memory` with `input`'s turn recorded as interrupted (its host stopped mid-turn).
pub(super) fn close_lost_turn(memory: &mut Memory, input: &str) -> bool {
    let Ok(input) = serde_json::from_str::<crate::llm::Content>(input) else {
        return false;
    };
    memory.push(crate::llm::ChatMessage::user(input));
    memory.push(crate::llm::ChatMessage::assistant(
        Some(crate::agent::INTERRUPTED_NOTE.into()),
        Vec::new(),
    ));
    memory.trim();
    true
}

impl Sessions {
    /// A shared store: a copy of `session_id` held here may be stale — another host took the
    /// session since (a client moved there, ran turns). Such a copy, idle, is let go, so the
    /// resume restores the store's.
    pub(super) async fn forget_if_taken_elsewhere(&self, session_id: &str) {
        let Some(shared) = self.store.as_ref().and_then(|d| d.shared()) else {
            return;
        };
        let Some(held) = self.registry.get(session_id) else {
            return;
        };
        if held.is_running() {
            return; // running here: this host is the one that took it last
        }
        if let Ok(Some(h)) = shared.holder(session_id).await {
            if h != shared.host_id() {
                tracing::info!(
                    session_id,
                    "session taken by another host since; restoring it from the store"
                );
                held.cancel();
                self.remove(session_id);
            }
        }
    }

    /// The agent a stored session talks to (as listed: made with, or handed to), if this host
    /// serves it; else the client is told the session cannot be resumed here.
    fn agent_of(
        &self,
        client: &Client,
        session_id: &str,
        agent: &str,
    ) -> Option<std::sync::Arc<crate::plugin::reload::PluginSlot>> {
        // A session stored before its agent was (an empty name) is the default agent's.
        let agents = &self.runtime.agents;
        let slot = match agent.is_empty() {
            true => Some(agents.first().clone()),
            false => agents.named(agent).cloned(),
        };
        if slot.is_none() {
            let why = format!("Cannot resume: this session's agent `{agent}` is not served here");
            client.error(Some(session_id), ErrorCode::SessionNotFound, &why);
        }
        slot
    }

    /// A session this process does not hold may be in the durable store (the host restarted,
    /// or the resume window let it go from memory): with the right token it is rebuilt — memory,
    /// settings, the tail of its log — on the current build of its agent. A turn that was running
    /// when its host stopped is closed now: recorded as interrupted, and the client gets
    /// `agent.interrupted` with reason `host_lost` once it has resumed.
    /// Returns the session when a lost turn is to be announced (after the resume's replay).
    pub(super) async fn restore_if_stored(
        &self,
        client: &mut Client,
        session_id: &str,
        token: Option<&str>,
        last_seq: u64,
    ) -> Restored {
        let Some(durable) = self.store.clone() else {
            return Restored::None;
        };
        if self.registry.get(session_id).is_some() {
            return Restored::None;
        }
        let access = self.access(client, token);
        if access.token_hash.is_none() && access.owner.is_none() {
            return Restored::None; // anonymous, without a token: "Session not found"
        }
        // The store checks the principal and the token before it reads anything else.
        let stored = match durable.load(session_id, Some(access)).await {
            Ok(Some(s)) => s,
            Ok(None) => return Restored::None,
            Err(e) => {
                tracing::error!(error = %e, "session store read failed");
                client.error(
                    Some(session_id),
                    ErrorCode::StoreUnavailable,
                    &format!("Cannot resume: {e}"),
                );
                return Restored::None;
            }
        };
        if let Err(why) = self.registry.room(client.ip) {
            self.refuse(client, Some(session_id), why);
            return Restored::None;
        }
        let Some(slot) = self.agent_of(client, session_id, &stored.listing.agent) else {
            return Restored::None;
        };
        let plugin = slot.current();
        let Some(instance) = self.instantiate(client, &plugin).await else {
            return Restored::None;
        };
        // Kept whole: each run applies what its agent allows (`SessionSettings::for_agent`).
        let settings: SessionSettings = serde_json::from_str(&stored.settings).unwrap_or_default();
        let mut memory =
            Memory::from_stored(&stored.memory, self.runtime.config.memory_budget_chars);
        // A turn still running on another host (its lease is alive) is followed, not lost.
        let follow = stored.running_input.is_some() && stored.running_on.is_some();
        let lost_turn = match (&stored.running_input, follow) {
            (Some(input), false) => close_lost_turn(&mut memory, input),
            _ => false,
        };
        if lost_turn {
            durable.turn_end(
                session_id,
                stored.owner.as_deref(),
                (memory.to_stored(), memory.usage.to_stored()),
                &stored.listing.agent,
            );
        }
        durable.claim(session_id);
        let bound = Bound {
            slot,
            plugin: plugin.clone(),
            instance,
        };
        let identity = identity_of(session_id, &stored, client);
        let session = self.assemble(client, identity, memory, settings, bound);
        session
            .kept
            .store(true, std::sync::atomic::Ordering::Relaxed);
        session.restore_log(stored.events, last_seq);
        if let Err(why) = self.registry.insert(session.clone()) {
            self.refuse(client, Some(session_id), why);
            return Restored::None;
        }
        self.runtime.metrics.sessions.inc();
        tracing::info!(
            session_id,
            lost_turn,
            following = ?stored.running_on,
            "session restored from the store"
        );
        if follow {
            Restored::Follow {
                session,
                after: stored.last_entry,
            }
        } else if lost_turn {
            Restored::LostTurn(session)
        } else {
            Restored::None
        }
    }
}
