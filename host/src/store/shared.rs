//! What only a shared store (Redis) offers: following a turn that runs on another host,
//! passing cancels between hosts, knowing which host holds a session — and opening one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Commands;

use super::batch::strip_resume_tokens;
use super::health::State;
use super::redis::{
    client_key, connect, decode_entry, events_after, field, lease_key, owner_key, run_pipeline,
    session_key, unavailable, xadd_at, Followed, RedisBackend, CANCEL_CHANNEL, IO_TIMEOUT,
    STORED_KEY,
};
use super::{blocking, redact_url, Access, Cursor, Listed, Listing, StoreError, Stored};

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
    let mut conn = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(|e| StoreError::Config(format!("{shown}: cannot reach the session store: {e}")))?;
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    match scrub_resume_tokens(&mut conn) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            streams = n,
            "resume tokens removed from stored events (written by an earlier version)"
        ),
        Err(e) => tracing::error!(error = %e, "removing stored resume tokens failed"),
    }
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

/// A connection kept by a reader that reads often (a followed turn); made on first use,
/// dropped after a failure.
#[derive(Default)]
pub struct FollowConn(Option<redis::Connection>);

/// What only a shared store offers: following a turn that runs on another host, passing
/// cancels between hosts, knowing which host holds a session.
pub struct Shared {
    pub(super) client: redis::Client,
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
    /// Stored sessions, all and `who`'s (exact when at or over `prune_at`).
    pub(crate) async fn count(
        &self,
        who: &str,
        prune_at: (u64, u64),
    ) -> Result<(u64, u64), StoreError> {
        let (client, who) = (self.client.clone(), who.to_owned());
        blocking(move || count(&client, &who, prune_at)).await
    }

    pub(crate) async fn load(
        &self,
        id: &str,
        access: Option<Access>,
    ) -> Result<Option<Stored>, StoreError> {
        let (client, id, me, state) = (
            self.client.clone(),
            id.to_owned(),
            self.host_id.clone(),
            self.state.clone(),
        );
        blocking(move || load(&client, &id, &me, &state, access.as_ref())).await
    }

    /// `owner`'s sessions, newest first (see `Store::list`).
    pub(crate) async fn list(
        &self,
        owner: &str,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let (client, owner) = (self.client.clone(), owner.to_owned());
        blocking(move || list(&client, &owner, before.as_ref(), limit)).await
    }
}

/// Members of `set` whose session is gone (expired, deleted) are removed, then it is counted.
fn prune_and_count(c: &mut redis::Connection, set: &str) -> redis::RedisResult<u64> {
    let ids: Vec<String> = c.smembers(set)?;
    let mut p = redis::pipe();
    for id in &ids {
        p.exists(session_key(id));
    }
    let alive: Vec<bool> = p.query(c)?;
    let gone: Vec<&String> = ids
        .iter()
        .zip(alive)
        .filter(|(_, a)| !a)
        .map(|(id, _)| id)
        .collect();
    if !gone.is_empty() {
        let _: () = c.srem(set, gone)?;
    }
    c.scard(set)
}

/// Stored sessions, all and `client`'s; a count at or over `prune_at` is made exact first.
fn count(
    client: &redis::Client,
    who: &str,
    prune_at: (u64, u64),
) -> Result<(u64, u64), StoreError> {
    let mut c = connect(client)?;
    let mut all: u64 = c.scard(STORED_KEY).map_err(unavailable)?;
    if prune_at.0 > 0 && all >= prune_at.0 {
        all = prune_and_count(&mut c, STORED_KEY).map_err(unavailable)?;
    }
    let key = client_key(who);
    let mut mine: u64 = c.scard(&key).map_err(unavailable)?;
    if prune_at.1 > 0 && mine >= prune_at.1 {
        mine = prune_and_count(&mut c, &key).map_err(unavailable)?;
    }
    Ok((all, mine))
}

fn load(
    client: &redis::Client,
    id: &str,
    me: &str,
    state: &State,
    access: Option<&Access>,
) -> Result<Option<Stored>, StoreError> {
    let mut c = connect(client)?;
    if let Some(access) = access {
        let (found, owner): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(session_key(id))
            .arg(field::TOKEN_HASH)
            .arg(field::OWNER)
            .query(&mut c)
            .map_err(unavailable)?;
        if !found.is_some_and(|h| access.admits(&h, owner.as_deref())) {
            return Ok(None);
        }
    }
    let mut fields: HashMap<String, String> = c.hgetall(session_key(id)).map_err(unavailable)?;
    let Some(token_hash) = fields.remove(field::TOKEN_HASH) else {
        return Ok(None);
    };
    let (_, entries) = events_after(&mut c, id, None, state).map_err(unavailable)?;
    let last_entry = entries.last().map(|(e, _, _)| e.clone());
    let events = entries.into_iter().map(|(_, seq, f)| (seq, f)).collect();
    let lease: Option<String> = c.get(lease_key(id)).map_err(unavailable)?;
    let number = |f: &str| {
        fields
            .get(f)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let listing = Listing {
        title: fields.get(field::TITLE).cloned().unwrap_or_default(),
        agent: fields.get(field::AGENT).cloned().unwrap_or_default(),
        created: number(field::CREATED),
        turns: number(field::TURNS).max(0) as u64,
    };
    Ok(Some(Stored {
        token_hash,
        owner: fields.remove(field::OWNER),
        listing,
        settings: fields.remove(field::SETTINGS).unwrap_or_default(),
        memory: fields.remove(field::MEMORY).unwrap_or_default(),
        running_input: fields.remove(field::RUNNING_INPUT),
        events,
        running_on: lease.filter(|h| h != me),
        last_entry,
    }))
}

/// Entries read from an owner's list per round trip.
const LIST_PAGE: usize = 100;

/// `owner`'s sessions after `before`, newest first; members whose session is gone (expired,
/// deleted) are removed from the list on the way.
fn list(
    client: &redis::Client,
    owner: &str,
    before: Option<&Cursor>,
    limit: usize,
) -> Result<Vec<Listed>, StoreError> {
    let mut c = connect(client)?;
    let key = owner_key(owner);
    let max = before.map_or("+inf".to_owned(), |b| b.updated.to_string());
    let mut out = Vec::new();
    let mut offset = 0;
    while out.len() < limit {
        // Newest first; equal scores by id, descending — the order a cursor follows.
        let page: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&key)
            .arg(&max)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(LIST_PAGE)
            .query(&mut c)
            .map_err(unavailable)?;
        offset += page.len();
        let wanted: Vec<&(String, i64)> = page
            .iter()
            .filter(|(id, at)| before.is_none_or(|b| b.precedes(*at, id)))
            .collect();
        if wanted.is_empty() && page.len() < LIST_PAGE {
            break;
        }
        let mut p = redis::pipe();
        for (id, _) in &wanted {
            p.cmd("HMGET").arg(session_key(id)).arg(&[
                field::TOKEN_HASH,
                field::TITLE,
                field::AGENT,
                field::CREATED,
                field::TURNS,
                field::RUNNING_INPUT,
                field::USAGE,
            ]);
        }
        let rows: Vec<[Option<String>; 7]> = if wanted.is_empty() {
            Vec::new()
        } else {
            p.query(&mut c).map_err(unavailable)?
        };
        let mut gone = Vec::new();
        for ((id, at), row) in wanted.into_iter().zip(rows) {
            let [Some(_), title, agent, created, turns, running, usage] = row else {
                gone.push(id.clone());
                continue;
            };
            if out.len() < limit {
                out.push(Listed {
                    id: id.clone(),
                    listing: Listing {
                        title: title.unwrap_or_default(),
                        agent: agent.unwrap_or_default(),
                        created: created.and_then(|v| v.parse().ok()).unwrap_or(0),
                        turns: turns.and_then(|v| v.parse().ok()).unwrap_or(0),
                    },
                    updated: *at,
                    running: running.is_some(),
                    usage: usage.unwrap_or_default(),
                });
            }
        }
        if !gone.is_empty() {
            // They were before `offset`: the next page starts that much earlier.
            offset -= gone.len();
            let _: () = c.zrem(&key, gone).map_err(unavailable)?;
        }
        if page.len() < LIST_PAGE {
            break;
        }
    }
    Ok(out)
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

/// Rewrites the event streams that hold a resume token in clear (an earlier version stored
/// `agent.session_created` whole): each is replaced in one transaction, its entry ids and its
/// expiry kept. Returns how many streams changed.
fn scrub_resume_tokens(c: &mut redis::Connection) -> Result<usize, StoreError> {
    let keys: Vec<String> = c
        .scan_match::<_, String>("myagent:events:*")
        .map_err(unavailable)?
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    let mut changed = 0;
    for key in keys {
        let raw: redis::Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(c)
            .map_err(unavailable)?;
        let redis::Value::Array(raw) = raw else {
            continue;
        };
        let entries: Vec<(String, u64, String)> =
            raw.iter().filter_map(|e| decode_entry(e).ok()).collect();
        if !entries
            .iter()
            .any(|(_, _, f)| f.contains("\"resume_token\":\""))
        {
            continue;
        }
        let ttl: i64 = c.pttl(&key).map_err(unavailable)?;
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("DEL").arg(&key).ignore();
        for (id, first, frames) in &entries {
            let clean = strip_resume_tokens(frames);
            xadd_at(&mut p, &key, id, *first, clean.as_deref().unwrap_or(frames));
        }
        if ttl > 0 {
            p.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        }
        run_pipeline(c, &p)?;
        changed += 1;
    }
    Ok(changed)
}
