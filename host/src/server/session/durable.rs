//! Sessions that outlive the process: each session's resume token (hashed), settings,
//! conversation memory, whether a turn is running, and the tail of its event log — in SQLite
//! (`--store sqlite:PATH`, the default; `durable_sqlite.rs`) or in Redis, shared by several hosts
//! (`--store redis://…`; `durable_redis.rs`). Live sessions stay in memory as before; this is
//! written behind them and read when a client resumes a session this process does not hold
//! (after a restart, after the resume window let it go from memory, or made on another host).
//!
//! Writes never wait on the store: [`Durable`] hands them (as [`Op`]s) to one writer thread,
//! which gathers them for [`FLUSH_EVERY`] from the first and applies them at once (one SQLite
//! transaction, one Redis pipeline). A crash (even `kill -9`) loses at most the writes of the
//! last interval; `synchronous=NORMAL` in WAL mode keeps the SQLite database itself consistent
//! (a power cut can lose the last transactions, not corrupt it).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The writer applies queued writes at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Events kept per session in the database (the newest); resume replays from these.
pub const EVENTS_KEPT: u64 = 4096;

/// A session as the store has it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub token_hash: String,
    pub settings: String,
    /// `{"messages": [...], "dropped_turns": N}`; empty before the first turn ended.
    pub memory: String,
    /// The input of the turn that was running when the process stopped (JSON), if any.
    pub running_input: Option<String>,
    /// The newest events, oldest first: (seq, frame).
    pub events: Vec<(u64, String)>,
    /// Redis: the host whose lease says the session's turn is running there now (not this
    /// host; an expired lease is no lease).
    pub running_on: Option<String>,
    /// Redis: the id of the newest event's stream entry (to follow the stream from).
    pub last_entry: Option<String>,
}

pub(super) enum Op {
    Create {
        id: String,
        token_hash: String,
        settings: String,
        at: i64,
    },
    Event {
        id: Arc<str>,
        seq: u64,
        frame: Utf8Bytes,
    },
    TurnStart {
        id: String,
        input: String,
        at: i64,
    },
    TurnEnd {
        id: String,
        memory: String,
        at: i64,
    },
    Delete {
        id: String,
    },
    /// This host now serves the session (Redis: the session's `host`).
    Claim {
        id: String,
    },
    Flush(mpsc::Sender<()>),
}

/// A connection to the store kept by a reader that reads often (a followed turn).
#[derive(Default)]
pub struct StoreConn(Option<redis::Connection>);

/// The handle the sessions write through.
pub struct Durable {
    tx: mpsc::Sender<Op>,
    backend: Backend,
    ttl: Duration,
    /// This process, as named in leases and the sessions it takes (Redis).
    host_id: String,
}

enum Backend {
    Sqlite(PathBuf),
    Redis {
        client: redis::Client,
        url: String,
        cancels: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    },
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.describe())
    }
}

pub(super) fn now() -> i64 {
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

impl Durable {
    /// Opens (or creates) the store at `path` and starts its writer. Sessions idle longer than
    /// `ttl` are deleted now and then hourly. A file that is not a usable store is an error.
    pub fn open(path: &Path, ttl: Duration) -> Result<Arc<Durable>, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let db = super::durable_sqlite::open(path)?;
        let (tx, rx) = mpsc::channel();
        let durable = Arc::new(Durable {
            tx,
            backend: Backend::Sqlite(path.to_owned()),
            ttl,
            host_id: uuid::Uuid::new_v4().to_string(),
        });
        let expired = super::durable_sqlite::expire_now(&db, ttl);
        if expired > 0 {
            tracing::info!(expired, "sessions idle longer than --session-ttl deleted");
        }
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || super::durable_sqlite::writer(db, rx, ttl))
            .map_err(|e| format!("cannot start the session store's writer: {e}"))?;
        Ok(durable)
    }

    /// Connects to the Redis at `url` (`redis://HOST:PORT[/DB]`) and starts the writer and
    /// the cancel listener. An unreachable server is an error.
    pub fn open_redis(url: &str, ttl: Duration) -> Result<Arc<Durable>, String> {
        let shown = redact_url(url);
        let url_for_client = url;
        let url = shown.as_str();
        let client = redis::Client::open(url_for_client)
            .map_err(|e| format!("--store {url}: not a Redis URL: {e}"))?;
        let mut conn =
            super::durable_redis::connect(&client).map_err(|e| format!("--store {url}: {e}"))?;
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .map_err(|e| format!("--store {url}: the server does not answer PING: {e}"))?;
        let host_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel();
        let (cancel_tx, cancel_rx) = tokio::sync::mpsc::unbounded_channel();
        let durable = Arc::new(Durable {
            tx,
            backend: Backend::Redis {
                client: client.clone(),
                url: url.to_owned(),
                cancels: std::sync::Mutex::new(Some(cancel_rx)),
            },
            ttl,
            host_id: host_id.clone(),
        });
        let c = client.clone();
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || super::durable_redis::writer(c, rx, ttl, host_id))
            .map_err(|e| format!("cannot start the session store's writer: {e}"))?;
        std::thread::Builder::new()
            .name("session-cancels".into())
            .spawn(move || super::durable_redis::listen_for_cancels(client, cancel_tx))
            .map_err(|e| format!("cannot start the session store's listener: {e}"))?;
        Ok(durable)
    }

    /// "sqlite:PATH" or the Redis URL.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(p) => format!("sqlite:{}", p.display()),
            Backend::Redis { url, .. } => url.clone(),
        }
    }

    /// Shared by several hosts (Redis): sessions may be served, and turns run, elsewhere.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis { .. })
    }

    /// This process's name in the store.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Session ids whose running turn another host was asked to cancel (Redis; taken once).
    pub fn take_cancels(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        match &self.backend {
            Backend::Redis { cancels, .. } => cancels.lock().ok()?.take(),
            Backend::Sqlite(_) => None,
        }
    }

    /// Asks whichever host runs session `id`'s turn to cancel it (Redis; blocking).
    pub fn publish_cancel(&self, id: &str) -> Result<(), String> {
        match &self.backend {
            Backend::Redis { client, .. } => super::durable_redis::publish_cancel(client, id),
            Backend::Sqlite(_) => Ok(()),
        }
    }

    /// Events after stream entry `after`, and whether the turn's lease is held (Redis;
    /// blocking): what a host following another's turn reads, every 50 ms — over `conn`, kept
    /// between reads (made on first use, dropped after a failure).
    pub fn follow(
        &self,
        conn: &mut StoreConn,
        id: &str,
        after: Option<&str>,
    ) -> Result<super::durable_redis::Followed, String> {
        match &self.backend {
            Backend::Redis { client, .. } => {
                let c = match &mut conn.0 {
                    Some(c) => c,
                    empty => empty.insert(super::durable_redis::connect(client)?),
                };
                super::durable_redis::events_after(c, id, after).map_err(|e| {
                    conn.0 = None;
                    format!("the session store is unavailable: {e}")
                })
            }
            Backend::Sqlite(_) => Ok((false, Vec::new())),
        }
    }

    /// This host serves session `id` from now on (Redis: other hosts holding an old copy in
    /// memory restore it on their next resume).
    pub fn claim(&self, id: &str) {
        self.send(Op::Claim { id: id.to_owned() });
    }

    /// Which host last took session `id` (Redis; blocking). `Ok(None)`: unknown or SQLite.
    pub fn holder(&self, id: &str) -> Result<Option<String>, String> {
        match &self.backend {
            Backend::Redis { client, .. } => {
                use redis::Commands;
                let mut c = super::durable_redis::connect(client)?;
                c.hget(super::durable_redis::session_key(id), "host")
                    .map_err(|e| format!("the session store is unavailable: {e}"))
            }
            Backend::Sqlite(_) => Ok(None),
        }
    }

    fn send(&self, op: Op) {
        let _ = self.tx.send(op);
    }

    pub fn create(&self, id: &str, token: &str, settings: &crate::agent::SessionSettings) {
        self.send(Op::Create {
            id: id.to_owned(),
            token_hash: hash_token(token),
            settings: serde_json::to_string(settings).unwrap_or_default(),
            at: now(),
        });
    }

    /// An event of the session's log (the id and the frame are shared, not copied).
    pub fn event(&self, id: &Arc<str>, seq: u64, frame: &Utf8Bytes) {
        self.send(Op::Event {
            id: id.clone(),
            seq,
            frame: frame.clone(),
        });
    }

    pub fn turn_start(&self, id: &str, input: &crate::llm::Content) {
        self.send(Op::TurnStart {
            id: id.to_owned(),
            input: serde_json::to_string(input).unwrap_or_default(),
            at: now(),
        });
    }

    pub fn turn_end(&self, id: &str, memory: &crate::agent::Memory) {
        let memory = serde_json::json!({"messages": memory.messages(), "dropped_turns": memory.dropped_turns()});
        self.send(Op::TurnEnd {
            id: id.to_owned(),
            memory: memory.to_string(),
            at: now(),
        });
    }

    pub fn delete(&self, id: &str) {
        self.send(Op::Delete { id: id.to_owned() });
    }

    /// Waits until every write sent so far is applied (tests, shutdown).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }

    /// Reads session `id` (on a thread that may block). `Ok(None)`: the store has no such
    /// session (never made, closed, or expired).
    pub fn load(&self, id: &str) -> Result<Option<Stored>, String> {
        let path = match &self.backend {
            Backend::Sqlite(p) => p,
            Backend::Redis { client, .. } => {
                return super::durable_redis::load(client, id, &self.host_id)
            }
        };
        super::durable_sqlite::load(path, id, self.ttl)
    }
}

impl Op {
    fn session(&self) -> Option<&str> {
        match self {
            Op::Create { id, .. }
            | Op::TurnStart { id, .. }
            | Op::TurnEnd { id, .. }
            | Op::Delete { id }
            | Op::Claim { id } => Some(id),
            Op::Event { id, .. } => Some(id),
            Op::Flush(_) => None,
        }
    }
}

/// Drops the writes of a batch that its own deletes undo: a session made, used and closed
/// within one interval (a short conversation, a churning client) costs the store one delete.
pub(super) fn coalesce(batch: &mut Vec<Op>) {
    let mut last_delete: std::collections::HashMap<String, usize> = Default::default();
    for (i, op) in batch.iter().enumerate() {
        if let Op::Delete { id } = op {
            last_delete.insert(id.clone(), i);
        }
    }
    if last_delete.is_empty() {
        return;
    }
    let mut i = 0;
    batch.retain(|op| {
        let keep = match op.session().and_then(|id| last_delete.get(id)) {
            Some(&d) => i >= d,
            None => true,
        };
        i += 1;
        keep
    });
}

/// A session's consecutive events of one batch, stored as one unit (an SQLite row, a Redis
/// stream entry): the first `seq` and the frames, one a line (frames are one-line JSON). A token
/// stream writes a few of these a second, not one per token.
pub(super) struct Chunk {
    pub id: Arc<str>,
    pub first: u64,
    pub last: u64,
    pub frames: String,
}

impl Chunk {
    /// The events of a stored chunk, with their `seq`s.
    pub fn events(first: u64, frames: &str) -> impl Iterator<Item = (u64, &str)> {
        frames
            .split('\n')
            .enumerate()
            .map(move |(i, f)| (first + i as u64, f))
    }
}

/// A batch's events gathered per session, in the order sessions first appear.
#[derive(Default)]
pub(super) struct Chunks {
    list: Vec<Chunk>,
    index: std::collections::HashMap<Arc<str>, usize>,
}

impl Chunks {
    /// Adds an event to its session's chunk. If it does not follow the chunk's last `seq` (it
    /// should not happen), the chunk gathered so far is returned, to be written first.
    pub fn add(&mut self, id: &Arc<str>, seq: u64, frame: &str) -> Option<Chunk> {
        let start = || Chunk {
            id: id.clone(),
            first: seq,
            last: seq,
            frames: frame.to_owned(),
        };
        match self.index.get(id).copied() {
            Some(i) if self.list[i].last + 1 == seq => {
                let c = &mut self.list[i];
                c.frames.push('\n');
                c.frames.push_str(frame);
                c.last = seq;
                None
            }
            Some(i) => Some(std::mem::replace(&mut self.list[i], start())),
            None => {
                self.index.insert(id.clone(), self.list.len());
                self.list.push(start());
                None
            }
        }
    }

    /// A deleted session's gathered events are not written.
    pub fn discard(&mut self, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.list[i].frames.clear();
        }
    }

    /// The chunks to write.
    pub fn into_chunks(self) -> impl Iterator<Item = Chunk> {
        self.list.into_iter().filter(|c| !c.frames.is_empty())
    }
}

/// A writer's wait: up to `wait` for a first write, then [`FLUSH_EVERY`] for more (not at all
/// when it is a flush), then everything queued, into `batch`. False once every sender is gone.
pub(super) fn gather(rx: &mpsc::Receiver<Op>, batch: &mut Vec<Op>, wait: Duration) -> bool {
    match rx.recv_timeout(wait) {
        Ok(op) => {
            let flush_now = matches!(op, Op::Flush(_));
            batch.push(op);
            if !flush_now {
                std::thread::sleep(FLUSH_EVERY);
            }
            while let Ok(op) = rx.try_recv() {
                batch.push(op);
            }
            coalesce(batch);
            true
        }
        Err(mpsc::RecvTimeoutError::Timeout) => true,
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_store_urls_are_not_shown() {
        assert_eq!(
            redact_url("redis://:s3cret@db:6379/2"),
            "redis://:***@db:6379/2"
        );
        assert_eq!(
            redact_url("redis://app:s3cret@db:6379"),
            "redis://app:***@db:6379"
        );
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
    }

    #[test]
    fn a_session_made_and_closed_within_one_batch_costs_one_delete() {
        let ev = |id: &str, seq| Op::Event {
            id: Arc::from(id),
            seq,
            frame: Utf8Bytes::from("{}"),
        };
        let mut batch = vec![
            Op::Create {
                id: "a".into(),
                token_hash: String::new(),
                settings: String::new(),
                at: 0,
            },
            ev("a", 1),
            ev("b", 7),
            Op::Delete { id: "a".into() },
            ev("b", 8),
        ];
        coalesce(&mut batch);
        let kinds: Vec<String> = batch
            .iter()
            .map(|op| match op {
                Op::Delete { id } => format!("delete {id}"),
                Op::Event { id, seq, .. } => format!("event {id} {seq}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(kinds, ["event b 7", "delete a", "event b 8"]);
    }

    #[test]
    fn a_session_round_trips_and_its_events_are_bounded() {
        let dir = std::env::temp_dir().join(format!("durable-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sessions.db");
        let d = Durable::open(&path, Duration::from_secs(3600)).unwrap();
        d.create("s1", "tok", &Default::default());
        let sid: Arc<str> = Arc::from("s1");
        for seq in 1..=EVENTS_KEPT + 10 {
            d.event(&sid, seq, &Utf8Bytes::from(format!("{{\"seq\":{seq}}}")));
            if seq % 1000 == 0 {
                d.flush(); // several chunks
            }
        }
        d.turn_start("s1", &crate::llm::Content::Text("hi".into()));
        d.flush();
        let s = d.load("s1").unwrap().unwrap();
        assert_eq!(s.token_hash, hash_token("tok"));
        // Whole chunks are kept: at least the newest EVENTS_KEPT, in order, each with its seq.
        let n = s.events.len() as u64;
        assert!((EVENTS_KEPT..=EVENTS_KEPT + 1000).contains(&n), "{n}");
        assert_eq!(s.events.last().unwrap().0, EVENTS_KEPT + 10);
        for (seq, frame) in &s.events {
            assert_eq!(frame, &format!("{{\"seq\":{seq}}}"));
        }
        assert_eq!(s.running_input.as_deref(), Some("\"hi\""));
        d.delete("s1");
        d.flush();
        assert!(d.load("s1").unwrap().is_none());
        // Not a store: a clear error.
        std::fs::write(
            dir.join("junk.db"),
            b"this is not a database, just some text...",
        )
        .unwrap();
        let e = Durable::open(&dir.join("junk.db"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.contains("is not usable"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
