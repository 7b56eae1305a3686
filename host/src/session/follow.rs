//! Following a turn that runs on another host (a shared store): a client resumed here while
//! its session's turn still runs where it started. This host reads the turn's events from the
//! store as they are written and passes them on — in `seq` order, none the client had — until
//! the turn ends; then the session is this host's (its next message runs here). A cancel asked
//! here is published to the host running the turn. If that host dies (its lease expires with no
//! new events), the turn is closed as `host_lost`, as a restore after a crash would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::ServerEvent;
use super::log::Session;
use super::restore::close_lost_turn;
use super::turn::Turn;
use super::{run, Sessions};
use tokio_util::sync::CancellationToken;

use crate::agent::Memory;
use crate::metrics::Metrics;
use crate::store::{FollowConn, Store};

/// How often the store is read while following.
const POLL: Duration = Duration::from_millis(50);
/// With no lease and no new event for this long, the running host is taken as gone (its writes
/// land at most every 100 ms; its lease lapses 5 s after its last renewal).
const GONE_AFTER: Duration = Duration::from_secs(1);

/// The other host's `agent.ready` when the turn ended there (its seq and frame); None: that
/// host is gone.
type Ready = Option<(u64, String)>;

/// One follow: the session, where it is read from, and what the client has seen.
struct Follow {
    session: Arc<Session>,
    durable: Arc<Store>,
    floor: u64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Sessions {
    /// Follows `session`'s turn from stream entry `after`; the client has seen up to `floor`.
    pub(super) fn follow(&self, session: Arc<Session>, after: Option<String>, floor: u64) {
        let Some(durable) = self.store.clone().filter(|d| d.shared().is_some()) else {
            return;
        };
        let runtime = self.runtime.clone();
        let f = Follow {
            session,
            durable,
            floor,
            metrics: runtime.metrics.clone(),
            shutdown: self.lifecycle.shutdown.clone(),
        };
        self.lifecycle.runs.spawn(async move {
            tracing::info!(session_id = %f.session.id, "following a turn running on another host");
            let Some(ready) = f.watch(after).await else {
                return;
            };
            let budget_chars = runtime.config.memory_budget_chars;
            if let Some((content, token)) = f.take_over(ready, budget_chars).await {
                run::run_turns(&runtime, &f.session, token, content, None).await;
            }
        });
    }
}

impl Follow {
    /// Passes the turn's events on until it ends there (`Some(ready)`), or this host stops
    /// following without cancelling it — it shuts down, or the client here left (`None`).
    async fn watch(&self, mut after: Option<String>) -> Option<Ready> {
        let (session, id) = (&self.session, &self.session.id);
        let shared = self.durable.shared()?;
        let token = session.begin_follow();
        let (mut cancel_sent, mut quiet_since) = (false, None::<Instant>);
        let mut conn = FollowConn::default();
        loop {
            if self.shutdown.is_cancelled() {
                // The turn goes on where it runs (the client resumes elsewhere). Not a cancel.
                tracing::info!(session_id = %id, "shutting down: no longer following");
                return None;
            }
            if token.is_cancelled() && session.has_left() {
                tracing::info!(session_id = %id, "the client left: no longer following");
                return None;
            }
            if token.is_cancelled() && !cancel_sent {
                cancel_sent = true;
                if shared.publish_cancel(id).await.is_err() {
                    tracing::warn!(session_id = %id, "could not pass the cancel on to the host running the turn");
                }
            }
            let (leased, events) = match shared.follow(&mut conn, id, after.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "following a turn: store read failed");
                    (true, Vec::new())
                }
            };
            let got = !events.is_empty();
            for (entry, seq, frame) in events {
                after = Some(entry);
                if ServerEvent::name_of_frame(&frame).as_deref() == Some(ServerEvent::Ready.name())
                {
                    return Some(Some((seq, frame)));
                }
                session.append_foreign(seq, frame, self.floor, &self.metrics);
            }
            if leased || got {
                quiet_since = None;
            } else if quiet_since.get_or_insert_with(Instant::now).elapsed() > GONE_AFTER {
                return Some(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = token.cancelled(), if !cancel_sent => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// The turn's end (or its host's loss) as the store has it: the memory it left, a lost turn
    /// closed as `host_lost`; the session is this host's now. Returns a message queued meanwhile.
    async fn take_over(
        &self,
        ready: Ready,
        budget_chars: usize,
    ) -> Option<(Turn, CancellationToken)> {
        let (session, id) = (&self.session, &self.session.id);
        let stored = match self.durable.load(id, None).await {
            Ok(Some(s)) => s,
            _ => {
                tracing::error!(session_id = %id, "the followed session is gone from the store");
                return session.end_follow(ready, self.floor, &self.metrics);
            }
        };
        let finished = ready.is_some();
        {
            let mut slot = session.agent.lock().await;
            slot.memory = Memory::from_stored(&stored.memory, budget_chars);
            session.took_over(stored.listing.clone(), slot.memory.usage);
            if !finished {
                if let Some(input) = &stored.running_input {
                    close_lost_turn(&mut slot.memory, input);
                }
                self.durable.turn_end(
                    id,
                    session.user.as_deref(),
                    (slot.memory.to_stored(), slot.memory.usage.to_stored()),
                    &session.agent_name(),
                );
            }
        }
        if !finished {
            tracing::warn!(session_id = %id, "the host running this turn is gone; the turn is closed as lost");
            let lost = ServerEvent::Interrupted {
                reason: Some("host_lost"),
            };
            session.emit(&lost, &self.metrics);
        }
        self.durable.claim(id);
        session.end_follow(ready, self.floor, &self.metrics)
    }
}
