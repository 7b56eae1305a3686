//! The session store on Redis (`--store redis://HOST:PORT[/DB]`), for several hosts sharing
//! sessions. Per session: a hash `myagent:session:{id}` (its fields are named in [`field`] and
//! nowhere else), a stream `myagent:events:{id}` (one entry per write batch: [`entry`]'s `seq`
//! of its first event and `frames`, one a line; trimmed to about [`ENTRIES_KEPT`] entries) and,
//! while a turn runs, a lease `myagent:lease:{id}` naming the host that runs it (expires
//! [`LEASE`] after its host stops renewing it). Every key expires after `--session-ttl` without
//! activity. Cancels for a turn running on another host travel on [`CANCEL_CHANNEL`].
//!
//! A batch is one `MULTI`/`EXEC` pipeline (all or nothing, so a failed one is retried whole);
//! a stream entry that cannot be read is logged and counted, never silently skipped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::batch::{Chunk, Chunks};
use super::health::State;
use super::{Backend, Op, StoreError};

/// How long a running turn's lease outlives its host's last renewal.
pub(super) const LEASE: Duration = Duration::from_secs(5);
/// Renewal period of the leases of this host's running turns.
const RENEW_EVERY: Duration = Duration::from_secs(1);
pub(super) const CANCEL_CHANNEL: &str = "myagent:cancel";
/// Stream entries kept per session (`MAXLEN ~`): an entry is one session's events of one
/// write batch, so at least this many of its newest events are kept.
const ENTRIES_KEPT: u64 = 1024;
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
}

/// Every stored session's id (a member may outlive its session: counts prune them).
pub(super) const STORED_KEY: &str = "myagent:stored";

/// The ids of the sessions `client` made.
pub(super) fn client_key(client: &str) -> String {
    format!("myagent:client:{client}")
}

/// An event stream entry's fields.
pub(super) mod entry {
    pub(crate) const SEQ: &str = "seq";
    pub(crate) const FRAMES: &str = "frames";
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
                Op::TurnStart { id, .. } => {
                    self.running.insert(id.clone());
                }
                Op::TurnEnd { id, .. } | Op::Delete { id } => {
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
            Op::Create { id, .. } => {
                create(&mut p, op, ttl, host);
                touched.insert(id);
            }
            Op::Event { id, seq, frame } => {
                if let Some(earlier) = chunks.add(id, *seq, frame.as_str()) {
                    xadd(&mut p, &earlier);
                }
                touched.insert(id);
            }
            Op::TurnStart { id, input, .. } => {
                p.cmd("HSET")
                    .arg(session_key(id))
                    .arg(field::RUNNING_INPUT)
                    .arg(input)
                    .arg(field::HOST)
                    .arg(host)
                    .ignore();
                p.cmd("SET")
                    .arg(lease_key(id))
                    .arg(host)
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64)
                    .ignore();
                touched.insert(id);
            }
            Op::TurnEnd { id, memory, .. } => {
                p.cmd("HSET")
                    .arg(session_key(id))
                    .arg(field::MEMORY)
                    .arg(memory)
                    .ignore();
                p.cmd("HDEL")
                    .arg(session_key(id))
                    .arg(field::RUNNING_INPUT)
                    .ignore();
                p.cmd("DEL").arg(lease_key(id)).ignore();
                touched.insert(id);
            }
            Op::Delete { id } => {
                chunks.discard(id);
                p.cmd("SREM").arg(STORED_KEY).arg(id).ignore();
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

/// A new session: its hash, an empty event stream, and its place in the counted sets.
fn create(p: &mut redis::Pipeline, op: &Op, ttl: u64, host: &str) {
    let Op::Create {
        id,
        token_hash,
        settings,
        client,
        ..
    } = op
    else {
        return;
    };
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
        .ignore();
}

/// A session's events of one batch as one stream entry.
fn xadd(p: &mut redis::Pipeline, c: &Chunk) {
    p.cmd("XADD")
        .arg(events_key(&c.id))
        .arg("MAXLEN")
        .arg("~")
        .arg(ENTRIES_KEPT)
        .arg("*")
        .arg(entry::SEQ)
        .arg(c.first)
        .arg(entry::FRAMES)
        .arg(&c.frames)
        .ignore();
}

/// A stream entry as written: `seq` of its first event and the frames.
pub(super) fn xadd_at(p: &mut redis::Pipeline, key: &str, id: &str, first: u64, frames: &str) {
    p.cmd("XADD")
        .arg(key)
        .arg(id)
        .arg(entry::SEQ)
        .arg(first)
        .arg(entry::FRAMES)
        .arg(frames)
        .ignore();
}

/// One stream entry: its id, the `seq` of its first event and its frames.
pub(super) fn decode_entry(v: &redis::Value) -> Result<(String, u64, String), String> {
    let redis::Value::Array(parts) = v else {
        return Err("not an array".into());
    };
    let (Some(id), Some(redis::Value::Array(kv))) = (parts.first(), parts.get(1)) else {
        return Err("not an [id, fields] pair".into());
    };
    let id: String = redis::from_redis_value(id.clone()).map_err(|e| format!("entry id: {e}"))?;
    let (mut first, mut frames) = (None, None);
    for pair in kv.chunks(2) {
        let [k, v] = pair else {
            return Err(format!("entry {id}: odd field list"));
        };
        let k: String =
            redis::from_redis_value(k.clone()).map_err(|e| format!("entry {id}: {e}"))?;
        match k.as_str() {
            entry::SEQ => {
                let s: String =
                    redis::from_redis_value(v.clone()).map_err(|e| format!("entry {id}: {e}"))?;
                first = Some(
                    s.parse::<u64>()
                        .map_err(|_| format!("entry {id}: seq {s:?}"))?,
                );
            }
            entry::FRAMES => {
                frames = Some(
                    redis::from_redis_value::<String>(v.clone())
                        .map_err(|e| format!("entry {id}: frames: {e}"))?,
                )
            }
            _ => {}
        }
    }
    match (first, frames) {
        (Some(first), Some(frames)) => Ok((id, first, frames)),
        _ => Err(format!("entry {id}: no `seq` or no `frames`")),
    }
}

/// What following a stream reads: whether the turn's lease is held, and the new events as
/// (stream entry id, seq, frame).
pub type Followed = (bool, Vec<(String, u64, String)>);

/// Events of session `id` after stream entry `after` (`None`: from the start), oldest first
/// and each `seq` once (a retried batch may have landed twice), as (entry id, seq, frame); and
/// whether its turn's lease is still held (by any host).
pub(super) fn events_after(
    c: &mut redis::Connection,
    id: &str,
    after: Option<&str>,
    state: &State,
) -> redis::RedisResult<Followed> {
    let start = match after {
        Some(entry) => format!("({entry}"),
        None => "-".to_owned(),
    };
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(events_key(id))
        .arg(start)
        .arg("+")
        .query(c)?;
    let mut out: Vec<(String, u64, String)> = Vec::new();
    if let redis::Value::Array(entries) = entries {
        for e in &entries {
            match decode_entry(e) {
                Ok((entry_id, first, frames)) => {
                    for (seq, f) in Chunk::events(first, &frames) {
                        if out.last().is_none_or(|(_, last, _)| seq > *last) {
                            out.push((entry_id.clone(), seq, f.to_owned()));
                        }
                    }
                }
                Err(why) => {
                    state
                        .bad_entries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let e = StoreError::BadEntry {
                        session: id.to_owned(),
                        reason: why,
                    };
                    tracing::warn!(error = %e, "skipping a stored event entry");
                }
            }
        }
    }
    let leased: bool = redis::cmd("EXISTS").arg(lease_key(id)).query(c)?;
    Ok((leased, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_only_acknowledgements_is_no_pipeline() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let batch = [Op::Ack(super::super::Acker::Blocking(tx))];
        let (_, n) = pipeline(&batch, Duration::from_secs(1), "h");
        assert_eq!(n, 0);
    }

    #[test]
    fn bad_stream_entries_are_errors_not_silence() {
        use redis::Value as V;
        let s = |t: &str| V::BulkString(t.as_bytes().to_vec());
        let good = V::Array(vec![
            s("1-0"),
            V::Array(vec![s("seq"), s("3"), s("frames"), s("a\nb")]),
        ]);
        assert_eq!(
            decode_entry(&good).unwrap(),
            ("1-0".into(), 3, "a\nb".into())
        );
        for bad in [
            V::Array(vec![
                s("1-0"),
                V::Array(vec![s("seq"), s("x"), s("frames"), s("a")]),
            ]),
            V::Array(vec![s("1-0"), V::Array(vec![s("frames"), s("a")])]),
            V::Array(vec![s("1-0"), V::Array(vec![s("seq")])]),
            s("junk"),
        ] {
            assert!(decode_entry(&bad).is_err(), "{bad:?}");
        }
    }
}
