//! The session store in SQLite (`--store sqlite:PATH`, the default): the schema, the writer's
//! transactions (a session's events of one batch as one row) and the reads. WAL mode with
//! `synchronous=NORMAL` keeps the database consistent through a crash (a power cut can lose the
//! last transactions, not corrupt it).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::batch::{strip_resume_tokens, Chunk, Chunks};
use super::{now, Backend, Created, Op, StoreError, TurnEnded, TurnStarted, EVENTS_KEPT};

/// 1: the first; 2: `sessions.client` (the creating address, counted by the stored-session
/// caps); 3: `owner`, `agent`, `title`, `turns`, `usage` (a principal's session list); 4: an
/// event's line in `event_chunks.frames` may leave out the frame's tail or be said against the
/// line before (`super::line`; an older host would read such lines wrong, so it refuses the
/// store). An older store is migrated on open.
const SCHEMA_VERSION: i64 = 4;
/// Idle sessions past the TTL are deleted this often (and at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// How often the writer checkpoints the WAL into the database (between batches).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The writer's side: one connection, one transaction per batch. The writer checkpoints the
/// WAL itself once a second between batches (right after a commit, so the checkpoint completes
/// and the WAL restarts instead of growing), never inside a commit an acknowledgement waits for.
pub(crate) struct SqliteBackend {
    db: Connection,
    ttl: Duration,
    /// Bytes of a session's newest stored events kept when its turn ends (counted as stored:
    /// lines without their tails hold more events than the replay buffer's same bytes).
    events_bytes: usize,
    /// Sessions whose turn ended and whose old events are to be cut (in `tick`, after the
    /// commit an acknowledgement waits for, a few at a time).
    trims: std::collections::BTreeSet<String>,
    /// Bytes of events this process wrote per session since its last cut: a session is cut
    /// only when it may hold more than `events_bytes` (most never do; no query for them).
    written: std::collections::HashMap<Arc<str>, usize>,
    /// Sessions in the store, kept by the writer (counted once on open): the global cap reads
    /// it instead of counting rows for every new session.
    stored: Arc<AtomicU64>,
    last_sweep: Instant,
    last_checkpoint: Instant,
}

impl SqliteBackend {
    /// Opens (or creates) the store at `path`; a file that is not a usable store is an error.
    pub(crate) fn open(
        path: &Path,
        ttl: Duration,
        events_bytes: usize,
    ) -> Result<SqliteBackend, StoreError> {
        let private = |e: std::io::Error| StoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        // The store holds conversations: a directory only we can enter, files only we can read
        // (SQLite's -wal and -shm made 0600 before it opens them; none through a symlink).
        let absolute = std::path::absolute(path).map_err(private)?;
        if let Some(dir) = absolute.parent() {
            crate::private::private_dir(dir, "session store directory").map_err(private)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut name = absolute.clone().into_os_string();
            name.push(suffix);
            crate::private::private_file(Path::new(&name), "session store file")
                .map_err(private)?;
        }
        let db = open(&absolute)?;
        match scrub_resume_tokens(&db) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                rows = n,
                "resume tokens removed from stored events (written by an earlier version)"
            ),
            Err(e) => tracing::error!(error = %e, "removing stored resume tokens failed"),
        }
        // No checkpoint inside a commit (an fsync an acknowledgement would wait for): `tick`
        // runs them between batches.
        db.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let sessions: u64 = db
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
            .map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })? as u64;
        let backend = SqliteBackend {
            db,
            ttl,
            events_bytes,
            trims: Default::default(),
            written: Default::default(),
            stored: Arc::new(AtomicU64::new(sessions)),
            last_sweep: Instant::now(),
            last_checkpoint: Instant::now(),
        };
        match expire(&backend.db, ttl) {
            Ok(0) => {}
            Ok(n) => {
                add_signed(&backend.stored, -(n as i64));
                tracing::info!(
                    expired = n,
                    "sessions idle longer than --session-ttl deleted"
                )
            }
            Err(e) => tracing::warn!(error = %e, "expiring old sessions failed"),
        }
        Ok(backend)
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let shown = path.display().to_string();
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let db = Connection::open(path).map_err(corrupt)?;
    let setup = || -> rusqlite::Result<i64> {
        db.busy_timeout(Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // Rows are appended (rowid order), the index is small: 4 MiB of page cache keeps the
        // pages being written in memory (16 MiB kept the host's memory growing for minutes as
        // a busy store's cache filled).
        db.pragma_update(None, "cache_size", -4_000)?;
        // The WAL file is cut back to this after a checkpoint (else it keeps its largest size).
        db.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
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
        let mut found: i64 =
            db.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })?;
        if found == 1 {
            db.execute_batch(
                "BEGIN;
                 ALTER TABLE sessions ADD COLUMN client TEXT NOT NULL DEFAULT '';
                 CREATE INDEX sessions_client ON sessions (client);
                 UPDATE meta SET value = 2 WHERE key = 'schema';
                 COMMIT;",
            )?;
            found = 2;
        }
        if found == 2 {
            db.execute_batch(
                "BEGIN;
                 ALTER TABLE sessions ADD COLUMN owner TEXT;
                 ALTER TABLE sessions ADD COLUMN agent TEXT NOT NULL DEFAULT '';
                 ALTER TABLE sessions ADD COLUMN title TEXT NOT NULL DEFAULT '';
                 ALTER TABLE sessions ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE sessions ADD COLUMN usage TEXT NOT NULL DEFAULT '';
                 ALTER TABLE sessions ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;
                 CREATE INDEX sessions_owner ON sessions (owner, updated_ms);
                 UPDATE meta SET value = 3 WHERE key = 'schema';
                 COMMIT;",
            )?;
            found = 3;
        }
        if found == 3 {
            // Lines written whole stay valid: only the version changes.
            db.execute("UPDATE meta SET value = 4 WHERE key = 'schema'", [])?;
            found = 4;
        }
        Ok(found)
    };
    match setup() {
        Ok(SCHEMA_VERSION) => Ok(db),
        Ok(found) => Err(StoreError::Schema {
            path: shown,
            found,
            known: SCHEMA_VERSION,
        }),
        Err(e) => Err(corrupt(e)),
    }
}

/// Rewrites stored event rows that hold a resume token in clear (an earlier version stored
/// `agent.session_created` whole), with `secure_delete` so the old bytes are overwritten and
/// the WAL truncated after; returns how many rows changed.
fn scrub_resume_tokens(db: &Connection) -> rusqlite::Result<usize> {
    let rows: Vec<(i64, String)> = db
        .prepare(
            "SELECT rowid, frames FROM event_chunks WHERE frames LIKE '%\"resume_token\":\"%'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    db.pragma_update(None, "secure_delete", "ON")?;
    let mut n = 0;
    for (rowid, frames) in rows {
        if let Some(clean) = strip_resume_tokens(&frames) {
            db.execute(
                "UPDATE event_chunks SET frames = ?1 WHERE rowid = ?2",
                params![clean, rowid],
            )?;
            n += 1;
        }
    }
    db.pragma_update(None, "secure_delete", "OFF")?;
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(n)
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn expire(db: &Connection, ttl: Duration) -> rusqlite::Result<usize> {
    let cutoff = now() - ttl.as_secs() as i64;
    db.execute(
        "DELETE FROM event_chunks WHERE session IN (SELECT id FROM sessions WHERE last_active < ?1)",
        [cutoff],
    )?;
    db.execute("DELETE FROM sessions WHERE last_active < ?1", [cutoff])
}

fn write_chunk(tx: &rusqlite::Transaction, c: &Chunk) -> rusqlite::Result<()> {
    let id = &*c.id;
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

impl Backend for SqliteBackend {
    fn apply(&mut self, batch: &[Op]) -> Result<(), StoreError> {
        let applied = apply(&mut self.db, batch).map_err(unavailable)?;
        add_signed(&self.stored, applied.sessions);
        if self.written.len() > WRITTEN_KEPT {
            self.written.clear(); // forgets only when to look; a cut computes real sizes
        }
        // Per chunk, not per event: a handful of lookups a batch.
        for (id, bytes) in applied.chunks {
            *self.written.entry(id).or_default() += bytes;
        }
        for op in batch {
            match op {
                Op::TurnEnd(t)
                    if self
                        .written
                        .get(t.id.as_str())
                        .is_some_and(|n| *n > self.events_bytes) =>
                {
                    self.trims.insert(t.id.clone());
                    self.written
                        .insert(Arc::from(t.id.as_str()), self.events_bytes);
                }
                Op::Delete { id, .. } => {
                    self.trims.remove(id);
                    self.written.remove(id.as_str());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), StoreError> {
        if !self.trims.is_empty() {
            let some: Vec<String> = self.trims.iter().take(TRIMS_PER_TICK).cloned().collect();
            trim(&mut self.db, &some, self.events_bytes).map_err(unavailable)?;
            for id in &some {
                self.trims.remove(id);
            }
        }
        if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.last_checkpoint = Instant::now();
            self.db
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(unavailable)?;
        }
        if self.last_sweep.elapsed() < SWEEP_EVERY {
            return Ok(());
        }
        self.last_sweep = Instant::now();
        let n = expire(&self.db, self.ttl).map_err(unavailable)?;
        add_signed(&self.stored, -(n as i64));
        if n > 0 {
            tracing::info!(
                expired = n,
                "sessions idle longer than --session-ttl deleted"
            );
        }
        Ok(())
    }
}

/// Adds `delta` to `counter`, never below zero.
fn add_signed(counter: &AtomicU64, delta: i64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_add_signed(delta))
    });
}

impl SqliteBackend {
    /// The writer's count of stored sessions (shared with the store's readers).
    pub(crate) fn stored_counter(&self) -> Arc<AtomicU64> {
        self.stored.clone()
    }
}

/// Sessions whose written bytes are tracked, at most (then the tracking starts over).
const WRITTEN_KEPT: usize = 100_000;

/// Sessions whose old events one `tick` cuts, at most.
const TRIMS_PER_TICK: usize = 16;

/// Each of `ids` keeps its newest `events_bytes` of events (whole chunks, newest first; the
/// sizes come from the records' headers, `octet_length`, without reading the frames).
fn trim(db: &mut Connection, ids: &[String], events_bytes: usize) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    for id in ids {
        tx.prepare_cached(
            "DELETE FROM event_chunks WHERE rowid IN (
                 SELECT rowid FROM (
                     SELECT rowid, SUM(octet_length(frames)) OVER (ORDER BY last_seq DESC) - octet_length(frames) AS newer
                     FROM event_chunks WHERE session = ?1)
                 WHERE newer >= ?2)",
        )?
        .execute(params![id, events_bytes as i64])?;
    }
    tx.commit()
}

/// What a batch changed that the writer keeps count of.
#[derive(Default)]
struct Applied {
    /// Bytes of events written, per session (one entry per chunk).
    chunks: Vec<(Arc<str>, usize)>,
    /// Sessions made minus sessions deleted.
    sessions: i64,
}

/// One transaction (rolled back whole on any error, so the batch can be retried).
fn apply(db: &mut Connection, batch: &[Op]) -> rusqlite::Result<Applied> {
    let tx = db.transaction()?;
    let mut applied = Applied::default();
    // A session's events of the batch are one row.
    let mut chunks = Chunks::short_lines();
    for op in batch {
        match op {
            Op::Create(c) => {
                let Created {
                    id,
                    token_hash,
                    settings,
                    client,
                    owner,
                    agent,
                    at,
                } = &**c;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO sessions (id, token_hash, settings, created, last_active, client, owner, agent, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![id, token_hash, settings, at / 1000, client, owner, agent, at])?;
                applied.sessions += 1;
            }
            Op::Events { id, first, frames } => {
                for (seq, frame) in Chunk::events(*first, frames.as_str()) {
                    if let Some(earlier) = chunks.add(id, seq, frame) {
                        write_chunk(&tx, &earlier)?;
                        applied.chunks.push((earlier.id, earlier.frames.len()));
                    }
                }
            }
            Op::TurnStart(t) => {
                let TurnStarted {
                    id,
                    input,
                    title,
                    at,
                    ..
                } = &**t;
                tx.prepare_cached(
                    "UPDATE sessions SET running_input = ?2, last_active = ?3 / 1000, updated_ms = ?3,
                         title = CASE WHEN title = '' THEN coalesce(?4, '') ELSE title END
                     WHERE id = ?1",
                )?
                .execute(params![id, input, at, title])?;
            }
            Op::TurnEnd(t) => {
                let TurnEnded {
                    id,
                    memory,
                    usage,
                    agent,
                    at,
                    ..
                } = &**t;
                tx.prepare_cached(
                    "UPDATE sessions SET memory = ?2, running_input = NULL, last_active = ?3 / 1000,
                         updated_ms = ?3, usage = ?4, turns = turns + 1, agent = ?5
                     WHERE id = ?1",
                )?
                .execute(params![id, memory, at, usage, agent])?;
            }
            Op::Delete { id, .. } => {
                chunks.discard(id);
                tx.prepare_cached("DELETE FROM event_chunks WHERE session = ?1")?
                    .execute([id])?;
                let gone = tx
                    .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                    .execute([id])?;
                applied.sessions -= gone as i64;
            }
            Op::Claim { .. } | Op::Ack(_) => {}
        }
    }
    for c in chunks.into_chunks() {
        write_chunk(&tx, &c)?;
        applied.chunks.push((c.id, c.frames.len()));
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod bench;
mod read;
#[cfg(test)]
mod tests;

pub(crate) use read::{count_of, list, load};
