//! The session store in SQLite (`--store sqlite:PATH`, the default): the schema, the writer's
//! transactions (a session's events of one batch as one row) and the reads. WAL mode with
//! `synchronous=NORMAL` keeps the database consistent through a crash (a power cut can lose the
//! last transactions, not corrupt it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::batch::{Chunk, Chunks};
use super::{now, Backend, Created, Frames, Op, StoreError, TurnEnded, TurnStarted, EVENTS_KEPT};

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
    /// Stored sessions' integer keys (`sessions.key`), by id: a batch's chunks are written
    /// against them without a lookup each.
    keys: HashMap<Arc<str>, i64, foldhash::fast::RandomState>,
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
        let db = schema::open(&absolute)?;
        match schema::scrub_resume_tokens(&db) {
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
            keys: Default::default(),
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

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn expire(db: &Connection, ttl: Duration) -> rusqlite::Result<usize> {
    let cutoff = now() - ttl.as_secs() as i64;
    db.execute(
        "DELETE FROM event_chunks WHERE session_key IN (SELECT key FROM sessions WHERE last_active < ?1)",
        [cutoff],
    )?;
    db.execute("DELETE FROM sessions WHERE last_active < ?1", [cutoff])
}

/// Writes chunk `c` of the session whose key is `key`.
fn write_chunk(tx: &rusqlite::Transaction, key: i64, c: &Chunk) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO event_chunks (session_key, last_seq, first_seq, frames) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key, c.last as i64, c.first as i64, c.frames])?;
    if c.last > EVENTS_KEPT {
        tx.prepare_cached("DELETE FROM event_chunks WHERE session_key = ?1 AND last_seq <= ?2")?
            .execute(params![key, (c.last - EVENTS_KEPT) as i64])?;
    }
    Ok(())
}

impl Backend for SqliteBackend {
    fn apply(&mut self, batch: &[Op]) -> Result<(), StoreError> {
        let applied = match apply(&mut self.db, &mut self.keys, batch) {
            Ok(applied) => applied,
            Err(e) => {
                // The keys the rolled-back batch learned may not be stored.
                self.keys.clear();
                return Err(unavailable(e));
            }
        };
        add_signed(&self.stored, applied.sessions);
        if self.written.len() > WRITTEN_KEPT {
            self.written.clear(); // forgets only when to look; a cut computes real sizes
        }
        if self.keys.len() > KEYS_KEPT {
            self.keys.clear(); // looked up again as needed
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
            self.keys.clear();
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

/// Session keys the writer keeps, at most (then it starts over: an indexed lookup per session
/// the next time it writes events). Kept small: sessions that come and go would otherwise hold
/// ~100 bytes each until the bound (a two-minute soak's host grew 3 MB at 100,000).
const KEYS_KEPT: usize = 4096;

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
                     FROM event_chunks
                     WHERE session_key = (SELECT key FROM sessions WHERE id = ?1))
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

/// Stored sessions' keys by id (see [`SqliteBackend::keys`]).
type Keys = HashMap<Arc<str>, i64, foldhash::fast::RandomState>;

/// The key of stored session `id`; None when it is not stored (its events have no session to
/// be read with, so they are not written).
fn key_of(
    tx: &rusqlite::Transaction,
    keys: &mut Keys,
    id: &Arc<str>,
) -> rusqlite::Result<Option<i64>> {
    if let Some(&key) = keys.get(id) {
        return Ok(Some(key));
    }
    let key = tx
        .prepare_cached("SELECT key FROM sessions WHERE id = ?1")?
        .query_row([&**id], |r| r.get(0))
        .optional()?;
    if let Some(key) = key {
        keys.insert(id.clone(), key);
    }
    Ok(key)
}

/// Writes chunk `c` if its session is stored; counts it in `applied`.
fn put_chunk(
    tx: &rusqlite::Transaction,
    keys: &mut Keys,
    c: Chunk,
    applied: &mut Applied,
) -> rusqlite::Result<()> {
    if let Some(key) = key_of(tx, keys, &c.id)? {
        write_chunk(tx, key, &c)?;
        applied.chunks.push((c.id, c.frames.len()));
    }
    Ok(())
}

/// Stores a new session and learns its key. A session made again under its id starts over,
/// keeping its key.
fn create(tx: &rusqlite::Transaction, keys: &mut Keys, c: &Created) -> rusqlite::Result<()> {
    let key: i64 = tx
        .prepare_cached(
            "INSERT INTO sessions (id, token_hash, settings, created, last_active, client, owner, agent, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET token_hash = excluded.token_hash,
                 settings = excluded.settings, memory = '', running_input = NULL,
                 created = excluded.created, last_active = excluded.last_active,
                 client = excluded.client, owner = excluded.owner,
                 agent = excluded.agent, title = '', turns = 0, usage = '',
                 updated_ms = excluded.updated_ms
             RETURNING key",
        )?
        .query_row(
            params![
                c.id,
                c.token_hash,
                c.settings,
                c.at / 1000,
                c.client,
                c.owner,
                c.agent,
                c.at
            ],
            |r| r.get(0),
        )?;
    keys.insert(Arc::from(c.id.as_str()), key);
    Ok(())
}

/// One transaction (rolled back whole on any error, so the batch can be retried).
fn apply(db: &mut Connection, keys: &mut Keys, batch: &[Op]) -> rusqlite::Result<Applied> {
    let tx = db.transaction()?;
    let mut applied = Applied::default();
    // A session's events of the batch are one row.
    let mut chunks = Chunks::default();
    for op in batch {
        match op {
            Op::Create(c) => {
                create(&tx, keys, c)?;
                applied.sessions += 1;
            }
            Op::Events {
                id,
                first,
                frames: Frames::Short(block),
            } => {
                if let Some(earlier) = chunks.add_block(id, *first, block) {
                    put_chunk(&tx, keys, earlier, &mut applied)?;
                }
            }
            Op::Events { id, first, frames } => {
                for (seq, frame) in Chunk::events(*first, frames.as_str()) {
                    if let Some(earlier) = chunks.add(id, seq, frame) {
                        put_chunk(&tx, keys, earlier, &mut applied)?;
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
                keys.remove(id.as_str());
                tx.prepare_cached(
                    "DELETE FROM event_chunks
                     WHERE session_key = (SELECT key FROM sessions WHERE id = ?1)",
                )?
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
        put_chunk(&tx, keys, c, &mut applied)?;
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod bench;
mod read;
mod schema;
#[cfg(test)]
mod tests;

pub(crate) use read::{count_of, list, load};
