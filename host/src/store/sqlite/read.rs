//! The store's readers: a session's record and events (a resume, a follow) and the
//! per-address count, on read-only connections beside the writer's.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::super::batch::Chunk;
use super::super::{now, Access, Cursor, Listed, Listing, StoreError, Stored};
use super::unavailable;

/// A read-only connection beside the writer's (waiting up to 5 s for a lock).
fn read_only(path: &Path) -> Result<Connection, StoreError> {
    let db = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    let _ = db.busy_timeout(Duration::from_secs(5));
    Ok(db)
}

/// Sessions `client` made (the total comes from the writer's count) — see
/// [`super::super::Store::count_stored`]. `conn`: a read-only connection kept between calls,
/// opened on first use and dropped after a failure.
pub(crate) fn count_of(
    path: &Path,
    conn: &std::sync::Mutex<Option<Connection>>,
    client: &str,
) -> Result<u64, StoreError> {
    let mut kept = conn.lock().unwrap_or_else(|p| p.into_inner());
    if kept.is_none() {
        *kept = Some(read_only(path)?);
    }
    let Some(db) = kept.as_ref() else {
        return Ok(0);
    };
    let counted = db
        .prepare_cached("SELECT count(*) FROM sessions WHERE client = ?1")
        .and_then(|mut stmt| stmt.query_row([client], |r| r.get::<_, i64>(0)));
    match counted {
        Ok(n) => Ok(n as u64),
        Err(e) => {
            *kept = None;
            Err(unavailable(e))
        }
    }
}

/// Reads session `id` from the store at `path` (on a thread that may block).
pub(crate) fn load(
    path: &Path,
    id: &str,
    ttl: Duration,
    access: Option<&Access>,
) -> Result<Option<Stored>, StoreError> {
    let db = read_only(path)?;
    let read = || -> rusqlite::Result<Option<Stored>> {
        if let Some(access) = access {
            let found: Option<(String, Option<String>)> = db
                .query_row(
                    "SELECT token_hash, owner FROM sessions WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if !found.is_some_and(|(h, owner)| access.admits(&h, owner.as_deref())) {
                return Ok(None);
            }
        }
        let row = db
            .query_row(
                "SELECT token_hash, settings, memory, running_input, last_active, owner, title, agent, created, turns FROM sessions WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        (
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                        ),
                        r.get::<_, Option<String>>(5)?,
                        Listing {
                            title: r.get(6)?,
                            agent: r.get(7)?,
                            created: r.get::<_, i64>(8)? * 1000,
                            turns: r.get::<_, i64>(9)? as u64,
                        },
                    ))
                },
            )
            .optional()?;
        let Some(((token_hash, settings, memory, running_input, last_active), owner, listing)) =
            row
        else {
            return Ok(None);
        };
        if now() - last_active > ttl.as_secs() as i64 {
            return Ok(None); // expired; the writer deletes it on its next sweep
        }
        let mut stmt = db.prepare(
            "SELECT first_seq, frames FROM event_chunks
             WHERE session_key = (SELECT key FROM sessions WHERE id = ?1) ORDER BY last_seq",
        )?;
        let chunks = stmt
            .query_map([id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut events: Vec<(u64, String)> = Vec::new();
        for (first, frames) in &chunks {
            // Each line read in order (one may be said against the line before).
            let mut reader = super::super::line::Reader::default();
            for (seq, line) in Chunk::events(*first, frames) {
                let frame = reader.frame(line, id, seq);
                // A chunk written twice (a retried batch whose first commit did land) is read
                // once.
                if events.last().is_none_or(|(last, _)| seq > *last) {
                    events.push((seq, frame.into_owned()));
                }
            }
        }
        Ok(Some(Stored {
            token_hash,
            owner,
            listing,
            settings,
            memory,
            running_input,
            events,
            running_on: None,
            last_entry: None,
        }))
    };
    read().map_err(unavailable)
}

/// `owner`'s sessions, newest activity first (see [`super::super::Store::list`]).
pub(crate) fn list(
    path: &Path,
    ttl: Duration,
    owner: &str,
    before: Option<&Cursor>,
    limit: usize,
) -> Result<Vec<Listed>, StoreError> {
    let db = read_only(path)?;
    let (updated, id) = before.map_or((i64::MAX, ""), |c| (c.updated, c.id.as_str()));
    let read = || -> rusqlite::Result<Vec<Listed>> {
        let mut stmt = db.prepare(
            "SELECT id, title, agent, created, turns, updated_ms, running_input IS NOT NULL, usage
             FROM sessions
             WHERE owner = ?1 AND last_active >= ?2
               AND (updated_ms < ?3 OR (updated_ms = ?3 AND id < ?4))
             ORDER BY updated_ms DESC, id DESC LIMIT ?5",
        )?;
        let cutoff = now() - ttl.as_secs() as i64;
        let rows = stmt.query_map(
            rusqlite::params![owner, cutoff, updated, id, limit as i64],
            |r| {
                Ok(Listed {
                    id: r.get(0)?,
                    listing: Listing {
                        title: r.get(1)?,
                        agent: r.get(2)?,
                        created: r.get::<_, i64>(3)? * 1000,
                        turns: r.get::<_, i64>(4)? as u64,
                    },
                    updated: r.get(5)?,
                    running: r.get(6)?,
                    usage: r.get(7)?,
                })
            },
        )?;
        rows.collect()
    };
    read().map_err(unavailable)
}
