//! Where sessions live, behind [`SessionStore`] so another store (a database, a shared cache)
//! can replace the in-memory one without touching connections or runs. The store also keeps
//! the session caps: inserting checks them atomically.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::log::Session;

/// The caps a store enforces on insert.
#[derive(Debug, Clone, Copy)]
pub struct SessionCaps {
    /// Sessions alive at once, over all clients.
    pub max_sessions: usize,
    /// Sessions per client address (0: no limit).
    pub max_per_ip: usize,
}

/// Why a session could not be created (the client gets `too_many_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The server holds `max_sessions`.
    Server(usize),
    /// The client's address holds `max_sessions_per_ip`.
    Address(usize),
    /// The connection holds `max_sessions_per_connection`.
    Connection(usize),
    /// The session store holds `--max-stored-sessions`.
    Stored(u64),
    /// The store holds `--max-stored-sessions-per-ip` of the client's address.
    StoredAddress(u64),
}

impl std::fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRefusal::Server(n) => write!(
                f,
                "Too many sessions on this server (limit {n}); close a session or try again later"
            ),
            SessionRefusal::Address(n) => write!(
                f,
                "Too many sessions from your address (limit {n}); close a session first"
            ),
            SessionRefusal::Connection(n) => {
                write!(f, "Too many sessions on this connection (limit {n})")
            }
            SessionRefusal::Stored(n) => write!(
                f,
                "Too many stored sessions on this server (limit {n}); try again later"
            ),
            SessionRefusal::StoredAddress(n) => write!(
                f,
                "Too many stored sessions from your address (limit {n}); close (user.close_session) sessions you no longer need, or wait for them to expire"
            ),
        }
    }
}

/// The registry of live sessions.
pub trait SessionStore: Send + Sync {
    fn get(&self, id: &str) -> Option<Arc<Session>>;
    /// Whether one more session for `ip` fits (checked before the plugin's factory runs).
    fn room(&self, ip: IpAddr) -> Result<(), SessionRefusal>;
    /// Adds a session unless that would break a cap.
    fn insert(&self, session: Arc<Session>) -> Result<(), SessionRefusal>;
    fn remove(&self, id: &str) -> Option<Arc<Session>>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every session (for shutdown).
    fn all(&self) -> Vec<Arc<Session>>;
}

/// Sessions in this process's memory: they end with it.
pub struct MemoryStore {
    caps: SessionCaps,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    map: HashMap<String, Arc<Session>>,
    /// Only kept when there is a per-address cap.
    per_ip: HashMap<IpAddr, usize>,
}

impl Table {
    fn room(&self, caps: &SessionCaps, ip: IpAddr) -> Result<(), SessionRefusal> {
        if self.map.len() >= caps.max_sessions {
            return Err(SessionRefusal::Server(caps.max_sessions));
        }
        if caps.max_per_ip > 0 && self.per_ip.get(&ip).copied().unwrap_or(0) >= caps.max_per_ip {
            return Err(SessionRefusal::Address(caps.max_per_ip));
        }
        Ok(())
    }
}

impl MemoryStore {
    pub fn new(caps: SessionCaps) -> MemoryStore {
        MemoryStore {
            caps,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionStore for MemoryStore {
    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.table().map.get(id).cloned()
    }

    fn room(&self, ip: IpAddr) -> Result<(), SessionRefusal> {
        self.table().room(&self.caps, ip)
    }

    fn insert(&self, session: Arc<Session>) -> Result<(), SessionRefusal> {
        let mut t = self.table();
        t.room(&self.caps, session.client_ip)?;
        if self.caps.max_per_ip > 0 {
            *t.per_ip.entry(session.client_ip).or_default() += 1;
        }
        t.map.insert(session.id.clone(), session);
        Ok(())
    }

    fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let mut t = self.table();
        let s = t.map.remove(id)?;
        if let Some(n) = t.per_ip.get_mut(&s.client_ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&s.client_ip);
            }
        }
        Some(s)
    }

    fn len(&self) -> usize {
        self.table().map.len()
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.table().map.values().cloned().collect()
    }
}
