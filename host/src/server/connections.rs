//! The registry of open WebSocket connections: ids, broadcasts (plugin reload notices) and the
//! per-address connection limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::outbox::ConnHandle;
use super::protocol::ServerEvent;
use crate::metrics::Metrics;

pub struct Connections {
    live: Mutex<HashMap<u64, ConnHandle>>,
    next_id: AtomicU64,
    /// Open connections per client address (only kept with a per-address limit).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(max_per_ip: usize, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            metrics,
        })
    }

    fn live(&self) -> MutexGuard<'_, HashMap<u64, ConnHandle>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register(&self, h: ConnHandle) {
        self.live().insert(h.id, h);
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
    }

    pub fn unregister(&self, id: u64) {
        if self.live().remove(&id).is_some() {
            self.metrics.connections.dec();
        }
    }

    /// Sends a connection-level event (no session, no seq) to every connection.
    pub fn broadcast(&self, event: &ServerEvent) {
        let frame = event.frame();
        for h in self.live().values() {
            h.send(frame.clone());
            self.metrics.events_sent.inc();
        }
    }

    /// Takes a connection slot for `ip`, or `None` when that address is at its limit. The
    /// slot is given back when the returned guard drops.
    pub fn slot_for(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max_per_ip == 0 {
            return Some(IpSlot { owner: None, ip });
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: Some(self.clone()),
            ip,
        })
    }
}

/// A WebSocket connection's place under the per-address limit; released on drop.
pub struct IpSlot {
    /// `None` when there is no per-address limit (nothing to release).
    owner: Option<Arc<Connections>>,
    pub ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(c) = &self.owner {
            let mut m = c.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}
