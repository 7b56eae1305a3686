//! Sessions that outlive the process (`--store sqlite:PATH`): each session's resume token
//! (hashed), settings, conversation memory, whether a turn is running, and the tail of its event
//! log, in SQLite (WAL). Live sessions stay in memory as before; this is written behind them and
//! read only when a client resumes a session this process does not hold (after a restart, or
//! after the resume window let it go from memory).
//!
//! Writes never wait on the disk: [`Durable`] hands them to one writer thread, which gathers
//! them for [`FLUSH_EVERY`] from the first and applies them in one transaction (a session's
//! events of one interval as one row). A crash (even `kill -9`) loses at most the writes of the
//! last interval; `synchronous=NORMAL` in WAL mode keeps the
//! database itself consistent (a power cut can lose the last transactions, not corrupt it).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The writer applies queued writes at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Events kept per session in the database (the newest); resume replays from these.
pub const EVENTS_KEPT: u64 = 4096;

const SCHEMA_VERSION: i64 = 1;

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
    /// Redis: the host that last took the session (made it, ran a turn, or restored it).
    pub host: Option<String>,
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A resume token as stored: SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn open(path: &Path) -> Result<Connection, String> {
    let db = Connection::open(path)
        .map_err(|e| format!("cannot open the session store {}: {e}", path.display()))?;
    let setup = || -> rusqlite::Result<i64> {
        db.busy_timeout(Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // Rows are appended (rowid order), the index is small; 16 MiB of page cache keeps the
        // pages being written in memory.
        db.pragma_update(None, "cache_size", -16_000)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sessions (
                 id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, settings TEXT NOT NULL,
                 memory TEXT NOT NULL DEFAULT '', running_input TEXT,
                 created INTEGER NOT NULL, last_active INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS sessions_last_active ON sessions (last_active);
             CREATE TABLE IF NOT EXISTS event_chunks (
                 session TEXT NOT NULL, last_seq INTEGER NOT NULL, first_seq INTEGER NOT NULL,
                 frames TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS event_chunks_session ON event_chunks (session, last_seq);
             INSERT OR IGNORE INTO meta VALUES ('schema', 1);",
        )?;
        db.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
    };
    match setup() {
        Ok(SCHEMA_VERSION) => Ok(db),
        Ok(v) => Err(format!(
            "the session store {} has schema version {v}; this host knows {SCHEMA_VERSION}",
            path.display()
        )),
        Err(e) => Err(format!(
            "the session store {} is not usable: {e} (move it away to start with an empty one)",
            path.display()
        )),
    }
}

impl Durable {
    /// Opens (or creates) the store at `path` and starts its writer. Sessions idle longer than
    /// `ttl` are deleted now and then hourly. A file that is not a usable store is an error.
    pub fn open(path: &Path, ttl: Duration) -> Result<Arc<Durable>, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let db = open(path)?;
        let (tx, rx) = mpsc::channel();
        let durable = Arc::new(Durable {
            tx,
            backend: Backend::Sqlite(path.to_owned()),
            ttl,
            host_id: uuid::Uuid::new_v4().to_string(),
        });
        let expired = durable.expire_now(&db);
        if expired > 0 {
            tracing::info!(expired, "sessions idle longer than --session-ttl deleted");
        }
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || writer(db, rx, ttl))
            .map_err(|e| format!("cannot start the session store's writer: {e}"))?;
        Ok(durable)
    }

    /// Connects to the Redis at `url` (`redis://HOST:PORT[/DB]`) and starts the writer and
    /// the cancel listener. An unreachable server is an error.
    pub fn open_redis(url: &str, ttl: Duration) -> Result<Arc<Durable>, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("--store {url}: not a Redis URL: {e}"))?;
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
    /// blocking): what a host following another's turn reads.
    pub fn follow(
        &self,
        id: &str,
        after: Option<&str>,
    ) -> Result<super::durable_redis::Followed, String> {
        match &self.backend {
            Backend::Redis { client, .. } => {
                let mut c = super::durable_redis::connect(client)?;
                super::durable_redis::events_after(&mut c, id, after)
                    .map_err(|e| format!("the session store is unavailable: {e}"))
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
        let db = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("the session store is unavailable: {e}"))?;
        let _ = db.busy_timeout(Duration::from_secs(5));
        let read = || -> rusqlite::Result<Option<Stored>> {
            let row = db
                .query_row(
                    "SELECT token_hash, settings, memory, running_input, last_active FROM sessions WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((token_hash, settings, memory, running_input, last_active)) = row else {
                return Ok(None);
            };
            if now() - last_active > self.ttl.as_secs() as i64 {
                return Ok(None); // expired; the writer deletes it on its next sweep
            }
            let mut stmt = db.prepare(
                "SELECT first_seq, frames FROM event_chunks WHERE session = ?1 ORDER BY last_seq",
            )?;
            let chunks = stmt
                .query_map([id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // A chunk holds consecutive events, one frame a line (frames are one-line JSON).
            let mut events = Vec::new();
            for (first, frames) in chunks {
                for (i, frame) in frames.split('\n').enumerate() {
                    events.push((first + i as u64, frame.to_owned()));
                }
            }
            Ok(Some(Stored {
                token_hash,
                settings,
                memory,
                running_input,
                events,
                running_on: None,
                host: None,
                last_entry: None,
            }))
        };
        read().map_err(|e| format!("the session store is unavailable: {e}"))
    }

    fn expire_now(&self, db: &Connection) -> usize {
        expire(db, self.ttl).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "expiring old sessions failed");
            0
        })
    }
}

fn expire(db: &Connection, ttl: Duration) -> rusqlite::Result<usize> {
    let cutoff = now() - ttl.as_secs() as i64;
    db.execute(
        "DELETE FROM event_chunks WHERE session IN (SELECT id FROM sessions WHERE last_active < ?1)",
        [cutoff],
    )?;
    db.execute("DELETE FROM sessions WHERE last_active < ?1", [cutoff])
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
            true
        }
        Err(mpsc::RecvTimeoutError::Timeout) => true,
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
    }
}

/// The writer thread: applies queued writes in one transaction per flush interval.
fn writer(mut db: Connection, rx: mpsc::Receiver<Op>, ttl: Duration) {
    let mut batch: Vec<Op> = Vec::new();
    let mut last_sweep = std::time::Instant::now();
    loop {
        // Wait for a first write, then let writes gather for one flush interval and take them
        // all (a transaction per write would cost a WAL page write each): what a crash can lose
        // is at most that interval. Sleeping rather than waiting on the channel means senders
        // (the runs, on every event) never have to wake this thread.
        if !gather(&rx, &mut batch, Duration::from_secs(60)) {
            let _ = apply(&mut db, std::mem::take(&mut batch));
            return;
        }
        if !batch.is_empty() {
            if let Err(e) = apply(&mut db, std::mem::take(&mut batch)) {
                tracing::error!(error = %e, "writing to the session store failed; those writes are lost");
            }
        }
        if last_sweep.elapsed() > Duration::from_secs(3600) {
            last_sweep = std::time::Instant::now();
            if let Ok(n) = expire(&db, ttl) {
                if n > 0 {
                    tracing::info!(
                        expired = n,
                        "sessions idle longer than --session-ttl deleted"
                    );
                }
            }
        }
    }
}

/// A session's events of one batch, as one row: consecutive seqs, one frame a line.
struct Chunk {
    first: u64,
    last: u64,
    frames: String,
}

fn write_chunk(tx: &rusqlite::Transaction, id: &str, c: &Chunk) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO event_chunks (session, last_seq, first_seq, frames) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, c.last as i64, c.first as i64, c.frames])?;
    if c.last > EVENTS_KEPT {
        tx.prepare_cached("DELETE FROM event_chunks WHERE session = ?1 AND last_seq <= ?2")?
            .execute(params![id, (c.last - EVENTS_KEPT) as i64])?;
    }
    Ok(())
}

fn apply(db: &mut Connection, batch: Vec<Op>) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    let mut flushed = Vec::new();
    // Events are gathered per session: one row each per batch (a token stream writes a few
    // rows a second, not one per token), in the order sessions first appear.
    let mut chunks: Vec<(Arc<str>, Chunk)> = Vec::new();
    let mut index: std::collections::HashMap<Arc<str>, usize> = Default::default();
    for op in batch {
        match op {
            Op::Create {
                id,
                token_hash,
                settings,
                at,
            } => {
                tx.execute(
                    "INSERT OR REPLACE INTO sessions (id, token_hash, settings, created, last_active) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![id, token_hash, settings, at],
                )?;
            }
            Op::Event { id, seq, frame } => {
                let start = || Chunk {
                    first: seq,
                    last: seq,
                    frames: frame.as_str().to_owned(),
                };
                match index.get(&id).copied() {
                    Some(i) if chunks[i].1.last + 1 == seq => {
                        let c = &mut chunks[i].1;
                        c.frames.push('\n');
                        c.frames.push_str(frame.as_str());
                        c.last = seq;
                    }
                    // Not consecutive (it should not happen): what was gathered goes first.
                    Some(i) => {
                        write_chunk(&tx, &id, &chunks[i].1)?;
                        chunks[i].1 = start();
                    }
                    None => {
                        index.insert(id.clone(), chunks.len());
                        chunks.push((id, start()));
                    }
                }
            }
            Op::TurnStart { id, input, at } => {
                tx.execute(
                    "UPDATE sessions SET running_input = ?2, last_active = ?3 WHERE id = ?1",
                    params![id, input, at],
                )?;
            }
            Op::TurnEnd { id, memory, at } => {
                tx.execute(
                    "UPDATE sessions SET memory = ?2, running_input = NULL, last_active = ?3 WHERE id = ?1",
                    params![id, memory, at],
                )?;
            }
            Op::Delete { id } => {
                // Events gathered for it are not written (an empty chunk is skipped).
                if let Some(&i) = index.get(id.as_str()) {
                    chunks[i].1.frames.clear();
                }
                tx.execute("DELETE FROM event_chunks WHERE session = ?1", [&id])?;
                tx.execute("DELETE FROM sessions WHERE id = ?1", [&id])?;
            }
            Op::Claim { .. } => {}
            Op::Flush(done) => flushed.push(done),
        }
    }
    for (id, c) in chunks.iter().filter(|(_, c)| !c.frames.is_empty()) {
        write_chunk(&tx, id, c)?;
    }
    tx.commit()?;
    for done in flushed {
        let _ = done.send(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
