//! The session store on Redis (`--store redis://HOST:PORT[/DB]`), for several hosts sharing
//! sessions. Per session: a hash `myagent:session:{id}` (its fields are named in [`field`] and
//! nowhere else), a stream `myagent:events:{id}` ([`stream`]: one entry per write batch) and,
//! while a turn runs, a lease `myagent:lease:{id}` naming the host that runs it (expires
//! [`LEASE`] after its host stops renewing it). Every key expires after `--session-ttl` without
//! activity. Cancels for a turn running on another host travel on [`CANCEL_CHANNEL`].
//!
//! A batch is one `MULTI`/`EXEC` pipeline (all or nothing, so a failed one is retried whole);
//! a stream entry that cannot be read is logged and counted, never silently skipped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::batch::{self, Chunks};
use super::{Backend, Created, Frames, Op, StoreError, TurnEnded, TurnStarted};

mod stream;
use stream::xadd;
pub use stream::Followed;
pub(super) use stream::{decode_entry, events_after, xadd_at};

/// How long a running turn's lease outlives its host's last renewal.
pub(super) const LEASE: Duration = Duration::from_secs(5);
/// Renewal period of the leases of this host's running turns.
const RENEW_EVERY: Duration = Duration::from_secs(1);
pub(super) const CANCEL_CHANNEL: &str = "myagent:cancel";
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The session hash's fields.
pub(super) mod field {
    pub(crate) const TOKEN_HASH: &str = "token_hash";
    pub(crate) const SETTINGS: &str = "settings";
    pub(crate) const MEMORY: &str = "memory";
    pub(crate) const RUNNING_INPUT: &str = "running_input";
    /// The host that last took the session.
    pub(crate) const HOST: &str = "host";
    /// The address of the client that made it.
    pub(crate) const CLIENT: &str = "client";
    /// The principal it belongs to (absent: made anonymously).
    pub(crate) const OWNER: &str = "owner";
    pub(crate) const AGENT: &str = "agent";
    /// The first user message, cut (set once).
    pub(crate) const TITLE: &str = "title";
    /// Unix milliseconds.
    pub(crate) const CREATED: &str = "created";
    pub(crate) const UPDATED: &str = "updated";
    /// Turns finished.
    pub(crate) const TURNS: &str = "turns";
    /// The usage totals (JSON).
    pub(crate) const USAGE: &str = "usage";
}

/// Every stored session's id (a member may outlive its session: counts prune them).
pub(super) const STORED_KEY: &str = "myagent:stored";

/// The ids of the sessions `client` made.
pub(super) fn client_key(client: &str) -> String {
    format!("myagent:client:{client}")
}

/// The sessions of principal `owner`, scored by their last activity (Unix ms); a member
/// may outlive its session (a list prunes them).
pub(super) fn owner_key(owner: &str) -> String {
    format!("myagent:owner:{owner}")
}

/// Puts session `id` at `at` in its owner's list (kept as long as the sessions).
fn listed_at(p: &mut redis::Pipeline, owner: &Option<String>, id: &str, at: i64, ttl: u64) {
    if let Some(owner) = owner {
        p.cmd("ZADD").arg(owner_key(owner)).arg(at).arg(id).ignore();
        p.cmd("EXPIRE").arg(owner_key(owner)).arg(ttl).ignore();
    }
}

pub(super) fn session_key(id: &str) -> String {
    format!("myagent:session:{id}")
}
pub(super) fn events_key(id: &str) -> String {
    format!("myagent:events:{id}")
}
pub(super) fn lease_key(id: &str) -> String {
    format!("myagent:lease:{id}")
}

pub(super) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A connection with timeouts (a store that stops answering is an error, not a hang).
pub(super) fn connect(client: &redis::Client) -> Result<redis::Connection, StoreError> {
    let conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect: {e}")))?;
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    Ok(conn)
}

/// The writer's side: one connection (re-made after a failure), one pipeline per batch, and
/// the leases of the turns running here.
pub(crate) struct RedisBackend {
    pub(super) client: redis::Client,
    pub(super) conn: Option<redis::Connection>,
    pub(super) ttl: Duration,
    pub(super) host: String,
    pub(super) running: HashSet<String>,
    pub(super) renewed: Instant,
}

impl RedisBackend {
    fn conn(&mut self) -> Result<&mut redis::Connection, StoreError> {
        match &mut self.conn {
            Some(c) => Ok(c),
            empty => Ok(empty.insert(connect(&self.client)?)),
        }
    }

    fn query(&mut self, p: &redis::Pipeline) -> Result<(), StoreError> {
        let r = run_pipeline(self.conn()?, p);
        if r.is_err() {
            self.conn = None; // replies may be left unread: never reuse it
        }
        r
    }
}

impl Backend for RedisBackend {
    fn apply(&mut self, batch: &[Op]) -> Result<(), StoreError> {
        let (p, commands) = pipeline(batch, self.ttl, &self.host);
        if commands == 0 {
            return Ok(()); // never send an empty pipeline
        }
        self.query(&p)?;
        for op in batch {
            match op {
                Op::TurnStart(t) => {
                    self.running.insert(t.id.clone());
                }
                Op::TurnEnd(t) => {
                    self.running.remove(&t.id);
                }
                Op::Delete { id, .. } => {
                    self.running.remove(id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), StoreError> {
        if self.running.is_empty() || self.renewed.elapsed() < RENEW_EVERY {
            return Ok(());
        }
        self.renewed = Instant::now();
        let mut p = redis::pipe();
        for id in &self.running {
            p.cmd("PEXPIRE")
                .arg(lease_key(id))
                .arg(LEASE.as_millis() as u64)
                .ignore();
        }
        self.query(&p)
    }

    fn idle_wait(&self) -> Duration {
        if self.running.is_empty() {
            Duration::from_secs(60)
        } else {
            RENEW_EVERY
        }
    }
}

/// Sends `p` and reads its replies, giving up at the first failure. (redis-rs's own pipeline
/// query reads every reply even after one timed out, so a stalled server held the writer for
/// one I/O timeout per command.) A refused transaction is an error.
pub(super) fn run_pipeline(
    c: &mut redis::Connection,
    p: &redis::Pipeline,
) -> Result<(), StoreError> {
    c.send_packed_command(&p.get_packed_pipeline())
        .map_err(unavailable)?;
    let replies = p.len() + if p.is_transaction() { 2 } else { 0 };
    for i in 0..replies {
        match c.recv_response().map_err(unavailable)? {
            redis::Value::ServerError(e) => {
                return Err(StoreError::Unavailable(format!(
                    "the server refused a write: {e:?}"
                )))
            }
            redis::Value::Nil if p.is_transaction() && i + 1 == replies => {
                return Err(StoreError::Unavailable(
                    "the transaction was aborted".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A batch as one atomic pipeline, and how many commands it holds.
fn pipeline(batch: &[Op], ttl: Duration, host: &str) -> (redis::Pipeline, usize) {
    let ttl = ttl.as_secs().max(1);
    let mut p = redis::pipe();
    p.atomic();
    let mut n = 0;
    let mut touched: HashSet<&str> = HashSet::new();
    // A session's events of the batch are one stream entry, written after its other commands.
    let mut chunks = Chunks::default();
    for op in batch {
        n += 1;
        match op {
            Op::Create(c) => {
                create(&mut p, c, ttl, host);
                touched.insert(&c.id);
            }
            Op::Events { id, first, frames } => {
                let mut add = |seq, frame: &str| {
                    if let Some(earlier) = chunks.add_whole(id, seq, frame) {
                        xadd(&mut p, &earlier);
                    }
                };
                match frames {
                    // A model read's events come as stored lines (the SQLite store's format,
                    // also the session's replay buffer): read back into frames here, on the
                    // writer's thread rather than the session's.
                    Frames::Short(block) => batch::each_frame(block, id, *first, add),
                    Frames::One(frame) => add(*first, frame.as_str()),
                }
                touched.insert(id);
            }
            Op::TurnStart(_) | Op::TurnEnd(_) => {
                turn(&mut p, op, ttl, host);
                touched.extend(op.session());
            }
            Op::Delete { id, owner } => {
                chunks.discard(id);
                p.cmd("SREM").arg(STORED_KEY).arg(id).ignore();
                if let Some(owner) = owner {
                    p.cmd("ZREM").arg(owner_key(owner)).arg(id).ignore();
                }
                p.cmd("DEL")
                    .arg(session_key(id))
                    .arg(events_key(id))
                    .arg(lease_key(id))
                    .ignore();
                touched.remove(id.as_str());
            }
            Op::Claim { id } => {
                p.cmd("HSET")
                    .arg(session_key(id))
                    .arg(field::HOST)
                    .arg(host)
                    .ignore();
                touched.insert(id);
            }
            Op::Ack(_) => n -= 1,
        }
    }
    for c in chunks.into_chunks() {
        xadd(&mut p, &c);
    }
    for id in touched {
        p.cmd("EXPIRE").arg(session_key(id)).arg(ttl).ignore();
        p.cmd("EXPIRE").arg(events_key(id)).arg(ttl).ignore();
    }
    (p, n)
}

/// A turn starts (its input, the host whose lease it runs under, the title on the first) or
/// ends (the memory, usage and turns; the lease let go); either way its place in the owner's
/// list moves up.
fn turn(p: &mut redis::Pipeline, op: &Op, ttl: u64, host: &str) {
    match op {
        Op::TurnStart(t) => {
            let TurnStarted {
                id,
                input,
                title,
                owner,
                at,
            } = &**t;
            p.cmd("HSET")
                .arg(session_key(id))
                .arg(field::RUNNING_INPUT)
                .arg(input)
                .arg(field::HOST)
                .arg(host)
                .arg(field::UPDATED)
                .arg(at)
                .ignore();
            if let Some(title) = title {
                p.cmd("HSETNX")
                    .arg(session_key(id))
                    .arg(field::TITLE)
                    .arg(title)
                    .ignore();
            }
            listed_at(p, owner, id, *at, ttl);
            p.cmd("SET")
                .arg(lease_key(id))
                .arg(host)
                .arg("PX")
                .arg(LEASE.as_millis() as u64)
                .ignore();
        }
        Op::TurnEnd(t) => {
            let TurnEnded {
                id,
                memory,
                usage,
                agent,
                owner,
                at,
            } = &**t;
            p.cmd("HSET")
                .arg(session_key(id))
                .arg(field::MEMORY)
                .arg(memory)
                .arg(field::USAGE)
                .arg(usage)
                .arg(field::AGENT)
                .arg(agent)
                .arg(field::UPDATED)
                .arg(at)
                .ignore();
            p.cmd("HINCRBY")
                .arg(session_key(id))
                .arg(field::TURNS)
                .arg(1)
                .ignore();
            listed_at(p, owner, id, *at, ttl);
            p.cmd("HDEL")
                .arg(session_key(id))
                .arg(field::RUNNING_INPUT)
                .ignore();
            p.cmd("DEL").arg(lease_key(id)).ignore();
        }
        _ => {}
    }
}

/// A new session: its hash, an empty event stream, and its place in the counted sets.
fn create(p: &mut redis::Pipeline, c: &Created, ttl: u64, host: &str) {
    let Created {
        id,
        token_hash,
        settings,
        client,
        owner,
        agent,
        at,
    } = c;
    p.cmd("DEL").arg(events_key(id)).ignore();
    p.cmd("SADD").arg(STORED_KEY).arg(id).ignore();
    p.cmd("SADD").arg(client_key(client)).arg(id).ignore();
    p.cmd("EXPIRE").arg(client_key(client)).arg(ttl).ignore();
    p.cmd("HSET")
        .arg(session_key(id))
        .arg(field::TOKEN_HASH)
        .arg(token_hash)
        .arg(field::SETTINGS)
        .arg(settings)
        .arg(field::MEMORY)
        .arg("")
        .arg(field::HOST)
        .arg(host)
        .arg(field::CLIENT)
        .arg(client)
        .arg(field::AGENT)
        .arg(agent)
        .arg(field::CREATED)
        .arg(at)
        .arg(field::UPDATED)
        .arg(at)
        .ignore();
    if let Some(owner) = owner {
        p.cmd("HSET")
            .arg(session_key(id))
            .arg(field::OWNER)
            .arg(owner)
            .ignore();
    }
    listed_at(p, owner, id, *at, ttl);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_only_acknowledgements_is_no_pipeline() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let batch = [Op::Ack(super::super::Acker::Blocking(tx).into())];
        let (_, n) = pipeline(&batch, Duration::from_secs(1), "h");
        assert_eq!(n, 0);
    }
}
