//! Sessions, end to end: the registry ([`registry`]: create, find, caps), each session's
//! numbered event log ([`log`]), running a turn and custom events ([`run`]), reload notices
//! ([`notices`]), and [`Sessions`], the one door connections knock on: a connection parses a
//! client message and hands it to [`Sessions::handle`]; everything else happens here.

pub mod durable;
mod durable_redis;
mod durable_sqlite;
mod follow;
mod log;
pub mod notices;
pub mod registry;
mod restore;
use restore::Restored;
mod run;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use tracing::Instrument;

pub use durable::Durable;
pub use log::{
    Admit, AgentSlot, ReplayBudget, ResumeOutcome, Session, EVENT_OVERHEAD, MAX_QUEUED,
    MAX_QUEUED_BYTES,
};
pub use registry::{MemoryStore, SessionCaps, SessionRefusal, SessionStore};

use super::auth::constant_time_eq;
use super::config::SessionConfig;
use super::lifecycle::Lifecycle;
use super::outbox::ConnHandle;
use super::protocol::{AgentInfo, ClientMessage, ErrorCode, OnBusy, ServerEvent};
use crate::agent::{AgentRuntime, Decision, Memory, SessionSettings};

/// A connection as sessions see it: where its events go, who it is, what it holds.
pub struct Client {
    pub conn: ConnHandle,
    /// The client's address (behind a trusted proxy: from `X-Forwarded-For`).
    pub ip: IpAddr,
    /// Sessions this connection created or resumed (some may have moved on).
    sessions: HashSet<String>,
}

impl Client {
    pub fn new(conn: ConnHandle, ip: IpAddr) -> Client {
        Client {
            conn,
            ip,
            sessions: HashSet::new(),
        }
    }

    fn error(&self, session_id: Option<&str>, code: ErrorCode, text: &str) {
        self.conn
            .send_about(session_id, &ServerEvent::error(code, text));
    }
}

/// Every session of this host, and what they need to run.
pub struct Sessions {
    store: Box<dyn SessionStore>,
    config: SessionConfig,
    budget: Arc<ReplayBudget>,
    runtime: Arc<AgentRuntime>,
    lifecycle: Arc<Lifecycle>,
}

impl Sessions {
    /// Sessions kept in memory (they end with the process).
    pub fn in_memory(
        config: SessionConfig,
        runtime: Arc<AgentRuntime>,
        lifecycle: Arc<Lifecycle>,
    ) -> Arc<Sessions> {
        let caps = SessionCaps {
            max_sessions: config.max_sessions,
            max_per_ip: config.max_sessions_per_ip,
        };
        Self::with_store(Box::new(MemoryStore::new(caps)), config, runtime, lifecycle)
    }

    pub fn with_store(
        store: Box<dyn SessionStore>,
        config: SessionConfig,
        runtime: Arc<AgentRuntime>,
        lifecycle: Arc<Lifecycle>,
    ) -> Arc<Sessions> {
        let budget = Arc::new(ReplayBudget {
            limit: config.replay_budget_bytes,
            metrics: runtime.metrics.clone(),
        });
        let sessions = Arc::new(Sessions {
            store,
            budget,
            config,
            runtime,
            lifecycle,
        });
        // A shared store: cancels of turns running here, asked for on other hosts.
        if let Some(mut cancels) = sessions
            .config
            .durable
            .as_ref()
            .and_then(|d| d.take_cancels())
        {
            let weak = Arc::downgrade(&sessions);
            tokio::spawn(async move {
                while let Some(id) = cancels.recv().await {
                    let Some(sessions) = weak.upgrade() else {
                        return;
                    };
                    if let Some(s) = sessions.store.get(&id) {
                        if s.cancel() {
                            tracing::info!(session_id = %id, "turn cancelled from another host");
                        }
                    }
                }
            });
        }
        sessions
    }

    /// Sessions alive now (attached or waiting for a resume).
    pub fn count(&self) -> usize {
        self.store.len()
    }

    pub fn runtime(&self) -> &Arc<AgentRuntime> {
        &self.runtime
    }

    /// Acts on one client message.
    pub async fn handle(self: &Arc<Self>, client: &mut Client, msg: ClientMessage) {
        match msg {
            ClientMessage::CreateSession { agent_config } => {
                self.create(client, agent_config).await
            }
            ClientMessage::Message {
                session_id,
                content,
                on_busy,
            } => self.message(client, &session_id, content, on_busy),
            ClientMessage::Cancel { session_id } => {
                let Some(session) = self.owned(client, &session_id) else {
                    return;
                };
                // Idle: nothing to stop, and the answer is the same as for a stopped run (as
                // in the MyAgent design) — outside the session's numbered log.
                if !session.cancel() {
                    client.conn.send_about(
                        Some(&session_id),
                        &ServerEvent::Interrupted { reason: None },
                    );
                }
            }
            ClientMessage::GetHistory { session_id } => {
                let Some(session) = self.owned(client, &session_id) else {
                    return;
                };
                // The memory is the run's while it runs: answer once it is free (between turns),
                // so the history holds whole turns only.
                let conn = client.conn.clone();
                self.lifecycle.runs.spawn(async move {
                    let slot = session.agent.lock().await;
                    let history = ServerEvent::History {
                        messages: slot.memory.messages().to_vec(),
                        dropped_turns: slot.memory.dropped_turns(),
                    };
                    drop(slot);
                    conn.send_about(Some(&session.id), &history);
                });
            }
            ClientMessage::CloseSession { session_id } => {
                let Some(session) = self.owned(client, &session_id) else {
                    return;
                };
                session.cancel();
                self.remove(&session_id);
                if let Some(d) = &self.config.durable {
                    d.delete(&session_id);
                }
                client.sessions.remove(&session_id);
                client
                    .conn
                    .send_about(Some(&session_id), &ServerEvent::SessionClosed);
            }
            ClientMessage::Resume {
                session_id,
                resume_token,
                last_seq,
            } => {
                self.forget_if_taken_elsewhere(&session_id).await;
                let restored = self
                    .restore_if_stored(client, &session_id, &resume_token)
                    .await;
                self.resume(client, &session_id, &resume_token, last_seq);
                match restored {
                    Restored::LostTurn(session) => {
                        // The turn its host never finished, closed in the session's log.
                        let metrics = &self.runtime.metrics;
                        session.emit(
                            &ServerEvent::Interrupted {
                                reason: Some("host_lost"),
                            },
                            metrics,
                        );
                        session.emit(&ServerEvent::Ready, metrics);
                    }
                    Restored::Follow { session, after } => {
                        self.follow(session, after, last_seq);
                    }
                    Restored::None => {}
                }
            }
            ClientMessage::ToolApproval {
                session_id,
                step_id,
                approved,
                reason,
            } => {
                let Some(session) = self.owned(client, &session_id) else {
                    return;
                };
                // The run goes on with the call's result; nothing is sent in reply.
                if session
                    .approvals
                    .decide(&step_id, Decision { approved, reason })
                    .is_err()
                {
                    client.error(Some(&session_id), ErrorCode::ApprovalNotPending, &format!(
                        "No tool call `{step_id}` is waiting for approval in this session (already decided, timed out, or its run ended)"));
                }
            }
            ClientMessage::Custom { session_id, event } => {
                let Some(session) = self.owned(client, &session_id) else {
                    return;
                };
                let runtime = self.runtime.clone();
                self.lifecycle
                    .runs
                    .spawn(async move { run::custom_event(&runtime, &session, event).await });
            }
        }
    }

    /// The connection is gone: its sessions wait `resume_window` for a resume, then end.
    pub fn release(self: &Arc<Self>, client: &Client) {
        for id in &client.sessions {
            let Some(session) = self.store.get(id) else {
                continue;
            };
            let Some(epoch) = session.detach(client.conn.id) else {
                continue;
            };
            if self.lifecycle.shutdown.is_cancelled() {
                session.cancel();
                self.remove(id);
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(this.config.resume_window) => {}
                    _ = this.lifecycle.shutdown.cancelled() => {}
                }
                if session.still_detached(epoch) {
                    session.cancel();
                    this.remove(&session.id);
                    tracing::debug!(session_id = %session.id, "session expired without resume");
                }
            });
        }
    }

    /// Shutdown: cancels every running run; returns how many were running.
    pub fn cancel_all(&self) -> usize {
        self.store.all().iter().filter(|s| s.cancel()).count()
    }

    fn remove(&self, id: &str) {
        if self.store.remove(id).is_some() {
            self.runtime.metrics.sessions.dec();
        }
    }

    /// The session `id` if this connection owns it; otherwise answers "Session not found".
    fn owned(&self, client: &Client, id: &str) -> Option<Arc<Session>> {
        match self.store.get(id) {
            Some(s) if s.owned_by(client.conn.id) => Some(s),
            _ => {
                client.error(Some(id), ErrorCode::SessionNotFound, "Session not found");
                None
            }
        }
    }

    fn owned_count(&self, client: &Client) -> usize {
        client
            .sessions
            .iter()
            .filter(|id| {
                self.store
                    .get(id)
                    .is_some_and(|s| s.owned_by(client.conn.id))
            })
            .count()
    }

    fn refuse(&self, client: &Client, session_id: Option<&str>, why: SessionRefusal) {
        if !matches!(why, SessionRefusal::Connection(_)) {
            self.runtime.metrics.sessions_refused.inc();
            tracing::info!(client = %client.ip, reason = %why, "session refused");
        }
        self.runtime.metrics.client_errors.inc();
        client.error(session_id, ErrorCode::TooManySessions, &why.to_string());
    }

    async fn create(
        &self,
        client: &mut Client,
        agent_config: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        let per_conn = self.config.max_sessions_per_connection;
        if self.owned_count(client) >= per_conn {
            return self.refuse(client, None, SessionRefusal::Connection(per_conn));
        }
        // Refuse before the plugin's factory runs; checked again, atomically, on insert.
        if let Err(why) = self.store.room(client.ip) {
            return self.refuse(client, None, why);
        }
        let plugin = self.runtime.plugin.current();
        let settings =
            match agent_config.map(|c| SessionSettings::from_request(&c, &plugin.manifest)) {
                None => SessionSettings::default(),
                Some(Ok(s)) => s,
                Some(Err(why)) => return client.error(None, ErrorCode::InvalidField, &why),
            };
        let timeout = self.runtime.config.tool_timeout_for(&plugin.manifest);
        let instance = match plugin.instantiate(timeout).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return self.factory_failed(client, &e),
            Err(e) => return self.factory_failed(client, &e),
        };
        let id = uuid::Uuid::new_v4().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let slot = AgentSlot {
            memory: Memory::new(self.runtime.config.memory_budget_chars),
            settings: settings.clone(),
            plugin: plugin.clone(),
            instance,
        };
        let session = Arc::new(Session::new(
            id.clone(),
            token.clone(),
            slot,
            client.conn.clone(),
            client.ip,
            self.config.replay_buffer_bytes,
            self.budget.clone(),
            self.config.durable.clone(),
        ));
        if let Err(why) = self.store.insert(session.clone()) {
            return self.refuse(client, None, why);
        }
        if let Some(d) = &self.config.durable {
            d.create(&id, &token, &settings);
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
        session.emit(
            &ServerEvent::SessionCreated {
                resume_token: token,
                agent,
                agent_config: (settings != SessionSettings::default()).then_some(settings),
            },
            &self.runtime.metrics,
        );
    }

    fn factory_failed(&self, client: &Client, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, "plugin factory failed");
        client.error(
            None,
            ErrorCode::PluginError,
            &format!("The agent could not be created: {e}"),
        );
    }

    fn message(
        &self,
        client: &Client,
        session_id: &str,
        content: crate::llm::Content,
        on_busy: Option<OnBusy>,
    ) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        let on_busy = on_busy.unwrap_or(self.config.on_busy);
        let (content, cancel) = match session.admit(content, on_busy, &self.runtime.metrics) {
            Admit::Start(content, cancel) => (content, cancel),
            Admit::Queued => return,
            Admit::Busy => {
                return client.error(Some(session_id), ErrorCode::AlreadyRunning, "Agent is already running")
            }
            Admit::QueueFull => {
                return client.error(Some(session_id), ErrorCode::AlreadyRunning, &format!(
                    "Agent is already running and {MAX_QUEUED} messages (or {} KiB) are waiting; try again when it is ready",
                    MAX_QUEUED_BYTES / 1024))
            }
        };
        let runtime = self.runtime.clone();
        let span = tracing::info_span!("session", session_id = %session.id);
        self.lifecycle.runs.spawn(
            async move { run::run_turns(&runtime, &session, cancel, content).await }
                .instrument(span),
        );
    }

    fn resume(&self, client: &mut Client, session_id: &str, token: &str, last_seq: u64) {
        let session = match self.store.get(session_id) {
            Some(s) if constant_time_eq(&s.resume_token, token) => s,
            _ => {
                client.error(
                    Some(session_id),
                    ErrorCode::SessionNotFound,
                    "Session not found",
                );
                return;
            }
        };
        // The cap counts on resume too: a session this connection held once but another
        // connection took over is a new one for it (else two connections passing sessions back
        // and forth could each hold any number).
        let per_conn = self.config.max_sessions_per_connection;
        if !session.owned_by(client.conn.id) && self.owned_count(client) >= per_conn {
            return self.refuse(
                client,
                Some(session_id),
                SessionRefusal::Connection(per_conn),
            );
        }
        client.sessions.insert(session_id.to_owned());
        let outcome = session.resume(client.conn.clone(), last_seq, &self.runtime.metrics);
        if let ResumeOutcome::Gap { first_available } = outcome {
            client.error(Some(session_id), ErrorCode::ResumeGap, &format!(
                "Cannot fully resume: events {}..{} are no longer in the replay buffer; later events were replayed",
                last_seq.saturating_add(1), first_available - 1));
        }
    }
}
