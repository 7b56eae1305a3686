//! The session store in SQLite (`--store sqlite:PATH`, the default): the schema, the writer
//! thread's transactions (a session's events of one interval as one row) and the reads.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::durable::{gather, now, Chunk, Chunks, Op, Stored, EVENTS_KEPT};

const SCHEMA_VERSION: i64 = 1;

pub(super) fn open(path: &Path) -> Result<Connection, String> {
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

/// Sessions idle longer than `ttl` deleted now; how many.
pub(super) fn expire_now(db: &Connection, ttl: Duration) -> usize {
    expire(db, ttl).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "expiring old sessions failed");
        0
    })
}

/// Reads session `id` from the store at `path`.
pub(super) fn load(path: &Path, id: &str, ttl: Duration) -> Result<Option<Stored>, String> {
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
        if now() - last_active > ttl.as_secs() as i64 {
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
        let events = chunks
            .iter()
            .flat_map(|(first, frames)| Chunk::events(*first, frames))
            .map(|(seq, f)| (seq, f.to_owned()))
            .collect();
        Ok(Some(Stored {
            token_hash,
            settings,
            memory,
            running_input,
            events,
            running_on: None,
            last_entry: None,
        }))
    };
    read().map_err(|e| format!("the session store is unavailable: {e}"))
}

fn expire(db: &Connection, ttl: Duration) -> rusqlite::Result<usize> {
    let cutoff = now() - ttl.as_secs() as i64;
    db.execute(
        "DELETE FROM event_chunks WHERE session IN (SELECT id FROM sessions WHERE last_active < ?1)",
        [cutoff],
    )?;
    db.execute("DELETE FROM sessions WHERE last_active < ?1", [cutoff])
}

/// The writer thread: applies queued writes in one transaction per flush interval.
pub(super) fn writer(mut db: Connection, rx: mpsc::Receiver<Op>, ttl: Duration) {
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

fn apply(db: &mut Connection, batch: Vec<Op>) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    let mut flushed = Vec::new();
    // A session's events of the batch are one row.
    let mut chunks = Chunks::default();
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
                if let Some(earlier) = chunks.add(&id, seq, frame.as_str()) {
                    write_chunk(&tx, &earlier)?;
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
                chunks.discard(&id);
                tx.execute("DELETE FROM event_chunks WHERE session = ?1", [&id])?;
                tx.execute("DELETE FROM sessions WHERE id = ?1", [&id])?;
            }
            Op::Claim { .. } => {}
            Op::Flush(done) => flushed.push(done),
        }
    }
    for c in chunks.into_chunks() {
        write_chunk(&tx, &c)?;
    }
    tx.commit()?;
    for done in flushed {
        let _ = done.send(());
    }
    Ok(())
}
