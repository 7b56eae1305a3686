//! The session store: what outlives the process — each session's resume token (hashed),
//! settings, conversation memory, the running turn's input, and the tail of its event log — in
//! SQLite (`--store sqlite:PATH`, the default; [`sqlite`]) or in Redis, shared by several hosts
//! (`--store redis://…`; [`redis`]). Live sessions stay in memory; this is written behind them
//! and read when a client resumes a session this process does not hold.
//!
//! **The one seam.** Sessions talk to the store only through [`Store`]: writes are handed (as
//! [`Op`]s) to one writer thread ([`writer`]) that applies them in batches through a
//! [`Backend`] — the one loop both stores share; reads are async and hop to the blocking pool
//! here, not at the call sites. Features only a shared store has (following a turn on another
//! host, cancels between hosts, which host holds a session) are the [`Shared`] capability,
//! which only the Redis backend offers ([`Store::shared`]).
//!
//! **Acknowledged means durable.** Events stream write-behind (a crash loses at most one
//! [`FLUSH_EVERY`] interval of them), but [`Store::commit`] — awaited before a client is told a
//! session exists (`agent.session_created`) or a turn is done (`agent.ready`) — makes the writer
//! commit now and answers once everything sent before it is written: group commit, one commit
//! for every acknowledgement waiting at that moment. It waits at most `--store-ack-timeout`.
//!
//! **Outages lose nothing within a bound.** A write that fails stays in the writer's buffer, in
//! order, and is retried with back-off until the store takes it; the buffer is bounded
//! (`--store-buffer`): past it, streamed events are dropped before session and turn records,
//! each drop counted. [`Store::health`] says `ok` or `degraded`.

pub(crate) mod batch;
mod health;
pub(crate) mod line;
mod listing;
mod op;
mod quota;
mod redis;
mod shared;
mod sqlite;
mod writer;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use health::State;
pub use health::StoreHealth;
pub use listing::{Access, Cursor, Listed, Listing, NewSession, TITLE_CHARS};
pub(crate) use op::{Ack, Acker, Created, Frames, Op, TurnEnded, TurnStarted};
pub use quota::{QuotaCounts, Windows};
pub use redis::Followed;
pub use shared::{FollowConn, Shared};

/// The writer gathers writes for this long from the first (unless an acknowledgement waits).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Events kept per session in the store (the newest); resume replays from these.
pub const EVENTS_KEPT: u64 = 4096;

/// Why the store could not do something. Shown to operators (and, for `Unavailable`, to a
/// client as `store_unavailable`); never carries a password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer or refused the operation (down, stalled, disk full).
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
    /// The store's file is not a store this host can use.
    #[error("the session store {path} is not usable: {reason} (move it away to start with an empty one)")]
    Corrupt { path: String, reason: String },
    /// The store was written by another version of the host.
    #[error("the session store {path} has schema version {found}; this host knows {known}")]
    Schema {
        path: String,
        found: i64,
        known: i64,
    },
    /// A stored entry that cannot be read (logged and counted; the rest of the session is read).
    #[error("a stored entry of session {session} is malformed: {reason}")]
    BadEntry { session: String, reason: String },
    /// `--store` names no store this host can open.
    #[error("--store {0}")]
    Config(String),
    /// The store's threads could not start.
    #[error("cannot start the session store: {0}")]
    Start(String),
    /// An acknowledgement waited `--store-ack-timeout` for its write (which stays buffered).
    #[error("the session store did not confirm the write within {0} ms; it stays buffered")]
    AckTimeout(u64),
}

/// A session as the store has it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub token_hash: String,
    /// The principal (user) the session belongs to; None: made anonymously.
    pub owner: Option<String>,
    /// How the session is listed: its title (the first message), turns, when it was made.
    pub listing: Listing,
    /// `SessionSettings` as JSON.
    pub settings: String,
    /// The memory as `Memory::to_stored` wrote it; empty before the first turn ended.
    pub memory: String,
    /// The input of the turn that was running when its host stopped (JSON), if any.
    pub running_input: Option<String>,
    /// The newest events, oldest first: (seq, frame).
    pub events: Vec<(u64, String)>,
    /// Redis: the host whose lease says the session's turn is running there now (not this
    /// host; an expired lease is no lease).
    pub running_on: Option<String>,
    /// Redis: the id of the newest event's stream entry (to follow the stream from).
    pub last_entry: Option<String>,
}

/// One store's writes: applied in one transaction (SQLite) or one atomic pipeline (Redis), all
/// or nothing, so a failed batch can be retried whole.
pub(crate) trait Backend: Send + 'static {
    fn apply(&mut self, batch: &[Op]) -> Result<(), StoreError>;
    /// Periodic work between batches (lease renewal, expiry sweeps).
    fn tick(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How long the writer may wait for a write before calling [`Backend::tick`].
    fn idle_wait(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// Where and how the store keeps sessions.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Idle sessions are deleted after this long.
    pub ttl: Duration,
    /// Bytes of unwritten writes kept while the store is unreachable (`--store-buffer`).
    pub buffer_bytes: usize,
    /// An acknowledgement waits at most this long for its write (`--store-ack-timeout`).
    pub ack_timeout: Duration,
    /// Bytes of a session's newest events kept in the store (its replay buffer's size); older
    /// ones are dropped when a turn ends, as the replay buffer drops them.
    pub events_bytes: usize,
}

/// The handle sessions write and read through.
pub struct Store {
    tx: mpsc::Sender<Op>,
    state: Arc<State>,
    reads: Reads,
    shared: Option<Shared>,
    ack_timeout: Duration,
}

enum Reads {
    Sqlite {
        path: std::path::PathBuf,
        ttl: Duration,
        /// A read-only connection kept for the per-address counts (asked on every new
        /// session: opening one each time cost a fifth of the churn rate).
        counter: Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
        /// Sessions in the store, as the writer counts them.
        stored: Arc<std::sync::atomic::AtomicU64>,
    },
    Redis,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.describe())
    }
}

/// Unix milliseconds (what writes are stamped with: a session list orders by them).
pub(crate) fn now_ms() -> i64 {
    crate::time::unix_millis() as i64
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A resume token as stored: SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Opens (or creates) the SQLite store at `path` and starts its writer. A file that is not
    /// a usable store is an error.
    pub fn open_sqlite(path: &Path, opts: &StoreOptions) -> Result<Arc<Store>, StoreError> {
        let backend = sqlite::SqliteBackend::open(path, opts.ttl, opts.events_bytes)?;
        let reads = Reads::Sqlite {
            path: path.to_owned(),
            ttl: opts.ttl,
            counter: Arc::default(),
            stored: backend.stored_counter(),
        };
        let state = Arc::new(State::new(
            format!("sqlite:{}", path.display()),
            opts.buffer_bytes,
        ));
        Self::start(backend, reads, None, opts, state)
    }

    /// Connects to the Redis at `url` (`redis://HOST:PORT[/DB]`) and starts the writer and the
    /// cancel listener. An unreachable server is an error.
    pub fn open_redis(url: &str, opts: &StoreOptions) -> Result<Arc<Store>, StoreError> {
        let host_id = uuid::Uuid::new_v4().to_string();
        let state = Arc::new(State::new(redact_url(url), opts.buffer_bytes));
        let (backend, shared) = shared::open(url, opts.ttl, &host_id, state.clone())?;
        Self::start(backend, Reads::Redis, Some(shared), opts, state)
    }

    fn start(
        backend: impl Backend,
        reads: Reads,
        shared: Option<Shared>,
        opts: &StoreOptions,
        state: Arc<State>,
    ) -> Result<Arc<Store>, StoreError> {
        let (tx, rx) = mpsc::channel();
        writer::spawn(backend, rx, state.clone())?;
        Ok(Arc::new(Store {
            tx,
            state,
            reads,
            shared,
            ack_timeout: opts.ack_timeout,
        }))
    }

    /// "sqlite:PATH" or the Redis URL (password hidden).
    pub fn describe(&self) -> String {
        self.state.name.clone()
    }

    /// The several-hosts features, when the store is shared (Redis).
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The store as `/health` and `/metrics` show it.
    pub fn health(&self) -> StoreHealth {
        self.state.health()
    }

    fn send(&self, op: Op) {
        let size = op.size();
        // Past the buffer bound, streamed events are the first to go (counted); records are
        // always handed over (the writer's bound drops them last).
        if matches!(op, Op::Events { .. }) && self.state.over_bound(size) {
            self.state
                .dropped_events
                .fetch_add(op.events(), Ordering::Relaxed);
            return;
        }
        self.state.queued(size);
        if self.tx.send(op).is_err() {
            self.state.unqueued(size);
        }
    }

    pub fn create(&self, new: NewSession) {
        self.send(Op::Create(Box::new(Created {
            id: new.id,
            token_hash: new.token_hash,
            settings: new.settings,
            client: new.client.to_string(),
            owner: new.owner,
            agent: new.agent,
            at: now_ms(),
        })));
    }

    /// Sessions in the store: all of them, and those `client` made — what the stored-session
    /// caps count (`--max-stored-sessions`, `--max-stored-sessions-per-ip`, given as `limits`:
    /// a Redis count at a limit is made exact first). Sessions still in the writer's buffer
    /// are not counted yet.
    pub async fn count_stored(
        &self,
        client: IpAddr,
        limits: (u64, u64),
    ) -> Result<(u64, u64), StoreError> {
        let client = client.to_string();
        match &self.reads {
            Reads::Sqlite {
                path,
                counter,
                stored,
                ..
            } => {
                let all = stored.load(Ordering::Relaxed);
                let (path, counter) = (path.clone(), counter.clone());
                let mine = blocking(move || sqlite::count_of(&path, &counter, &client)).await?;
                Ok((all, mine))
            }
            Reads::Redis => match &self.shared {
                Some(shared) => shared.count(&client, limits).await,
                None => Ok((0, 0)),
            },
        }
    }

    /// Consecutive events of the session's log, the first numbered `first` (a session gathers a
    /// model read's events and hands them over at once as stored lines, [`Frames::Short`]: a
    /// store that keeps frames whole reads them back on its writer's thread).
    pub(crate) fn events(&self, id: &Arc<str>, first: u64, frames: Frames) {
        self.send(Op::Events {
            id: id.clone(),
            first,
            frames,
        });
    }

    /// A turn starts with `input` (JSON): a host that stops before its end leaves it to be
    /// closed as lost. `title`: the session's, on its first turn.
    pub fn turn_start(&self, id: &str, owner: Option<&str>, input: String, title: Option<String>) {
        self.send(Op::TurnStart(Box::new(TurnStarted {
            id: id.to_owned(),
            input,
            title,
            owner: owner.map(str::to_owned),
            at: now_ms(),
        })));
    }

    /// A turn ended; `memory` is the conversation after it (`Memory::to_stored`), `usage` the
    /// session's totals (JSON).
    pub fn turn_end(
        &self,
        id: &str,
        owner: Option<&str>,
        (memory, usage): (String, String),
        agent: &str,
    ) {
        self.send(Op::TurnEnd(Box::new(TurnEnded {
            id: id.to_owned(),
            memory,
            usage,
            agent: agent.to_owned(),
            owner: owner.map(str::to_owned),
            at: now_ms(),
        })));
    }

    /// Deletes session `id` and its events (`owner`: the principal it is listed under).
    pub fn delete(&self, id: &str, owner: Option<&str>) {
        self.send(Op::Delete {
            id: id.to_owned(),
            owner: owner.map(str::to_owned),
        });
    }

    /// This host serves session `id` from now on (Redis: other hosts holding an old copy in
    /// memory restore it on their next resume).
    pub fn claim(&self, id: &str) {
        self.send(Op::Claim { id: id.to_owned() });
    }

    /// Waits until every write sent so far is applied — the writer commits now rather than at
    /// its next tick — or `--store-ack-timeout` passed (then the writes stay buffered).
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.commit_for(None).await
    }

    /// [`Store::commit`] for session `id`'s writes only: the writer commits them now and
    /// leaves the other sessions' writes to its next tick.
    pub async fn commit_session(&self, id: &Arc<str>) -> Result<(), StoreError> {
        self.commit_for(Some(id.clone())).await
    }

    async fn commit_for(&self, session: Option<Arc<str>>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = std::time::Instant::now();
        self.send(Op::Ack(Ack {
            waiter: Acker::Async(tx),
            session,
        }));
        self.state.wake_writer();
        let r = match tokio::time::timeout(self.ack_timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("the writer stopped".into())),
            Err(_) => {
                self.state.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::AckTimeout(self.ack_timeout.as_millis() as u64))
            }
        };
        self.state.ack_wait.observe(started.elapsed().as_secs_f64());
        r
    }

    /// [`Store::commit`] from a thread that may block (tests, shutdown), waiting up to `wait`.
    pub fn flush_blocking(&self, wait: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Ack(Acker::Blocking(tx).into()));
        self.state.wake_writer();
        rx.recv_timeout(wait).is_ok()
    }

    /// Reads session `id`. `Ok(None)`: the store has no such session (never made, closed, or
    /// expired) — or, with `access` (a client's resume), the client may not have it (another
    /// principal's, another token): that is checked (in constant time) before anything else of
    /// the session is read.
    pub async fn load(
        &self,
        id: &str,
        access: Option<Access>,
    ) -> Result<Option<Stored>, StoreError> {
        let id = id.to_owned();
        match &self.reads {
            Reads::Sqlite { path, ttl, .. } => {
                let (path, ttl) = (path.clone(), *ttl);
                blocking(move || sqlite::load(&path, &id, ttl, access.as_ref())).await
            }
            Reads::Redis => match &self.shared {
                Some(shared) => shared.load(&id, access).await,
                None => Ok(None),
            },
        }
    }

    /// The store's lines of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        self.state.render(out);
    }
}

/// Runs a blocking store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("the read failed: {e}"))))
}

#[cfg(test)]
mod tests;
