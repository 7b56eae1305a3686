//! The SQLite store's schema: made or migrated on open (an older store is brought up to date,
//! a newer one refused), and the resume tokens an early version stored scrubbed.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::super::batch::strip_resume_tokens;
use super::StoreError;

/// 1: the first; 2: `sessions.client` (the creating address, counted by the stored-session
/// caps); 3: `owner`, `agent`, `title`, `turns`, `usage` (a principal's session list); 4: an
/// event's line in `event_chunks.frames` may leave out the frame's tail or be said against the
/// line before (`super::line`; an older host would read such lines wrong, so it refuses the
/// store); 5: `sessions.key`, an integer primary key, and `event_chunks.session_key` holding it
/// instead of the session's id (its index four times smaller, so a commit rewrites fewer of its
/// pages). An older store is migrated on open.
const SCHEMA_VERSION: i64 = 5;

/// Opens the store at `path`, made or migrated to [`SCHEMA_VERSION`].
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
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
        if found == 4 {
            db.execute_batch(TO_SCHEMA_5)?;
            found = 5;
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

/// Schema 4 to 5: both tables rebuilt, sessions with an integer key and chunks holding it
/// (chunks of no stored session are left behind: nothing could read them).
const TO_SCHEMA_5: &str = "BEGIN;
    CREATE TABLE sessions_5 (
        key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL,
        settings TEXT NOT NULL, memory TEXT NOT NULL DEFAULT '', running_input TEXT,
        created INTEGER NOT NULL, last_active INTEGER NOT NULL,
        client TEXT NOT NULL DEFAULT '', owner TEXT, agent TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL DEFAULT '', turns INTEGER NOT NULL DEFAULT 0,
        usage TEXT NOT NULL DEFAULT '', updated_ms INTEGER NOT NULL DEFAULT 0);
    INSERT INTO sessions_5 (id, token_hash, settings, memory, running_input, created,
            last_active, client, owner, agent, title, turns, usage, updated_ms)
        SELECT id, token_hash, settings, memory, running_input, created, last_active, client,
            owner, agent, title, turns, usage, updated_ms FROM sessions ORDER BY rowid;
    CREATE TABLE event_chunks_5 (
        session_key INTEGER NOT NULL, last_seq INTEGER NOT NULL, first_seq INTEGER NOT NULL,
        frames TEXT NOT NULL);
    INSERT INTO event_chunks_5 (session_key, last_seq, first_seq, frames)
        SELECT s.key, c.last_seq, c.first_seq, c.frames
        FROM event_chunks c JOIN sessions_5 s ON s.id = c.session ORDER BY c.rowid;
    DROP TABLE event_chunks;
    DROP TABLE sessions;
    ALTER TABLE sessions_5 RENAME TO sessions;
    ALTER TABLE event_chunks_5 RENAME TO event_chunks;
    CREATE INDEX sessions_last_active ON sessions (last_active);
    CREATE INDEX sessions_client ON sessions (client);
    CREATE INDEX sessions_owner ON sessions (owner, updated_ms);
    CREATE INDEX event_chunks_session ON event_chunks (session_key, last_seq);
    UPDATE meta SET value = 5 WHERE key = 'schema';
    COMMIT;";

/// Rewrites stored event rows that hold a resume token in clear (an earlier version stored
/// `agent.session_created` whole), with `secure_delete` so the old bytes are overwritten and
/// the WAL truncated after; returns how many rows changed.
pub(super) fn scrub_resume_tokens(db: &Connection) -> rusqlite::Result<usize> {
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
