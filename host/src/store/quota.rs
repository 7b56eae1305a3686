//! Principals' quota counters kept in Redis, so that every host sharing the store enforces one
//! quota: per user, fixed-window counters (`myagent:quota:{user}:tokens:d{day}`,
//! `…:tokens:h{hour}`, `…:messages:m{minute}`, each expiring with its window) and the sessions
//! running a turn (`…:runs`, scored by when the run began; a member counts while its turn's
//! lease lives — so a host that dies frees its places within the lease — or for its first
//! [`LEASE_GRACE_MS`], before the writer has set the lease).

use redis::Commands;

use super::redis::{connect, lease_key, unavailable};
use super::{blocking, Shared, StoreError};

/// How long a run's place counts before its lease must exist.
const LEASE_GRACE_MS: i64 = 10_000;

/// Which windows an instant falls in (numbered from the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub now_ms: i64,
}

impl Windows {
    pub fn now() -> Windows {
        Windows {
            now_ms: super::now_ms(),
        }
    }

    pub fn minute(&self) -> i64 {
        self.now_ms / 60_000
    }
    pub fn hour(&self) -> i64 {
        self.now_ms / 3_600_000
    }
    pub fn day(&self) -> i64 {
        self.now_ms / 86_400_000
    }

    /// Milliseconds until the current window of `len_ms` ends.
    pub fn left(&self, len_ms: i64) -> u64 {
        (len_ms - self.now_ms.rem_euclid(len_ms)) as u64
    }
}

/// A principal's counts in the current windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCounts {
    pub tokens_day: u64,
    pub tokens_hour: u64,
    pub messages: u64,
    pub running: u64,
}

fn key(user: &str, what: &str) -> String {
    format!("myagent:quota:{user}:{what}")
}

impl Shared {
    /// `user`'s counts now (places of runs whose host is gone are removed on the way).
    pub async fn quota_counts(&self, user: &str, at: Windows) -> Result<QuotaCounts, StoreError> {
        let (client, user) = (self.client.clone(), user.to_owned());
        blocking(move || {
            let mut c = connect(&client)?;
            let runs_key = key(&user, "runs");
            let runs: Vec<(String, i64)> =
                c.zrange_withscores(&runs_key, 0, -1).map_err(unavailable)?;
            let mut p = redis::pipe();
            p.get(key(&user, &format!("tokens:d{}", at.day())))
                .get(key(&user, &format!("tokens:h{}", at.hour())))
                .get(key(&user, &format!("messages:m{}", at.minute())));
            for (id, _) in &runs {
                p.exists(lease_key(id));
            }
            let replies: Vec<redis::Value> = p.query(&mut c).map_err(unavailable)?;
            let number = |v: &redis::Value| {
                redis::from_redis_value::<Option<u64>>(v.clone())
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let mut gone = Vec::new();
            let mut running = 0;
            for ((id, began), leased) in runs.iter().zip(replies.iter().skip(3)) {
                let leased = redis::from_redis_value::<bool>(leased.clone()).unwrap_or(false);
                if leased || at.now_ms - began < LEASE_GRACE_MS {
                    running += 1;
                } else {
                    gone.push(id.clone());
                }
            }
            if !gone.is_empty() {
                let _: () = c.zrem(&runs_key, gone).map_err(unavailable)?;
            }
            Ok(QuotaCounts {
                tokens_day: replies.first().map_or(0, number),
                tokens_hour: replies.get(1).map_or(0, number),
                messages: replies.get(2).map_or(0, number),
                running,
            })
        })
        .await
    }

    /// Counts one message of `user`, and, with `run`, the place of session `run`'s run.
    pub async fn quota_take(
        &self,
        user: &str,
        at: Windows,
        run: Option<String>,
    ) -> Result<(), StoreError> {
        let (client, user) = (self.client.clone(), user.to_owned());
        blocking(move || {
            let mut c = connect(&client)?;
            let messages = key(&user, &format!("messages:m{}", at.minute()));
            let mut p = redis::pipe();
            p.incr(&messages, 1)
                .ignore()
                .expire(&messages, 120)
                .ignore();
            if let Some(id) = run {
                let runs = key(&user, "runs");
                p.zadd(&runs, id, at.now_ms).ignore();
                p.expire(&runs, 86_400).ignore();
            }
            p.query::<()>(&mut c).map_err(unavailable)
        })
        .await
    }

    /// Adds `tokens` to `user`'s token windows.
    pub async fn quota_spend(
        &self,
        user: &str,
        at: Windows,
        tokens: u64,
    ) -> Result<(), StoreError> {
        let (client, user) = (self.client.clone(), user.to_owned());
        blocking(move || {
            let mut c = connect(&client)?;
            let day = key(&user, &format!("tokens:d{}", at.day()));
            let hour = key(&user, &format!("tokens:h{}", at.hour()));
            redis::pipe()
                .incr(&day, tokens)
                .ignore()
                .expire(&day, 2 * 86_400)
                .ignore()
                .incr(&hour, tokens)
                .ignore()
                .expire(&hour, 2 * 3_600)
                .ignore()
                .query::<()>(&mut c)
                .map_err(unavailable)
        })
        .await
    }

    /// Session `id`'s run of `user` ended: its place is free.
    pub async fn quota_release(&self, user: &str, id: &str) -> Result<(), StoreError> {
        let (client, user, id) = (self.client.clone(), user.to_owned(), id.to_owned());
        blocking(move || {
            connect(&client)?
                .zrem::<_, _, ()>(key(&user, "runs"), id)
                .map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_number_and_end() {
        let w = super::Windows {
            now_ms: 86_400_000 + 3_600_000 + 61_500,
        };
        assert_eq!((w.day(), w.hour(), w.minute()), (1, 25, 1501));
        assert_eq!(w.left(60_000), 58_500);
        assert_eq!(w.left(86_400_000), 86_400_000 - 3_661_500);
    }
}
