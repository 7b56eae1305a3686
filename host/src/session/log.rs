//! One session: an agent conversation owned by one connection at a time, with a numbered event
//! log (a bounded replay buffer) so a client that reconnects can resume where it was.
//!
//! **Architecture Invariant:** every session event goes through [`Session::emit`] (or
//! [`Session::emit_streamed`], [`Session::finish_run`]), which numbers it, stores it for replay
//! and queues it for the owning connection under one lock (a model read's pieces together, at
//! its pause or before the next other event: [`Session::wake`]); resume settles what is pending
//! and replays and re-attaches under the same lock, so a resumed client sees every event once,
//! in order.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::event::{custom_frame, ErrorCode, OnBusy, ServerEvent, MAX_EVENT_BYTES};
use super::subscriber::Sub;
use super::turn::Turn;
use crate::agent::{Approvals, Memory, SessionSettings};
use crate::metrics::Metrics;
use crate::store::{Frames, Listing, Store};
use replay::Kept;

/// What one stored event costs beyond its text: the queue slot, the shared buffer's header and
/// allocator rounding (measured: a full 256 KiB buffer of small events held ~611 KiB).
pub const EVENT_OVERHEAD: usize = 96;

/// The replay bytes of all sessions together, bounded: when the total is over, the session
/// adding an event drops its own oldest ones first (whoever writes pays).
pub struct ReplayBudget {
    pub limit: usize,
    pub metrics: Arc<Metrics>,
}

impl ReplayBudget {
    /// Whether the total is over the limit once `pending` bytes (not yet added) are counted.
    fn over_with(&self, pending: i64) -> bool {
        self.metrics.replay_bytes.get() as i64 + pending > self.limit as i64
    }
}

/// The conversation side of a session, held by one run at a time.
pub struct AgentSlot {
    pub memory: Memory,
    /// The session's own settings (`agent_config`).
    pub settings: SessionSettings,
    /// The agent and build generation `settings` were last checked against (a reload or a
    /// handoff may narrow what is allowed; the next run checks again and says so once).
    pub checked_for: (String, u64),
}

/// The build a session talks to and its agent instance in it — held in one place (the
/// session), taken by a run for its length and by a custom event for its call (a handoff moves
/// it to another agent).
pub use crate::agent::Bound;

/// Who a session is: its id, its resume token's hash, the principal it belongs to, the address
/// that made it, and how it is listed.
pub struct Identity {
    pub id: String,
    pub token_hash: String,
    pub user: Option<Arc<str>>,
    pub client_ip: IpAddr,
    pub listing: Listing,
}

pub struct Session {
    pub id: String,
    /// The resume token's hash (`store::hash_token`): a resume compares hashes.
    pub token_hash: String,
    /// The principal the session belongs to (None: made anonymously); any other principal is
    /// told it does not exist.
    pub user: Option<Arc<str>>,
    /// The address of the client that created the session (counted by `max_sessions_per_ip`).
    pub client_ip: IpAddr,
    /// Locked by the run for its whole duration.
    pub agent: tokio::sync::Mutex<AgentSlot>,
    /// Tool calls of the current run waiting for a person's approval.
    pub approvals: Approvals,
    /// A `user.get_history` waits for the running turn (one at a time: each waiting request
    /// holds memory until the turn ends).
    pub history_pending: std::sync::atomic::AtomicBool,
    /// Custom events of this session waiting for the plugin's hook (at most
    /// [`MAX_CUSTOM_IN_FLIGHT`]).
    custom_in_flight: std::sync::atomic::AtomicUsize,
    /// The session has a finished turn (or came from the store): once it leaves memory it
    /// stays stored for `--session-ttl`. Without one, it is deleted from the store then — a
    /// client that creates sessions and walks away leaves nothing behind.
    pub kept: std::sync::atomic::AtomicBool,
    inner: Mutex<Inner>,
    replay_cap_bytes: usize,
    budget: Arc<ReplayBudget>,
    /// Where the session's events are also written (the session store), if anywhere.
    store: Option<Arc<Store>>,
    /// The id, shared with the store's writer.
    shared_id: Arc<str>,
}

struct Inner {
    owner: Option<Sub>,
    /// A model read's frames for the owner, not yet queued: [`Session::wake`] (or the next
    /// other event) queues them in one step and counts them as sent (one lock of the
    /// connection's queue and one update of the host-wide counter a read, not a piece).
    unsent: Vec<Utf8Bytes>,
    /// Where a run's streamed pieces are encoded ([`ServerEvent::frame_in_arena`]); emptied
    /// when the run ends, so an idle session holds no spare block.
    arena: bytes::BytesMut,
    seq: u64,
    replay: replay::Replay,
    /// Set while a run is in progress: cancelling it stops the run.
    running: Option<CancellationToken>,
    /// Messages waiting for the current run to end (`on_busy: enqueue`/`interrupt`).
    queue: VecDeque<Turn>,
    queue_bytes: usize,
    /// Bumped on every detach/attach, so a stale expiry timer does nothing.
    epoch: u64,
    /// The build and agent instance runs and custom events go to.
    bound: Bound,
    /// Events from this `seq` on are held back — not sent, not replayed — until
    /// [`Session::release`]: an acknowledgement (`agent.session_created`, `agent.ready`) waits
    /// for the store to commit what it acknowledges.
    withheld_from: Option<u64>,
    /// This host follows a turn running on another host, and its client has left: the follow
    /// ends without cancelling that turn.
    left: bool,
    /// A held event's frame for the owner only (with a secret the log does not keep): its seq
    /// and bytes, sent by `release` in place of the logged frame.
    live_frame: Option<(u64, Utf8Bytes)>,
    /// Messages this session may still send (`--max-runs-per-minute`); None until the first.
    runs: Option<super::rate::Bucket>,
    /// The session's model usage as of its last turn's end (for `agent.session_resumed`).
    pub(super) usage: crate::agent::usage::UsageTotals,
    /// Its title, agent, creation and turns, as a session list shows them.
    pub(super) listing: Listing,
    /// Unix milliseconds of the last turn's start or end (or the creation).
    pub(super) updated: i64,
    /// Deleted (closed, or `user.delete_session`): nothing more of it is written to the store.
    pub(super) unstored: bool,
    /// A model read's pieces not yet settled (`pieces.rs`): kept for replay and handed to the
    /// store at the wake that sends them to the client ([`Session::wake`]), or before any
    /// other event.
    pieces: pieces::Pieces,
}

impl Drop for Session {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget
            .metrics
            .replay_bytes
            .sub(inner.replay.bytes() as u64);
    }
}

/// Custom events one session may have waiting for the plugin's hook; more are refused.
pub const MAX_CUSTOM_IN_FLIGHT: usize = 4;

/// Messages a session keeps waiting behind its run, at most (count and bytes).
pub const MAX_QUEUED: usize = 4;
pub const MAX_QUEUED_BYTES: usize = 64 * 1024;

/// What became of a message ([`Session::admit`]).
pub enum Admit {
    /// Run it now with this token.
    Start(Turn, CancellationToken),
    /// It waits behind the current run.
    Queued,
    /// A run is active and the message was refused (`on_busy: reject`).
    Busy,
    /// A run is active and the queue is full.
    QueueFull,
}

/// What a resume found.
pub enum ResumeOutcome {
    /// Every event after `last_seq` was replayed.
    Recovered,
    /// Events from `last_seq + 1` to `first_available - 1` had left the replay buffer.
    Gap { first_available: u64 },
}

impl Session {
    pub fn new(
        identity: Identity,
        slot: AgentSlot,
        bound: Bound,
        owner: Sub,
        replay_cap_bytes: usize,
        budget: Arc<ReplayBudget>,
        store: Option<Arc<Store>>,
    ) -> Session {
        let inner = Inner {
            owner: Some(owner),
            unsent: Vec::new(),
            arena: bytes::BytesMut::new(),
            seq: 0,
            replay: replay::Replay::default(),
            running: None,
            queue: VecDeque::new(),
            queue_bytes: 0,
            epoch: 0,
            bound,
            withheld_from: None,
            left: false,
            live_frame: None,
            runs: None,
            usage: slot.memory.usage,
            updated: identity.listing.created,
            listing: identity.listing,
            unstored: false,
            pieces: pieces::Pieces::default(),
        };
        let Identity {
            id,
            token_hash,
            user,
            client_ip,
            ..
        } = identity;
        Session {
            shared_id: Arc::from(id.as_str()),
            id,
            token_hash,
            user,
            client_ip,
            agent: tokio::sync::Mutex::new(slot),
            approvals: Approvals::default(),
            history_pending: std::sync::atomic::AtomicBool::new(false),
            custom_in_flight: std::sync::atomic::AtomicUsize::new(0),
            kept: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(inner),
            replay_cap_bytes,
            budget,
            store,
        }
    }

    /// The session store this session writes to, if any.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref().filter(|_| !self.lock().unstored)
    }

    /// Puts back a restored session's log: its numbering goes on from the last event — or from
    /// `floor`, the last `seq` the resuming client saw, if the store lost the newest events (a
    /// crash within the write-behind interval), so that no number is given out twice — and the
    /// events (oldest first) are kept for replay within the usual limits.
    pub fn restore_log(&self, events: Vec<(u64, String)>, floor: u64) {
        let mut inner = self.lock();
        inner.seq = floor;
        for (seq, frame) in events {
            inner.seq = inner.seq.max(seq);
            let cost = inner.replay.push(Kept::Frame(seq, Utf8Bytes::from(frame)));
            self.budget.metrics.replay_bytes.add(cost as u64);
        }
        while inner.replay.bytes() > self.replay_cap_bytes {
            let Some(freed) = inner.replay.drop_oldest() else {
                break;
            };
            self.budget.metrics.replay_bytes.sub(freed as u64);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `event`, keeps it for replay and sends it to the owning connection, if any.
    pub fn emit(&self, event: &ServerEvent, metrics: &Metrics) {
        let mut inner = self.lock();
        self.emit_event_locked(&mut inner, event, metrics, false);
    }

    /// [`Session::emit`] for a plugin's own custom event (a JSON object with `event`).
    pub fn emit_custom(&self, event: Map<String, Value>, metrics: &Metrics) {
        let mut inner = self.lock();
        let name = event
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        self.emit_locked(
            &mut inner,
            &name,
            |seq, _| custom_frame(event, &self.id, seq),
            metrics,
            false,
        );
    }

    /// Ends the run: emits `event` (final answer, error or interruption) and `agent.ready`, and
    /// marks the session idle, in one step, so a client that answers the final event at once
    /// is not told the agent is still running. The one way every run ends. When a message is
    /// queued, the session stays running instead (no `agent.ready`) and the next run's input
    /// and cancel token are returned.
    /// With `hold_ready`, `agent.ready` is held back until [`Session::release`].
    pub fn finish_run(
        &self,
        event: &ServerEvent,
        metrics: &Metrics,
        hold_ready: bool,
    ) -> Option<(Turn, CancellationToken)> {
        let mut inner = self.lock();
        self.emit_event_locked(&mut inner, event, metrics, false);
        // The run's spare arena room goes (its frames keep their blocks until sent), with the
        // room of its reads' frame list and the store encoder's copy of the last piece.
        inner.arena = bytes::BytesMut::new();
        inner.unsent = Vec::new();
        inner.pieces.idle();
        let next = Self::next_queued(&mut inner);
        if next.is_none() {
            if hold_ready {
                let next = inner.seq + 1;
                inner.withheld_from.get_or_insert(next);
            }
            self.emit_ready(&mut inner, metrics);
        }
        next
    }

    /// The run is over: the next queued message, marked running, if one waits.
    fn next_queued(inner: &mut Inner) -> Option<(Turn, CancellationToken)> {
        inner.running = None;
        let next = inner.queue.pop_front()?;
        inner.queue_bytes -= next.content.size();
        let token = CancellationToken::new();
        inner.running = Some(token.clone());
        Some((next, token))
    }

    fn emit_ready(&self, inner: &mut Inner, metrics: &Metrics) {
        self.emit_event_locked(inner, &ServerEvent::Ready, metrics, false);
    }

    /// [`Session::emit_locked`] for `event`, framed in this session.
    fn emit_event_locked(
        &self,
        inner: &mut Inner,
        event: &ServerEvent,
        metrics: &Metrics,
        quiet: bool,
    ) {
        let id = &self.id;
        let encode = |seq, arena: &mut bytes::BytesMut| match quiet {
            true => event.frame_in_arena(arena, id, seq),
            false => event.frame_in_session(id, seq),
        };
        self.emit_locked(inner, event.name(), encode, metrics, quiet);
    }

    /// Numbers, keeps, stores and queues an event for the owner; `quiet`: without waking it
    /// (a streamed piece: [`Session::emit_streamed`]).
    fn emit_locked(
        &self,
        inner: &mut Inner,
        name: &str,
        encode: impl FnOnce(u64, &mut bytes::BytesMut) -> Utf8Bytes,
        metrics: &Metrics,
        quiet: bool,
    ) {
        inner.seq = inner.seq.saturating_add(1);
        let seq = inner.seq;
        let mut text = encode(seq, &mut inner.arena);
        if text.len() > MAX_EVENT_BYTES {
            tracing::warn!(session_id = %self.id, event = name, bytes = text.len(), "event over the size limit; replaced by an error");
            let error = ServerEvent::error(
                ErrorCode::EventTooLarge,
                format!("An `{name}` event of {} bytes was not sent: events are limited to {MAX_EVENT_BYTES} bytes", text.len()),
            );
            text = error.frame_in_session(&self.id, seq);
        }
        if quiet {
            inner.pieces.gather(&self.id, seq, &text);
        } else {
            // What was gathered first, then this one as it is (a lone event is not copied).
            self.settle_pieces(inner);
            if let Some(d) = self.store.as_ref().filter(|_| !inner.unstored) {
                d.events(&self.shared_id, seq, Frames::One(text.clone()));
            }
            self.keep_for_replay(inner, Kept::Frame(seq, text.clone()));
        }
        if inner.withheld_from.is_some() {
            return; // sent by `release`
        }
        if inner.owner.is_none() {
            return;
        }
        if quiet {
            inner.unsent.push(text);
        } else {
            attach::send_unsent(inner, metrics);
            if let Some(owner) = &inner.owner {
                owner.send(text);
                metrics.events_sent.inc();
            }
        }
    }

    /// Keeps the pieces gathered in [`Inner::pieces`] for replay and hands them to the store.
    fn settle_pieces(&self, inner: &mut Inner) {
        if let Some((first, last, lines)) = inner.pieces.take() {
            if let Some(d) = self.store.as_ref().filter(|_| !inner.unstored) {
                d.events(&self.shared_id, first, Frames::Short(lines.clone()));
            }
            self.keep_for_replay(inner, Kept::Pieces { first, last, lines });
        }
    }

    /// The id as the store's writer holds it (what a session's own commit names).
    pub(crate) fn shared_id(&self) -> &Arc<str> {
        &self.shared_id
    }

    /// Whether a run (or a followed turn) is in progress here.
    pub fn is_running(&self) -> bool {
        self.lock().running.is_some()
    }

    /// True when `conn_id` owns the session now.
    pub fn owned_by(&self, conn_id: u64) -> bool {
        self.lock()
            .owner
            .as_ref()
            .is_some_and(|o| o.id() == conn_id)
    }

    /// Admits a message: starts a run when idle; else follows `on_busy` (and says so with an
    /// `agent.message_queued` when it waits).
    pub fn admit(&self, turn: Turn, on_busy: OnBusy, metrics: &Metrics) -> Admit {
        let mut inner = self.lock();
        let Some(running) = &inner.running else {
            let token = CancellationToken::new();
            inner.running = Some(token.clone());
            return Admit::Start(turn, token);
        };
        let content = &turn.content;
        match on_busy {
            OnBusy::Reject => return Admit::Busy,
            OnBusy::Enqueue => {
                if inner.queue.len() >= MAX_QUEUED
                    || inner.queue_bytes + content.size() > MAX_QUEUED_BYTES
                {
                    return Admit::QueueFull;
                }
            }
            OnBusy::Interrupt => {
                running.cancel();
                inner.queue.clear();
                inner.queue_bytes = 0;
            }
        }
        inner.queue_bytes += content.size();
        inner.queue.push_back(turn);
        let position = inner.queue.len();
        let queued = ServerEvent::MessageQueued { position };
        self.emit_event_locked(&mut inner, &queued, metrics, false);
        Admit::Queued
    }

    /// Binds the session to another build's instance (a hot reload).
    pub fn set_bound(&self, bound: &Bound) {
        self.lock().bound = bound.clone();
    }

    pub fn bound(&self) -> Bound {
        self.lock().bound.clone()
    }

    /// Cancels the running run and drops any queued messages; false when none is running.
    pub fn cancel(&self) -> bool {
        let mut inner = self.lock();
        inner.queue.clear();
        inner.queue_bytes = 0;
        match &inner.running {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

mod attach;
mod foreign;
mod held;
mod limits;
mod pieces;
mod replay;
mod summary;
