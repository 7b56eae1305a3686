//! `user.create_session`: a new session — its settings checked against the plugin's limits,
//! an agent instance from the factory, the registry's caps — acknowledged once the store has it.

use std::sync::Arc;

use super::event::{AgentInfo, ErrorCode, ServerEvent};
use super::log::{AgentSlot, Bound, Identity, Session};
use super::{Client, SessionRefusal, Sessions};
use crate::agent::{Memory, SessionSettings};
use crate::store::{hash_token, Listing, NewSession};

impl Sessions {
    /// `user.create_session`: a new session with `agent` (None: the first served) and its own
    /// `agent_config`, within the plugin's limits; acknowledged (`agent.session_created`) once
    /// the store has it.
    pub async fn create(
        &self,
        client: &mut Client,
        agent: Option<&str>,
        agent_config: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        self.create_with(client, (agent, agent_config), None).await
    }

    /// A new session whose id the client chose (an A2A `contextId`) — 1 to 64 of
    /// `[A-Za-z0-9_-]`, not a session anywhere in memory or the store (anyone's: "taken") — with
    /// `token` as its resume token.
    pub async fn create_named(
        &self,
        client: &mut Client,
        (agent, agent_config): (
            Option<&str>,
            Option<serde_json::Map<String, serde_json::Value>>,
        ),
        (id, token): (String, String),
    ) {
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return client.error(
                None,
                ErrorCode::InvalidField,
                "A session id is 1 to 64 letters, digits, `-` or `_`",
            );
        }
        let stored = match &self.store {
            Some(store) => store
                .load(&id, None)
                .await
                .map(|s| s.is_some())
                .unwrap_or(true),
            None => false,
        };
        if stored || self.registry.get(&id).is_some() {
            return client.error(
                Some(&id),
                ErrorCode::InvalidField,
                "That session id is taken",
            );
        }
        self.create_with(client, (agent, agent_config), Some((id, token)))
            .await
    }

    /// The agent `agent` names (None: the first served); an unknown name is the client's
    /// `invalid_field`, naming the agents served.
    fn agent_slot(
        &self,
        client: &Client,
        agent: Option<&str>,
    ) -> Option<Arc<crate::plugin::reload::PluginSlot>> {
        let agents = &self.runtime.agents;
        let Some(name) = agent else {
            return Some(agents.first().clone());
        };
        let slot = agents.named(name).cloned();
        if slot.is_none() {
            let served = agents.names().join("`, `");
            let why = format!("Unknown agent `{name}`: this host serves `{served}`");
            client.error(None, ErrorCode::InvalidField, &why);
        }
        slot
    }

    async fn create_with(
        &self,
        client: &mut Client,
        (agent, agent_config): (
            Option<&str>,
            Option<serde_json::Map<String, serde_json::Value>>,
        ),
        preset: Option<(String, String)>,
    ) {
        let Some(slot) = self.agent_slot(client, agent) else {
            return;
        };
        if let Err(why) = self.room_for(client).await {
            return self.refuse(client, None, why);
        }
        let plugin = slot.current();
        let settings =
            match agent_config.map(|c| SessionSettings::from_request(&c, &plugin.manifest)) {
                None => SessionSettings::default(),
                Some(Ok(s)) => s,
                Some(Err(why)) => return client.error(None, ErrorCode::InvalidField, &why),
            };
        let Some(instance) = self.instantiate(client, &plugin).await else {
            return;
        };
        let (id, token) = preset.unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().to_string();
            (id, uuid::Uuid::new_v4().simple().to_string())
        });
        if self.registry.get(&id).is_some() {
            return client.error(
                Some(&id),
                ErrorCode::InvalidField,
                "That session id is taken",
            );
        }
        let memory = Memory::new(self.runtime.config.memory_budget_chars);
        let bound = Bound {
            slot,
            plugin: plugin.clone(),
            instance,
        };
        let identity = Identity {
            id: id.clone(),
            token_hash: hash_token(&token),
            user: client.user().cloned(),
            client_ip: client.ip,
            listing: Listing {
                agent: plugin.manifest.name.clone(),
                created: crate::store::now_ms(),
                ..Listing::default()
            },
        };
        let session = self.assemble(client, identity, memory, settings.clone(), bound);
        if let Err(why) = self.registry.insert(session.clone()) {
            return self.refuse(client, None, why);
        }
        if let Some(d) = &self.store {
            d.create(NewSession {
                id: id.clone(),
                token_hash: session.token_hash.clone(),
                settings: serde_json::to_string(&settings).unwrap_or_default(),
                client: client.ip,
                owner: client.user().map(|u| u.to_string()),
                agent: plugin.manifest.name.clone(),
            });
        }
        self.runtime.metrics.sessions.inc();
        self.runtime.metrics.sessions_total.inc();
        client.sessions.insert(id);
        let m = &plugin.manifest;
        let agent = AgentInfo {
            name: m.name.clone(),
            version: m.version.clone(),
            generation: None,
            tools: Some(self.runtime.tool_names(m)),
        };
        let agent_config = (settings != SessionSettings::default()).then_some(settings);
        // The resume token reaches this client only: the log (replay, store) keeps the event
        // without it — a copy of the store must not let anyone resume the session.
        let logged = ServerEvent::SessionCreated {
            resume_token: None,
            agent: agent.clone(),
            agent_config: agent_config.clone(),
        };
        let live = ServerEvent::SessionCreated {
            resume_token: Some(token),
            agent,
            agent_config,
        };
        session.emit_held_secret(&logged, &live, &self.runtime.metrics);
        // Acknowledged means durable: the client hears of the session once it is stored (or
        // `--store-ack-timeout` passed; then the write stays buffered).
        if let Some(store) = &self.store {
            if let Err(e) = store.commit_session(session.shared_id()).await {
                tracing::warn!(session_id = %session.id, error = %e, "session created before the store confirmed it");
            }
        }
        session.release(&self.runtime.metrics);
    }

    /// Whether `client` may have one more session: its connection's cap, the registry's (checked
    /// again, atomically, on insert) and the store's — all before the plugin's factory runs.
    async fn room_for(&self, client: &Client) -> Result<(), SessionRefusal> {
        let per_conn = self.config.max_sessions_per_connection;
        if self.owned_count(client) >= per_conn {
            return Err(SessionRefusal::Connection(per_conn));
        }
        self.registry.room(client.ip)?;
        self.stored_room(client).await
    }

    /// A new agent instance from `plugin`'s factory; a failure is told to `client`.
    /// A session of `client` (new or restored) with its conversation and its build, owned by
    /// the client's connection and written to the store there is.
    pub(super) fn assemble(
        &self,
        client: &Client,
        identity: Identity,
        memory: Memory,
        settings: SessionSettings,
        bound: Bound,
    ) -> Arc<Session> {
        let slot = AgentSlot {
            memory,
            settings,
            checked_for: (bound.plugin.manifest.name.clone(), bound.plugin.generation),
        };
        let session = Arc::new(Session::new(
            identity,
            slot,
            bound,
            client.sub.clone(),
            self.config.replay_buffer_bytes,
            self.budget.clone(),
            self.store.clone(),
        ));
        session.approvals.set_approver(client.approves);
        session
    }

    /// Whether the store has room for one more session of `client` (its caps count what the
    /// store holds, not only memory). A store that cannot be read does not refuse: the
    /// session is made and its writes buffered, as for any outage.
    async fn stored_room(&self, client: &Client) -> Result<(), SessionRefusal> {
        let (all, per_ip) = (
            self.config.max_stored_sessions,
            self.config.max_stored_sessions_per_ip,
        );
        let Some(store) = self.store.as_ref().filter(|_| all > 0 || per_ip > 0) else {
            return Ok(());
        };
        match store.count_stored(client.ip, (all, per_ip)).await {
            Ok((n, _)) if all > 0 && n >= all => Err(SessionRefusal::Stored(all)),
            Ok((_, mine)) if per_ip > 0 && mine >= per_ip => {
                Err(SessionRefusal::StoredAddress(per_ip))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count stored sessions; not refusing");
                Ok(())
            }
        }
    }

    pub(super) async fn instantiate(
        &self,
        client: &Client,
        plugin: &Arc<crate::plugin::Plugin>,
    ) -> Option<crate::plugin::Instance> {
        let timeout = self.runtime.config.tool_timeout_for(&plugin.manifest);
        match plugin.instantiate(timeout).await {
            Ok(Ok(i)) => Some(i),
            Ok(Err(e)) => {
                self.factory_failed(client, &e);
                None
            }
            Err(e) => {
                self.factory_failed(client, &e);
                None
            }
        }
    }

    fn factory_failed(&self, client: &Client, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, "plugin factory failed");
        client.error(
            None,
            ErrorCode::PluginError,
            &format!("The agent could not be created: {e}"),
        );
    }
}
