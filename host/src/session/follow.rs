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
use super::{run, Sessions};
use crate::agent::Memory;
use crate::store::FollowConn;

/// How often the store is read while following.
const POLL: Duration = Duration::from_millis(50);
/// With no lease and no new event for this long, the running host is taken as gone (its writes
/// land at most every 100 ms; its lease lapses 5 s after its last renewal).
const GONE_AFTER: Duration = Duration::from_secs(1);

impl Sessions {
    /// Follows `session`'s turn from stream entry `after`; the client has seen up to `floor`.
    pub(super) fn follow(&self, session: Arc<Session>, after: Option<String>, floor: u64) {
        let Some(durable) = self.store.clone().filter(|d| d.shared().is_some()) else {
            return;
        };
        let runtime = self.runtime.clone();
        let shutdown = self.lifecycle.shutdown.clone();
        let budget_chars = runtime.config.memory_budget_chars;
        self.lifecycle.runs.spawn(async move {
            let metrics = runtime.metrics.clone();
            let token = session.begin_follow();
            let id = session.id.clone();
            let mut after = after;
            let mut cancel_sent = false;
            let mut quiet_since: Option<Instant> = None;
            let mut conn = FollowConn::default();
            let Some(shared) = durable.shared() else { return };
            tracing::info!(session_id = %id, "following a turn running on another host");
            // The other host's `agent.ready` when the turn ended there; None: that host is gone.
            let ready = loop {
                if shutdown.is_cancelled() {
                    // This host stops; the turn goes on where it runs (the client resumes
                    // elsewhere). Not a cancel.
                    tracing::info!(session_id = %id, "shutting down: no longer following");
                    return;
                }
                if token.is_cancelled() && session.has_left() {
                    // The client here left: the turn goes on where it runs. Not a cancel.
                    tracing::info!(session_id = %id, "the client left: no longer following");
                    return;
                }
                if token.is_cancelled() && !cancel_sent {
                    cancel_sent = true;
                    if shared.publish_cancel(&id).await.is_err() {
                        tracing::warn!(session_id = %id, "could not pass the cancel on to the host running the turn");
                    }
                }
                let (leased, events) = match shared.follow(&mut conn, &id, after.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(session_id = %id, error = %e, "following a turn: store read failed");
                        (true, Vec::new())
                    }
                };
                let got = !events.is_empty();
                let mut ready = None;
                for (entry, seq, frame) in events {
                    after = Some(entry);
                    if ServerEvent::name_of_frame(&frame).as_deref() == Some(ServerEvent::Ready.name()) {
                        ready = Some((seq, frame));
                        break;
                    }
                    session.append_foreign(seq, frame, floor, &metrics);
                }
                if ready.is_some() {
                    break ready;
                }
                if leased || got {
                    quiet_since = None;
                } else if quiet_since.get_or_insert_with(Instant::now).elapsed() > GONE_AFTER {
                    break None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = token.cancelled(), if !cancel_sent => {}
                    _ = shutdown.cancelled() => {}
                }
            };
            // The turn's end (or its host's loss) as the store has it: the memory it left.
            let stored = match durable.load(&id, None).await {
                Ok(Some(s)) => s,
                _ => {
                    tracing::error!(session_id = %id, "the followed session is gone from the store");
                    session.end_follow(ready, floor, &metrics);
                    return;
                }
            };
            let finished = ready.is_some();
            {
                let mut slot = session.agent.lock().await;
                slot.memory = Memory::from_stored(&stored.memory, budget_chars);
                session.set_usage(slot.memory.usage);
                if !finished {
                    if let Some(input) = &stored.running_input {
                        close_lost_turn(&mut slot.memory, input);
                    }
                    durable.turn_end(&id, slot.memory.to_stored());
                }
            }
            if !finished {
                tracing::warn!(session_id = %id, "the host running this turn is gone; the turn is closed as lost");
                session.emit(
                    &ServerEvent::Interrupted {
                        reason: Some("host_lost"),
                    },
                    &metrics,
                );
            }
            durable.claim(&id);
            if let Some((content, token)) = session.end_follow(ready, floor, &metrics) {
                run::run_turns(&runtime, &session, token, content).await;
            }
        });
    }
}
