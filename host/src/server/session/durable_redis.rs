//! The session store on Redis (`--store redis://HOST:PORT[/DB]`), for several hosts sharing
//! sessions. Per session: a hash `myagent:session:{id}` (token hash, settings, memory, the
//! running turn's input, the host that last took it), a stream `myagent:events:{id}` (one entry
//! per write interval: `seq` of its first event and `frames`, one a line; trimmed to about
//! [`ENTRIES_KEPT`] entries) and, while a turn runs, a lease
//! `myagent:lease:{id}` naming the host that runs it (expires [`LEASE`] after its host stops
//! renewing it). Every key expires after `--session-ttl` without activity. Cancels for a turn
//! running on another host travel on the channel [`CANCEL_CHANNEL`].
//!
//! Writes are batched like SQLite's: one pipeline per 100 ms interval (`FLUSH_EVERY`), from one
//! writer thread.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis::Commands;

use super::durable::{gather, Chunk, Chunks, Op, Stored};

/// How long a running turn's lease outlives its host's last renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// Renewal period of the leases of this host's running turns.
const RENEW_EVERY: Duration = Duration::from_secs(1);
pub const CANCEL_CHANNEL: &str = "myagent:cancel";
/// Stream entries kept per session (`MAXLEN ~`): an entry is one session's events of one
/// write interval, so at least this many of its newest events are kept, and at most ~100 s of
/// a continuously streaming session.
const ENTRIES_KEPT: u64 = 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What following a stream reads: whether the turn's lease is held, and the new events as
/// (stream entry id, seq, frame).
pub type Followed = (bool, Vec<(String, u64, String)>);

pub fn session_key(id: &str) -> String {
    format!("myagent:session:{id}")
}
pub fn events_key(id: &str) -> String {
    format!("myagent:events:{id}")
}
pub fn lease_key(id: &str) -> String {
    format!("myagent:lease:{id}")
}

/// A connection with timeouts (a store that stops answering is an error, not a hang).
pub fn connect(client: &redis::Client) -> Result<redis::Connection, String> {
    let conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(|e| format!("cannot reach the session store: {e}"))?;
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    Ok(conn)
}

/// The writer thread: one pipeline per flush interval; renews this host's leases.
pub fn writer(client: redis::Client, rx: mpsc::Receiver<Op>, ttl: Duration, host: String) {
    let mut conn: Option<redis::Connection> = None;
    let mut running: HashSet<String> = HashSet::new();
    let mut renewed = Instant::now();
    let mut batch: Vec<Op> = Vec::new();
    loop {
        let wait = if running.is_empty() {
            Duration::from_secs(60)
        } else {
            RENEW_EVERY
        };
        if !gather(&rx, &mut batch, wait) {
            if let Some(c) = conn.as_mut() {
                let _ = apply(c, std::mem::take(&mut batch), ttl, &host, &mut running);
            }
            return;
        }
        if conn.is_none() {
            match connect(&client) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, lost = batch.len(), "session store unreachable; these writes are lost");
                    release_flushes(&mut batch);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut result = Ok(());
        if !batch.is_empty() {
            result = apply(c, std::mem::take(&mut batch), ttl, &host, &mut running);
        }
        if result.is_ok() && renewed.elapsed() >= RENEW_EVERY && !running.is_empty() {
            renewed = Instant::now();
            let mut p = redis::pipe();
            for id in &running {
                p.cmd("PEXPIRE")
                    .arg(lease_key(id))
                    .arg(LEASE.as_millis() as u64)
                    .ignore();
            }
            result = p.query::<()>(c);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "writing to the session store failed; those writes are lost");
            conn = None;
        }
    }
}

fn release_flushes(batch: &mut Vec<Op>) {
    for op in batch.drain(..) {
        if let Op::Flush(done) = op {
            let _ = done.send(());
        }
    }
}

/// A session's events of one batch as one stream entry.
fn xadd(p: &mut redis::Pipeline, c: &Chunk) {
    p.cmd("XADD")
        .arg(events_key(&c.id))
        .arg("MAXLEN")
        .arg("~")
        .arg(ENTRIES_KEPT)
        .arg("*")
        .arg("seq")
        .arg(c.first)
        .arg("frames")
        .arg(&c.frames)
        .ignore();
}

fn apply(
    c: &mut redis::Connection,
    batch: Vec<Op>,
    ttl: Duration,
    host: &str,
    running: &mut HashSet<String>,
) -> redis::RedisResult<()> {
    let ttl = ttl.as_secs().max(1);
    let mut p = redis::pipe();
    let mut flushed = Vec::new();
    let mut touched: HashSet<String> = HashSet::new();
    // A session's events of the batch are one stream entry, written after its other commands.
    let mut chunks = Chunks::default();
    for op in batch {
        match op {
            Op::Create {
                id,
                token_hash,
                settings,
                ..
            } => {
                p.cmd("DEL").arg(events_key(&id)).ignore();
                p.cmd("HSET")
                    .arg(session_key(&id))
                    .arg("token_hash")
                    .arg(token_hash)
                    .arg("settings")
                    .arg(settings)
                    .arg("memory")
                    .arg("")
                    .arg("host")
                    .arg(host)
                    .ignore();
                touched.insert(id);
            }
            Op::Event { id, seq, frame } => {
                if let Some(earlier) = chunks.add(&id, seq, frame.as_str()) {
                    xadd(&mut p, &earlier);
                }
                touched.insert(id.to_string());
            }
            Op::TurnStart { id, input, .. } => {
                p.cmd("HSET")
                    .arg(session_key(&id))
                    .arg("running_input")
                    .arg(input)
                    .arg("host")
                    .arg(host)
                    .ignore();
                p.cmd("SET")
                    .arg(lease_key(&id))
                    .arg(host)
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64)
                    .ignore();
                running.insert(id.clone());
                touched.insert(id);
            }
            Op::TurnEnd { id, memory, .. } => {
                p.cmd("HSET")
                    .arg(session_key(&id))
                    .arg("memory")
                    .arg(memory)
                    .ignore();
                p.cmd("HDEL")
                    .arg(session_key(&id))
                    .arg("running_input")
                    .ignore();
                if running.remove(&id) {
                    p.cmd("DEL").arg(lease_key(&id)).ignore();
                }
                touched.insert(id);
            }
            Op::Delete { id } => {
                chunks.discard(&id);
                p.cmd("DEL")
                    .arg(session_key(&id))
                    .arg(events_key(&id))
                    .arg(lease_key(&id))
                    .ignore();
                running.remove(&id);
                touched.remove(&id);
            }
            Op::Claim { id } => {
                p.cmd("HSET")
                    .arg(session_key(&id))
                    .arg("host")
                    .arg(host)
                    .ignore();
                touched.insert(id);
            }
            Op::Flush(done) => flushed.push(done),
        }
    }
    for c in chunks.into_chunks() {
        xadd(&mut p, &c);
    }
    for id in &touched {
        p.cmd("EXPIRE").arg(session_key(id)).arg(ttl).ignore();
        p.cmd("EXPIRE").arg(events_key(id)).arg(ttl).ignore();
    }
    let r = p.query::<()>(c);
    for done in flushed {
        let _ = done.send(());
    }
    r
}

/// Reads session `id`. `me`: this host's id (a lease held by another host means the turn is
/// still running there).
pub fn load(client: &redis::Client, id: &str, me: &str) -> Result<Option<Stored>, String> {
    let mut c = connect(client)?;
    let unavailable = |e: redis::RedisError| format!("the session store is unavailable: {e}");
    let fields: std::collections::HashMap<String, String> =
        c.hgetall(session_key(id)).map_err(unavailable)?;
    let Some(token_hash) = fields.get("token_hash").cloned() else {
        return Ok(None);
    };
    let (_, entries) = events_after(&mut c, id, None).map_err(unavailable)?;
    let last_entry = entries.last().map(|(e, _, _)| e.clone());
    let events = entries.into_iter().map(|(_, seq, f)| (seq, f)).collect();
    let lease: Option<String> = c.get(lease_key(id)).map_err(unavailable)?;
    Ok(Some(Stored {
        token_hash,
        settings: fields.get("settings").cloned().unwrap_or_default(),
        memory: fields.get("memory").cloned().unwrap_or_default(),
        running_input: fields.get("running_input").cloned(),
        events,
        running_on: lease.filter(|h| h != me),
        last_entry,
    }))
}

/// Events of session `id` after stream entry `after` (`None`: from the start), oldest first,
/// as (entry id, seq, frame); and whether its turn's lease is still held (by any host).
pub fn events_after(
    c: &mut redis::Connection,
    id: &str,
    after: Option<&str>,
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
    let mut out = Vec::new();
    if let redis::Value::Array(entries) = entries {
        for entry in entries {
            let redis::Value::Array(parts) = entry else {
                continue;
            };
            let (Some(entry_id), Some(redis::Value::Array(kv))) = (parts.first(), parts.get(1))
            else {
                continue;
            };
            let entry_id: String = redis::from_redis_value(entry_id.clone()).unwrap_or_default();
            let (mut first, mut frames) = (None, None);
            for pair in kv.chunks(2) {
                if let [k, v] = pair {
                    let k: String = redis::from_redis_value(k.clone()).unwrap_or_default();
                    let v: String = redis::from_redis_value(v.clone()).unwrap_or_default();
                    match k.as_str() {
                        "seq" => first = v.parse::<u64>().ok(),
                        "frames" => frames = Some(v),
                        _ => {}
                    }
                }
            }
            if let (Some(first), Some(frames)) = (first, frames) {
                for (seq, f) in Chunk::events(first, &frames) {
                    out.push((entry_id.clone(), seq, f.to_owned()));
                }
            }
        }
    }
    let leased: bool = redis::cmd("EXISTS").arg(lease_key(id)).query(c)?;
    Ok((leased, out))
}

/// Asks the host running session `id`'s turn to cancel it.
pub fn publish_cancel(client: &redis::Client, id: &str) -> Result<(), String> {
    let mut c = connect(client)?;
    redis::cmd("PUBLISH")
        .arg(CANCEL_CHANNEL)
        .arg(id)
        .query::<()>(&mut c)
        .map_err(|e| format!("the session store is unavailable: {e}"))
}

/// Listens for cancels of turns (sent by other hosts whose client asked) and hands the session
/// ids to `tx`. Reconnects after a failure.
pub fn listen_for_cancels(client: redis::Client, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    loop {
        let run = || -> redis::RedisResult<()> {
            let mut conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe(CANCEL_CHANNEL)?;
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
                tracing::warn!(error = %e, "session store: cancel channel lost; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
