//! Sessions that outlive the process (`--store sqlite:PATH`): each session's resume token
//! (hashed), settings, conversation memory, whether a turn is running, and the tail of its event
//! log, in SQLite (WAL). Live sessions stay in memory as before; this is written behind them and
//! read only when a client resumes a session this process does not hold (after a restart, or
//! after the resume window let it go from memory).
//!
//! Writes never wait on the disk: [`Durable`] hands them to one writer thread, which applies what
//! has queued in one transaction at least every [`FLUSH_EVERY`]. A crash (even `kill -9`) loses
//! at most the writes of the last flush interval; `synchronous=NORMAL` in WAL mode keeps the
//! database itself consistent (a power cut can lose the last transactions, not corrupt it).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The writer applies queued writes at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
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
}

enum Op {
    Create {
        id: String,
        token_hash: String,
        settings: String,
        at: i64,
    },
    Event {
        id: String,
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
    Flush(mpsc::Sender<()>),
}

/// The handle the sessions write through.
pub struct Durable {
    tx: Mutex<mpsc::Sender<Op>>,
    path: PathBuf,
    ttl: Duration,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.path.display())
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
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sessions (
                 id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, settings TEXT NOT NULL,
                 memory TEXT NOT NULL DEFAULT '', running_input TEXT,
                 created INTEGER NOT NULL, last_active INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS sessions_last_active ON sessions (last_active);
             CREATE TABLE IF NOT EXISTS events (
                 session TEXT NOT NULL, seq INTEGER NOT NULL, frame TEXT NOT NULL,
                 PRIMARY KEY (session, seq)) WITHOUT ROWID;
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
            tx: Mutex::new(tx),
            path: path.to_owned(),
            ttl,
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, op: Op) {
        let _ = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(op);
    }

    pub fn create(&self, id: &str, token: &str, settings: &crate::agent::SessionSettings) {
        self.send(Op::Create {
            id: id.to_owned(),
            token_hash: hash_token(token),
            settings: serde_json::to_string(settings).unwrap_or_default(),
            at: now(),
        });
    }

    /// An event of the session's log (the frame is shared, not copied).
    pub fn event(&self, id: &str, seq: u64, frame: &Utf8Bytes) {
        self.send(Op::Event {
            id: id.to_owned(),
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
        let db = Connection::open_with_flags(
            &self.path,
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
            let mut stmt =
                db.prepare("SELECT seq, frame FROM events WHERE session = ?1 ORDER BY seq")?;
            let events = stmt
                .query_map([id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(Stored {
                token_hash,
                settings,
                memory,
                running_input,
                events,
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
        "DELETE FROM events WHERE session IN (SELECT id FROM sessions WHERE last_active < ?1)",
        [cutoff],
    )?;
    db.execute("DELETE FROM sessions WHERE last_active < ?1", [cutoff])
}

/// The writer thread: applies queued writes in one transaction per flush interval.
fn writer(mut db: Connection, rx: mpsc::Receiver<Op>, ttl: Duration) {
    let mut batch: Vec<Op> = Vec::new();
    let mut last_sweep = std::time::Instant::now();
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(op) => {
                batch.push(op);
                // Take what else is queued, up to a bound, then write.
                while batch.len() < 10_000 {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = apply(&mut db, std::mem::take(&mut batch));
                return;
            }
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

fn apply(db: &mut Connection, batch: Vec<Op>) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    let mut flushed = Vec::new();
    // The newest seq written per session, to trim its older events once.
    let mut newest: std::collections::HashMap<String, u64> = Default::default();
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT OR REPLACE INTO events (session, seq, frame) VALUES (?1, ?2, ?3)",
        )?;
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
                    insert_event.execute(params![id, seq as i64, frame.as_str()])?;
                    newest.insert(id, seq);
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
                    tx.execute("DELETE FROM events WHERE session = ?1", [&id])?;
                    tx.execute("DELETE FROM sessions WHERE id = ?1", [&id])?;
                    newest.remove(&id);
                }
                Op::Flush(done) => flushed.push(done),
            }
        }
        let mut trim = tx.prepare_cached("DELETE FROM events WHERE session = ?1 AND seq <= ?2")?;
        for (id, seq) in &newest {
            if *seq > EVENTS_KEPT {
                trim.execute(params![id, (*seq - EVENTS_KEPT) as i64])?;
            }
        }
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
        for seq in 1..=EVENTS_KEPT + 10 {
            d.event("s1", seq, &Utf8Bytes::from(format!("{{\"seq\":{seq}}}")));
        }
        d.turn_start("s1", &crate::llm::Content::Text("hi".into()));
        d.flush();
        let s = d.load("s1").unwrap().unwrap();
        assert_eq!(s.token_hash, hash_token("tok"));
        assert_eq!(s.events.len() as u64, EVENTS_KEPT);
        assert_eq!(s.events.last().unwrap().0, EVENTS_KEPT + 10);
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
