//! How fast messages may start model calls: a token bucket per session and one per client
//! address (`--max-runs-per-minute`, `--max-runs-per-minute-per-ip`). Every `user.message`
//! takes a token — whether it starts a turn, waits behind one or interrupts it — so a client
//! that interrupts in a loop cannot turn each message into a full-context model request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `per_minute` tokens a minute, as many at most in reserve (a burst of that size after a quiet
/// minute, then one every `60 / per_minute` seconds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn full(per_minute: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(per_minute),
            last: now,
        }
    }

    /// Takes a token; when none is left, how long until one is.
    pub(crate) fn take(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(per_minute));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }

    fn is_full(&self, per_minute: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(per_minute) / 60.0 >= f64::from(per_minute)
    }
}

/// The per-address buckets (the per-session one lives in the session).
pub(crate) struct RunLimits {
    pub(crate) per_session: u32,
    pub(crate) per_ip: u32,
    ips: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Addresses kept before full (idle) buckets are forgotten.
const SWEEP_AT: usize = 4096;

impl RunLimits {
    pub(crate) fn new(per_session: u32, per_ip: u32) -> RunLimits {
        RunLimits {
            per_session,
            per_ip,
            ips: Mutex::default(),
        }
    }

    /// Takes a token from `ip`'s bucket (0 per minute: no limit).
    pub(crate) fn take_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.per_ip == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        if ips.len() >= SWEEP_AT {
            ips.retain(|_, b| !b.is_full(self.per_ip, now));
        }
        ips.entry(ip)
            .or_insert_with(|| Bucket::full(self.per_ip, now))
            .take(self.per_ip, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(30, t0);
        for _ in 0..30 {
            b.take(30, t0).unwrap();
        }
        let wait = b.take(30, t0).unwrap_err();
        assert!((1.9..=2.1).contains(&wait.as_secs_f64()), "{wait:?}");
        b.take(30, t0 + Duration::from_secs(2)).unwrap();
        assert!(b.take(30, t0 + Duration::from_secs(2)).is_err());
    }

    #[test]
    fn addresses_have_their_own_buckets_and_zero_is_no_limit() {
        let limits = RunLimits::new(0, 2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(limits.take_ip(a).is_ok() && limits.take_ip(a).is_ok());
        assert!(limits.take_ip(a).is_err());
        assert!(limits.take_ip(b).is_ok());
        let open = RunLimits::new(0, 0);
        assert!((0..1000).all(|_| open.take_ip(a).is_ok()));
    }
}
