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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Commands;

use super::batch::{Chunk, Chunks};
use super::writer::State;
use super::{blocking, redact_url, Backend, Op, StoreError, Stored};

/// How long a running turn's lease outlives its host's last renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// Renewal period of the leases of this host's running turns.
const RENEW_EVERY: Duration = Duration::from_secs(1);
pub const CANCEL_CHANNEL: &str = "myagent:cancel";
/// Stream entries kept per session (`MAXLEN ~`): an entry is one session's events of one
/// write batch, so at least this many of its newest events are kept.
const ENTRIES_KEPT: u64 = 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The session hash's fields.
pub mod field {
    pub const TOKEN_HASH: &str = "token_hash";
    pub const SETTINGS: &str = "settings";
    pub const MEMORY: &str = "memory";
    pub const RUNNING_INPUT: &str = "running_input";
    /// The host that last took the session.
    pub const HOST: &str = "host";
}

/// An event stream entry's fields.
pub mod entry {
    pub const SEQ: &str = "seq";
    pub const FRAMES: &str = "frames";
}

fn session_key(id: &str) -> String {
    format!("myagent:session:{id}")
}
fn events_key(id: &str) -> String {
    format!("myagent:events:{id}")
}
fn lease_key(id: &str) -> String {
    format!("myagent:lease:{id}")
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A connection with timeouts (a store that stops answering is an error, not a hang).
fn connect(client: &redis::Client) -> Result<redis::Connection, StoreError> {
    let conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(|e| StoreError::Unavailable(format!("cannot reach it: {e}")))?;
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    Ok(conn)
}

/// Connects (an unreachable server is an error), starts the cancel listener, and returns the
/// writer's backend and the several-hosts capability.
pub(crate) fn open(
    url: &str,
    ttl: Duration,
    host_id: &str,
    state: Arc<State>,
) -> Result<(RedisBackend, Shared), StoreError> {
    let shown = redact_url(url);
    let client = redis::Client::open(url)
        .map_err(|e| StoreError::Config(format!("{shown}: not a Redis URL: {e}")))?;
    let mut conn = connect(&client).map_err(|e| StoreError::Config(format!("{shown}: {e}")))?;
    redis::cmd("PING").query::<String>(&mut conn).map_err(|e| {
        StoreError::Config(format!("{shown}: the server does not answer PING: {e}"))
    })?;
    let (cancel_tx, cancel_rx) = tokio::sync::mpsc::unbounded_channel();
    let c = client.clone();
    std::thread::Builder::new()
        .name("session-cancels".into())
        .spawn(move || listen_for_cancels(c, cancel_tx))
        .map_err(|e| StoreError::Start(e.to_string()))?;
    let backend = RedisBackend {
        client: client.clone(),
        conn: Some(conn),
        ttl,
        host: host_id.to_owned(),
        running: HashSet::new(),
        renewed: Instant::now(),
    };
    let shared = Shared {
        client,
        host_id: host_id.to_owned(),
        cancels: Mutex::new(Some(cancel_rx)),
        state,
    };
    Ok((backend, shared))
}

/// The writer's side: one connection (re-made after a failure), one pipeline per batch, and
/// the leases of the turns running here.
pub(crate) struct RedisBackend {
    client: redis::Client,
    conn: Option<redis::Connection>,
    ttl: Duration,
    host: String,
    running: HashSet<String>,
    renewed: Instant,
}

impl RedisBackend {
    fn conn(&mut self) -> Result<&mut redis::Connection, StoreError> {
        match &mut self.conn {
            Some(c) => Ok(c),
            empty => Ok(empty.insert(connect(&self.client)?)),
        }
    }

    fn query(&mut self, p: &redis::Pipeline) -> Result<(), StoreError> {
        let r = p.query::<()>(self.conn()?);
        if r.is_err() {
            self.conn = None;
        }
        r.map_err(unavailable)
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
            Op::Create {
                id,
                token_hash,
                settings,
                ..
            } => {
                p.cmd("DEL").arg(events_key(id)).ignore();
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
                    .ignore();
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

/// One stream entry: its id, the `seq` of its first event and its frames.
fn decode_entry(v: &redis::Value) -> Result<(String, u64, String), String> {
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

/// A connection kept by a reader that reads often (a followed turn); made on first use,
/// dropped after a failure.
#[derive(Default)]
pub struct FollowConn(Option<redis::Connection>);

/// What only a shared store offers: following a turn that runs on another host, passing
/// cancels between hosts, knowing which host holds a session.
pub struct Shared {
    client: redis::Client,
    host_id: String,
    cancels: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    state: Arc<State>,
}

impl Shared {
    /// This process, as named in leases and the sessions it takes.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Session ids whose running turn another host was asked to cancel (taken once).
    pub fn take_cancels(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.cancels.lock().ok()?.take()
    }

    /// Asks whichever host runs session `id`'s turn to cancel it.
    pub async fn publish_cancel(&self, id: &str) -> Result<(), StoreError> {
        let (client, id) = (self.client.clone(), id.to_owned());
        blocking(move || {
            let mut c = connect(&client)?;
            redis::cmd("PUBLISH")
                .arg(CANCEL_CHANNEL)
                .arg(id)
                .query::<()>(&mut c)
                .map_err(unavailable)
        })
        .await
    }

    /// Which host last took session `id` (`None`: not stored).
    pub async fn holder(&self, id: &str) -> Result<Option<String>, StoreError> {
        let (client, id) = (self.client.clone(), id.to_owned());
        blocking(move || {
            connect(&client)?
                .hget(session_key(&id), field::HOST)
                .map_err(unavailable)
        })
        .await
    }

    /// Events of session `id` after stream entry `after`, and whether its turn's lease is
    /// held — what a host following another's turn reads, every 50 ms, over `conn`.
    pub async fn follow(
        &self,
        conn: &mut FollowConn,
        id: &str,
        after: Option<String>,
    ) -> Result<Followed, StoreError> {
        let (client, id, state) = (self.client.clone(), id.to_owned(), self.state.clone());
        let mut held = conn.0.take();
        let (held, r) = tokio::task::spawn_blocking(move || {
            let c = match &mut held {
                Some(c) => c,
                empty => match connect(&client) {
                    Ok(c) => empty.insert(c),
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = events_after(c, &id, after.as_deref(), &state).map_err(unavailable);
            (if r.is_ok() { held } else { None }, r)
        })
        .await
        .unwrap_or_else(|e| (None, Err(StoreError::Unavailable(e.to_string()))));
        conn.0 = held;
        r
    }

    /// Reads session `id` (a lease held by another host means its turn still runs there).
    pub(crate) async fn load(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let (client, id, me, state) = (
            self.client.clone(),
            id.to_owned(),
            self.host_id.clone(),
            self.state.clone(),
        );
        blocking(move || load(&client, &id, &me, &state)).await
    }
}

fn load(
    client: &redis::Client,
    id: &str,
    me: &str,
    state: &State,
) -> Result<Option<Stored>, StoreError> {
    let mut c = connect(client)?;
    let mut fields: HashMap<String, String> = c.hgetall(session_key(id)).map_err(unavailable)?;
    let Some(token_hash) = fields.remove(field::TOKEN_HASH) else {
        return Ok(None);
    };
    let (_, entries) = events_after(&mut c, id, None, state).map_err(unavailable)?;
    let last_entry = entries.last().map(|(e, _, _)| e.clone());
    let events = entries.into_iter().map(|(_, seq, f)| (seq, f)).collect();
    let lease: Option<String> = c.get(lease_key(id)).map_err(unavailable)?;
    Ok(Some(Stored {
        token_hash,
        settings: fields.remove(field::SETTINGS).unwrap_or_default(),
        memory: fields.remove(field::MEMORY).unwrap_or_default(),
        running_input: fields.remove(field::RUNNING_INPUT),
        events,
        running_on: lease.filter(|h| h != me),
        last_entry,
    }))
}

/// Events of session `id` after stream entry `after` (`None`: from the start), oldest first
/// and each `seq` once (a retried batch may have landed twice), as (entry id, seq, frame); and
/// whether its turn's lease is still held (by any host).
fn events_after(
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

/// Listens for cancels of turns (sent by other hosts whose client asked) and hands the session
/// ids to `tx`. Reconnects after a failure.
fn listen_for_cancels(client: redis::Client, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    let failing = std::cell::Cell::new(false);
    loop {
        let run = || -> redis::RedisResult<()> {
            let mut conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe(CANCEL_CHANNEL)?;
            failing.set(false);
            loop {
                let msg = pubsub.get_message()?;
                let id: String = msg.get_payload()?;
                if tx.send(id).is_err() {
                    return Ok(());
                }
            }
        };
        match run() {
            Ok(()) => return,
            Err(e) => {
                // Said once per outage, not once a second.
                if !failing.replace(true) {
                    tracing::warn!(error = %e, "session store: cancel channel lost; reconnecting");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
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
