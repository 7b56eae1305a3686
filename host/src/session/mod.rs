//! The session engine, which knows no transport: the registry ([`registry`]: create, find,
//! caps), each session's numbered event log ([`log`]), running a turn and custom events
//! ([`run`]), restoring from the store ([`restore`]) and following a turn on another host
//! ([`follow`]), and [`Sessions`], with one method per request a client can make. Doors (the
//! WebSocket connection, AG-UI, A2A) turn their requests into these calls and receive the
//! events as a [`Subscriber`]; the engine never reaches into a door.

pub(crate) mod config;
mod create;
pub mod event;
mod follow;
mod lifecycle;
mod listing;
mod log;
pub mod principal;
mod quota;
pub(crate) mod rate;
pub(crate) mod registry;
mod restore;
mod run;
mod sink;
mod subscriber;
mod turn;

use std::sync::Arc;

use tracing::Instrument;

pub use config::{ImageUrls, SessionConfig};
pub use lifecycle::Lifecycle;
pub use log::{
    Admit, AgentSlot, Bound, ReplayBudget, ResumeOutcome, Session, EVENT_OVERHEAD,
    MAX_CUSTOM_IN_FLIGHT, MAX_QUEUED, MAX_QUEUED_BYTES,
};
pub use registry::{MemoryStore, SessionCaps, SessionRefusal, SessionStore};
pub use subscriber::{send_about, Client, Sub, Subscriber};

use crate::agent::{AgentRuntime, Decision};
use crate::store::Store;
use event::{ErrorCode, OnBusy, ServerEvent};
use restore::Restored;

/// Every session of this host, and what they need to run.
pub struct Sessions {
    registry: Box<dyn SessionStore>,
    /// Where sessions outlive the process (`--store`); None: memory only.
    store: Option<Arc<Store>>,
    config: SessionConfig,
    budget: Arc<ReplayBudget>,
    runtime: Arc<AgentRuntime>,
    lifecycle: Arc<Lifecycle>,
    /// Messages a minute, per session and per client address.
    limits: rate::RunLimits,
    /// Each principal's quotas (by its tier).
    quotas: Arc<quota::Quotas>,
}

impl Sessions {
    /// Sessions kept in memory (they end with the process).
    /// Sessions held in memory, and written to `store` when there is one.
    pub fn new(
        config: SessionConfig,
        store: Option<Arc<Store>>,
        runtime: Arc<AgentRuntime>,
        lifecycle: Arc<Lifecycle>,
    ) -> Arc<Sessions> {
        let caps = SessionCaps {
            max_sessions: config.max_sessions,
            max_per_ip: config.max_sessions_per_ip,
        };
        Self::with_registry(
            Box::new(MemoryStore::new(caps)),
            config,
            store,
            runtime,
            lifecycle,
        )
    }

    pub fn with_registry(
        registry: Box<dyn SessionStore>,
        config: SessionConfig,
        store: Option<Arc<Store>>,
        runtime: Arc<AgentRuntime>,
        lifecycle: Arc<Lifecycle>,
    ) -> Arc<Sessions> {
        let budget = Arc::new(ReplayBudget {
            limit: config.replay_budget_bytes,
            metrics: runtime.metrics.clone(),
        });
        let limits = rate::RunLimits::new(
            config.max_runs_per_minute,
            config.max_runs_per_minute_per_ip,
        );
        let quotas = quota::Quotas::new(config.principals.clone(), store.clone());
        let sessions = Arc::new(Sessions {
            quotas,
            registry,
            store,
            budget,
            config,
            runtime,
            lifecycle,
            limits,
        });
        // A shared store: cancels of turns running here, asked for on other hosts.
        if let Some(mut cancels) = sessions
            .store
            .as_ref()
            .and_then(|d| d.shared())
            .and_then(|s| s.take_cancels())
        {
            let weak = Arc::downgrade(&sessions);
            tokio::spawn(async move {
                while let Some(id) = cancels.recv().await {
                    let Some(sessions) = weak.upgrade() else {
                        return;
                    };
                    if let Some(s) = sessions.registry.get(&id) {
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
        self.registry.len()
    }

    /// The session store, if sessions outlive the process.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// What a message does while its session runs, unless it says.
    pub fn on_busy(&self) -> OnBusy {
        self.config.on_busy
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    pub fn runtime(&self) -> &Arc<AgentRuntime> {
        &self.runtime
    }

    /// `user.cancel`: stops the running turn. Idle, there is nothing to stop, and the answer
    /// is the same as for a stopped run (as in the MyAgent design) — outside the numbered log.
    pub fn cancel(&self, client: &Client, session_id: &str) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        if !session.cancel() {
            client.send_about(Some(session_id), &ServerEvent::Interrupted { reason: None });
        }
    }

    /// `user.get_history`: the memory is the run's while it runs, so the answer comes once it
    /// is free (between turns) and holds whole turns only.
    pub fn history(&self, client: &Client, session_id: &str) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        use std::sync::atomic::Ordering;
        if session.history_pending.swap(true, Ordering::AcqRel) {
            return client.error(
                Some(session_id),
                ErrorCode::HistoryPending,
                "A history request for this session is already waiting for its turn to end",
            );
        }
        let sub = client.sub.clone();
        self.lifecycle.runs.spawn(async move {
            let slot = session.agent.lock().await;
            let history = ServerEvent::History {
                messages: slot.memory.messages().to_vec(),
                dropped_turns: slot.memory.dropped_turns(),
            };
            drop(slot);
            session.history_pending.store(false, Ordering::Release);
            send_about(&*sub, Some(&session.id), &history);
        });
    }

    /// `user.close_session`: ends the session here and in the store.
    pub fn close(&self, client: &mut Client, session_id: &str) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        session.unstore();
        session.cancel();
        self.remove(session_id);
        if let Some(d) = &self.store {
            d.delete(session_id, session.user.as_deref());
        }
        client.sessions.remove(session_id);
        client.send_about(Some(session_id), &ServerEvent::SessionClosed);
    }

    /// `user.resume_session`: re-attaches (restoring from the store a session this process
    /// does not hold) and replays what the client missed after `last_seq`.
    pub async fn resume_session(
        self: &Arc<Self>,
        client: &mut Client,
        session_id: &str,
        resume_token: Option<&str>,
        last_seq: u64,
    ) {
        self.forget_if_taken_elsewhere(session_id).await;
        let restored = self
            .restore_if_stored(client, session_id, resume_token, last_seq)
            .await;
        self.resume(client, session_id, resume_token, last_seq);
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

    /// `user.tool_approval`: the run goes on with the call's result; nothing is sent in reply.
    pub fn approve(&self, client: &Client, session_id: &str, step_id: &str, decision: Decision) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        if session.approvals.decide(step_id, decision).is_err() {
            client.error(Some(session_id), ErrorCode::ApprovalNotPending, &format!(
                "No tool call `{step_id}` is waiting for approval in this session (already decided, timed out, or its run ended)"));
        }
    }

    /// A result of a tool the client runs itself (a frontend tool): the waiting call gets it and
    /// the run goes on; nothing is sent in reply.
    pub fn client_tool_result(
        &self,
        client: &Client,
        session_id: &str,
        step_id: &str,
        result: String,
    ) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        if session.approvals.client.deliver(step_id, result).is_err() {
            client.error(Some(session_id), ErrorCode::InvalidField, &format!(
                "No call `{step_id}` is waiting for this client's result in this session (answered already, timed out, or its run ended)"));
        }
    }

    /// A custom client event, handed to the plugin's hook.
    pub fn custom(&self, client: &Client, session_id: &str, event: serde_json::Value) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        let Some(slot) = session.custom_slot() else {
            return client.error(Some(session_id), ErrorCode::TooManyRequests, &format!(
                "{MAX_CUSTOM_IN_FLIGHT} custom events of this session are waiting for the agent already; send this one when one of them has been answered"));
        };
        let runtime = self.runtime.clone();
        self.lifecycle.runs.spawn(async move {
            run::custom_event(&runtime, slot.session(), event).await;
        });
    }

    /// The connection is gone: its sessions wait `resume_window` for a resume, then end.
    pub fn release(self: &Arc<Self>, client: &Client) {
        for id in &client.sessions {
            let Some(session) = self.registry.get(id) else {
                continue;
            };
            let Some(epoch) = session.detach(client.id()) else {
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
                // A run paused for someone outside it (a person's approval, a client tool's
                // result) waits for them, not for this client: up to the approval timeout.
                let until = tokio::time::Instant::now() + this.runtime.config.approval_timeout;
                while session.still_detached(epoch)
                    && session.approvals.waiting()
                    && tokio::time::Instant::now() < until
                    && !this.lifecycle.shutdown.is_cancelled()
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                if session.still_detached(epoch) {
                    session.leave();
                    this.remove(&session.id);
                    tracing::debug!(session_id = %session.id, "session expired without resume");
                    // Never used: not kept in the store for the TTL either.
                    let used = session.kept.load(std::sync::atomic::Ordering::Relaxed);
                    if let (false, Some(store)) = (used, &this.store) {
                        if !session.is_running() {
                            store.delete(&session.id, session.user.as_deref());
                        }
                    }
                }
            });
        }
    }

    /// Shutdown: cancels every running run; returns how many were running.
    pub fn cancel_all(&self) -> usize {
        self.registry.all().iter().filter(|s| s.cancel()).count()
    }

    fn remove(&self, id: &str) {
        if self.registry.remove(id).is_some() {
            self.runtime.metrics.sessions.dec();
        }
    }

    /// The session `id` if this connection owns it; otherwise answers "Session not found".
    /// The newest `seq` of `client`'s session `id` (held events included), for a door about to
    /// hand it a message: that message's run numbers its events after it. None: not its own.
    pub fn newest_seq(&self, client: &Client, id: &str) -> Option<u64> {
        let session = self.registry.get(id)?;
        session.owned_by(client.id()).then(|| session.newest_seq())
    }

    fn owned(&self, client: &Client, id: &str) -> Option<Arc<Session>> {
        match self.registry.get(id) {
            Some(s) if s.owned_by(client.id()) => Some(s),
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
                self.registry
                    .get(id)
                    .is_some_and(|s| s.owned_by(client.id()))
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

    /// `user.message`: starts a turn, or follows `on_busy` while one runs.
    pub async fn message(
        &self,
        client: &Client,
        session_id: &str,
        content: crate::llm::Content,
        (on_busy, trace): (Option<OnBusy>, Option<crate::otel::TraceParent>),
    ) {
        let Some(session) = self.owned(client, session_id) else {
            return;
        };
        if let Err(why) = self.config.image_urls.check(&content) {
            return client.error(Some(session_id), ErrorCode::InvalidField, &why);
        }
        // Each message can start a full-context model call: a storm is cut here, before it
        // cancels or queues anything.
        let limits = &self.limits;
        let refused = match session.take_run_token(limits.per_session) {
            Err(wait) => Some((wait, "this session", limits.per_session)),
            Ok(()) => limits
                .take_ip(client.ip)
                .err()
                .map(|wait| (wait, "your address", limits.per_ip)),
        };
        if let Some((wait, whose, n)) = refused {
            self.runtime.metrics.client_errors.inc();
            return client.error(
                Some(session_id),
                ErrorCode::TooManyRequests,
                &format!(
                    "Too many messages: {whose} may send {n} a minute; try again in {:.1} s",
                    wait.as_secs_f64()
                ),
            );
        }
        // The principal's quota, before anything is queued, cancelled or asked of the model.
        let starts_run = !session.is_running();
        let place = match self
            .quotas
            .admit(client.principal.as_ref(), session_id, starts_run)
            .await
        {
            Ok(place) => place,
            Err(quota::Refused(code, text, what)) => {
                self.runtime.metrics.client_errors.inc();
                return client
                    .send_about(Some(session_id), &ServerEvent::exceeded(code, text, what));
            }
        };
        let on_busy = on_busy.unwrap_or(self.config.on_busy);
        // The run joins the message's trace, else the trace of the request that opened the
        // client's connection.
        let turn = turn::Turn {
            content,
            trace: trace.or_else(|| client.trace.clone()),
        };
        let (turn, cancel) = match session.admit(turn, on_busy, &self.runtime.metrics) {
            Admit::Start(turn, cancel) => {
                // The run offers the tools of the client that started it (none over WebSocket).
                session.approvals.client.offer(client.tools.clone());
                (turn, cancel)
            }
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
            async move { run::run_turns(&runtime, &session, cancel, turn, place).await }
                .instrument(span),
        );
    }

    fn resume(&self, client: &mut Client, session_id: &str, token: Option<&str>, last_seq: u64) {
        let access = self.access(client, token);
        let session = match self.registry.get(session_id) {
            Some(s) if access.admits(&s.token_hash, s.user.as_deref()) => s,
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
        if !session.owned_by(client.id()) && self.owned_count(client) >= per_conn {
            return self.refuse(
                client,
                Some(session_id),
                SessionRefusal::Connection(per_conn),
            );
        }
        client.sessions.insert(session_id.to_owned());
        session.approvals.set_approver(client.approves);
        let outcome = session.resume(client.sub.clone(), last_seq, &self.runtime.metrics);
        if let ResumeOutcome::Gap { first_available } = outcome {
            client.error(Some(session_id), ErrorCode::ResumeGap, &format!(
                "Cannot fully resume: events {}..{} are no longer in the replay buffer; later events were replayed",
                last_seq.saturating_add(1), first_available - 1));
        }
    }
}
