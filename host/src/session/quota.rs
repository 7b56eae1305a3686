//! Quotas per principal, by tier (`--auth-tokens-file`): tokens per day and per hour, messages
//! per minute, runs at once. Checked when a message arrives — before any model call — and
//! answered with `quota_exceeded` (tokens) or `rate_limited` (messages, runs) and what was over.
//! A principal without a tier has no quota and costs nothing here. The counters are this
//! host's, or shared by every host when the store is Redis ([`crate::store::Shared`]'s quota
//! counters). Windows are fixed (the UTC day, the clock hour, the clock minute).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::event::{ErrorCode, Exceeded};
use super::principal::{Principal, Principals, Tier};
use crate::store::{QuotaCounts, Store, Windows};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// Every principal's counters.
pub(super) struct Quotas {
    principals: Arc<Principals>,
    /// This host's counters (unused when the store is shared).
    local: Mutex<HashMap<Arc<str>, Local>>,
    /// The shared store whose counters every host uses, if any.
    store: Option<Arc<Store>>,
}

/// A principal's counters on this host: (window number, count) each, and runs now.
#[derive(Debug, Default)]
struct Local {
    day: (i64, u64),
    hour: (i64, u64),
    minute: (i64, u64),
    running: u64,
}

/// Why a message was refused: the code, the text, what was over.
pub(super) struct Refused(pub(super) ErrorCode, pub(super) String, pub(super) Exceeded);

/// A principal's place for one session's runs (held while they run); spends their tokens.
/// Dropped, the place is free.
pub(super) struct RunPlace {
    quotas: Arc<Quotas>,
    user: Arc<str>,
    session: String,
    /// Whether this place holds one of the principal's concurrent runs.
    counted: bool,
}

impl Quotas {
    pub(super) fn new(principals: Arc<Principals>, store: Option<Arc<Store>>) -> Arc<Quotas> {
        Arc::new(Quotas {
            principals,
            local: Mutex::default(),
            store: store.filter(|s| s.shared().is_some()),
        })
    }

    /// Admits a message of `principal` to session `session` (`starts_run`: the session is idle,
    /// so the message starts a run), or says which limit refuses it. A principal with a tier
    /// gets a [`RunPlace`] (for a run it starts: also one of its concurrent runs).
    pub(super) async fn admit(
        self: &Arc<Self>,
        principal: Option<&Principal>,
        session: &str,
        starts_run: bool,
    ) -> Result<Option<RunPlace>, Refused> {
        let Some((p, tier)) =
            principal.and_then(|p| Some((p, self.principals.tier(p.tier.as_deref()?)?)))
        else {
            return Ok(None);
        };
        let at = Windows::now();
        let counted = starts_run && tier.concurrent_runs.is_some();
        let run = counted.then(|| session.to_owned());
        match self.shared() {
            Some(shared) => {
                let counts = match shared.quota_counts(&p.user, at).await {
                    Ok(c) => c,
                    Err(e) => {
                        // The store's outage is not the principal's fault: served, uncounted.
                        tracing::warn!(error = %e, "quota counters unavailable; admitting the message");
                        return Ok(None);
                    }
                };
                check(&tier, &counts, at, starts_run)?;
                if let Err(e) = shared.quota_take(&p.user, at, run).await {
                    tracing::warn!(error = %e, "quota counters unavailable; a message was not counted");
                }
            }
            None => self.admit_here(&p.user, &tier, at, starts_run, counted)?,
        }
        Ok(Some(RunPlace {
            quotas: self.clone(),
            user: p.user.clone(),
            session: session.to_owned(),
            counted,
        }))
    }

    /// The shared store's counters, when the store is shared.
    fn shared(&self) -> Option<&crate::store::Shared> {
        self.store.as_ref().and_then(|s| s.shared())
    }

    /// This host's counters: checked and taken under one lock (two messages at once cannot
    /// both take the last place).
    fn admit_here(
        &self,
        user: &Arc<str>,
        tier: &Tier,
        at: Windows,
        starts_run: bool,
        counted: bool,
    ) -> Result<(), Refused> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let l = local.entry(user.clone()).or_default();
        let now = |(w, n): (i64, u64), current: i64| if w == current { n } else { 0 };
        let counts = QuotaCounts {
            tokens_day: now(l.day, at.day()),
            tokens_hour: now(l.hour, at.hour()),
            messages: now(l.minute, at.minute()),
            running: l.running,
        };
        check(tier, &counts, at, starts_run)?;
        bump(&mut l.minute, at.minute(), 1);
        if counted {
            l.running += 1;
        }
        Ok(())
    }

    fn release(self: &Arc<Self>, user: &Arc<str>, session: &str) {
        if let Some(store) = self.store.clone() {
            let (user, session) = (user.clone(), session.to_owned());
            tokio::spawn(async move {
                if let Some(shared) = store.shared() {
                    if let Err(e) = shared.quota_release(&user, &session).await {
                        tracing::warn!(error = %e, "a run's quota place was not freed (its lease frees it)");
                    }
                }
            });
            return;
        }
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let l = local.entry(user.clone()).or_default();
        l.running = l.running.saturating_sub(1);
        if l.running == 0 && l.minute.0 < Windows::now().minute() && l.day.0 < Windows::now().day()
        {
            local.remove(user); // nothing left to remember
        }
    }
}

impl RunPlace {
    /// Adds a run's `tokens` (input + output) to the principal's token windows.
    pub(super) async fn spend(&self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let at = Windows::now();
        if let Some(shared) = self.quotas.shared() {
            if let Err(e) = shared.quota_spend(&self.user, at, tokens).await {
                tracing::warn!(error = %e, tokens, "quota counters unavailable; tokens not counted");
            }
            return;
        }
        let mut local = self.quotas.local.lock().unwrap_or_else(|p| p.into_inner());
        let l = local.entry(self.user.clone()).or_default();
        bump(&mut l.day, at.day(), tokens);
        bump(&mut l.hour, at.hour(), tokens);
    }
}

impl Drop for RunPlace {
    fn drop(&mut self) {
        if self.counted {
            self.quotas.release(&self.user, &self.session);
        }
    }
}

fn bump(window: &mut (i64, u64), current: i64, n: u64) {
    if window.0 != current {
        *window = (current, 0);
    }
    window.1 += n;
}

/// The first of `tier`'s limits `counts` is at: tokens, then messages, then runs.
fn check(tier: &Tier, counts: &QuotaCounts, at: Windows, starts_run: bool) -> Result<(), Refused> {
    let over = |quota: &'static str, limit: Option<u64>, used: u64, window: i64| {
        limit.filter(|l| used >= *l).map(|limit| Exceeded {
            quota,
            limit,
            used,
            retry_after_ms: if window > 0 { at.left(window) } else { 0 },
        })
    };
    if let Some(e) = over(
        "tokens_per_day",
        tier.tokens_per_day,
        counts.tokens_day,
        DAY,
    )
    .or_else(|| {
        over(
            "tokens_per_hour",
            tier.tokens_per_hour,
            counts.tokens_hour,
            HOUR,
        )
    }) {
        let text = format!(
            "Token quota reached: {} of {} tokens ({}); it renews in {} min",
            e.used,
            e.limit,
            e.quota,
            e.retry_after_ms.div_ceil(60_000)
        );
        return Err(Refused(ErrorCode::QuotaExceeded, text, e));
    }
    if let Some(e) = over(
        "messages_per_minute",
        tier.messages_per_minute,
        counts.messages,
        MINUTE,
    ) {
        let text = format!(
            "Too many messages: {} a minute at most; try again in {:.1} s",
            e.limit,
            e.retry_after_ms as f64 / 1000.0
        );
        return Err(Refused(ErrorCode::RateLimited, text, e));
    }
    if starts_run {
        if let Some(e) = over("concurrent_runs", tier.concurrent_runs, counts.running, 0) {
            let text = format!(
                "{} of your sessions are running already (at most {}); send this when one is ready",
                e.used, e.limit
            );
            return Err(Refused(ErrorCode::RateLimited, text, e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_in_order() {
        let tier = Tier {
            tokens_per_day: Some(100),
            tokens_per_hour: None,
            messages_per_minute: Some(2),
            concurrent_runs: Some(1),
        };
        let at = Windows { now_ms: 30_000 };
        let ok = QuotaCounts::default();
        assert!(check(&tier, &ok, at, true).is_ok());
        let spent = QuotaCounts {
            tokens_day: 100,
            ..ok
        };
        let Err(Refused(code, _, e)) = check(&tier, &spent, at, true) else {
            panic!()
        };
        assert_eq!(
            (code, e.quota, e.used, e.limit),
            (ErrorCode::QuotaExceeded, "tokens_per_day", 100, 100)
        );
        assert_eq!(e.retry_after_ms, (DAY - 30_000) as u64);
        let chatty = QuotaCounts { messages: 2, ..ok };
        let Err(Refused(code, _, e)) = check(&tier, &chatty, at, true) else {
            panic!()
        };
        assert_eq!(
            (code, e.quota, e.retry_after_ms),
            (ErrorCode::RateLimited, "messages_per_minute", 30_000)
        );
        let busy = QuotaCounts { running: 1, ..ok };
        assert!(check(&tier, &busy, at, true).is_err());
        // A message to a running session (queued, or interrupting) starts no new run.
        assert!(check(&tier, &busy, at, false).is_ok());
    }
}
