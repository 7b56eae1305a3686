//! One AG-UI run's stream: a client of the session engine, attached to the thread's session,
//! that feeds the session's events through the translation and writes the frames as SSE
//! (a keep-alive comment every 15 s). A dropped stream cancels the run unless the request
//! said `background`; a run that ends with an interrupt stays attached (quietly) until its
//! approval is answered or times out, so the session keeps the call waiting.
//!
//! A reconnect (`Last-Event-ID: N`) replays the session from its start and translates it again
//! — the translation is a function of the events, so frames come out with the ids they had —
//! sending only the frames after N. A run begins after an `agent.ready` or an approval
//! interrupt; the translation restarts at each of those the client had seen.

use std::sync::Arc;

use bytes::Bytes;
use hyper::Response;
use serde_json::Value;
use tokio::sync::mpsc;

use super::threads::Hold;
use super::translate::{Frame, FrameId, Run, LAST};
use crate::server::outbox::Outbox;
use crate::server::reply::Body;
use crate::server::sse;
use crate::session::{Client, Sessions};

pub(super) struct Driver {
    sessions: Arc<Sessions>,
    client: Client,
    out: Arc<Outbox>,
    session_id: String,
    background: bool,
    /// Log events already taken from the outbox (while checking the engine's answer).
    early: Vec<Value>,
    /// `agent.ready`s to let pass before this run's events (its message was queued).
    skip_readies: Option<u64>,
    /// The thread, held by this stream until it ends or another request takes it over.
    hold: Hold,
}

impl Driver {
    pub(super) fn new(
        sessions: Arc<Sessions>,
        client: Client,
        out: Arc<Outbox>,
        session_id: String,
        background: bool,
        hold: Hold,
    ) -> Driver {
        Driver {
            sessions,
            client,
            out,
            session_id,
            background,
            early: Vec::new(),
            skip_readies: None,
            hold,
        }
    }

    /// Hands the user's message to the engine; the refusal is the engine's `agent.error`.
    pub(super) async fn send(&mut self, content: crate::llm::Content) -> Result<(), Value> {
        self.sessions
            .message(&self.client, &self.session_id, content, (None, None))
            .await;
        self.answer()
    }

    /// Hands the run what it waits for (approval decisions, a frontend tool's results) through
    /// `deliver`; the refusal is the engine's `agent.error`.
    pub(super) fn hand(
        &mut self,
        deliver: impl FnOnce(&Sessions, &Client, &str),
    ) -> Result<(), Value> {
        deliver(&self.sessions, &self.client, &self.session_id);
        self.answer()
    }

    /// The engine's answer to what was just handed to it: a refusal is queued at once (an
    /// `agent.error` outside the log); so is `agent.message_queued` when a message waits. The
    /// run's events that follow are kept for the stream.
    fn answer(&mut self) -> Result<(), Value> {
        while let Some(f) = self.out.pop() {
            let Ok(v) = serde_json::from_str::<Value>(&f) else {
                continue;
            };
            if v.get("seq").is_none() && v["event"] == "agent.error" {
                return Err(v);
            }
            if v["event"] == "agent.message_queued" {
                // What came before belongs to the run it waits for.
                self.early.clear();
                self.skip_readies = Some(v["position"].as_u64().unwrap_or(1));
            }
            self.early.push(v);
        }
        Ok(())
    }

    /// A run refused at its start: RUN_STARTED, then RUN_ERROR.
    pub(super) fn refuse_run(self, started: Frame, error: Value) -> Response<Body> {
        let (tx, response) = sse::stream();
        let frames = [frame(&started.event, Some(started.id)), frame(&error, None)];
        self.sessions.release(&self.client);
        tokio::spawn(async move {
            for f in frames {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
        });
        response
    }

    /// Lets the thread's session go (a request refused before its run began).
    pub(super) fn release(self) {
        self.sessions.release(&self.client);
    }

    /// The run, live from its start.
    pub(super) fn live(self, run: Run, started: Frame) -> Response<Body> {
        let (tx, response) = sse::stream();
        tokio::spawn(self.drive(run, Some(started), None, tx));
        response
    }

    /// The run `last` belongs to, from after `last` (replayed, then live).
    pub(super) fn reconnect(self, run: Run, last: FrameId) -> Response<Body> {
        let (tx, response) = sse::stream();
        tokio::spawn(self.drive(run, None, Some(last), tx));
        response
    }

    /// Feeds the session's events through `run`'s translation until the run ends. `after`:
    /// a reconnect's `Last-Event-ID` (frames up to it are not sent again).
    async fn drive(
        mut self,
        mut run: Run,
        started: Option<Frame>,
        after: Option<FrameId>,
        tx: mpsc::Sender<Bytes>,
    ) {
        if let Some(s) = started {
            if tx.send(frame(&s.event, Some(s.id))).await.is_err() {
                return self.dropped();
            }
        }
        let mut keep_alive = tokio::time::interval(sse::KEEP_ALIVE);
        keep_alive.reset();
        let close_all = self.sessions.lifecycle().close_all.clone();
        let mut pending: Vec<Value> = std::mem::take(&mut self.early);
        // The frames of one batch of events go out as one write.
        let mut batch: Vec<u8> = Vec::new();
        loop {
            let mut ended = false;
            for ev in pending.drain(..) {
                let Some(seq) = ev["seq"].as_u64() else {
                    continue;
                };
                if self.waits_its_turn(&ev) {
                    if ev["event"] == "agent.message_queued" {
                        write_frames(&mut batch, run.on(&ev), after);
                    }
                    continue;
                }
                write_frames(&mut batch, run.on(&ev), after);
                if !run.ended {
                    continue;
                }
                if after.is_some_and(|a| FrameId { seq, part: LAST } <= a) {
                    // A replayed run the client saw end: the one it asks about starts here.
                    run = run.next();
                    continue;
                }
                ended = true;
                break;
            }
            if !batch.is_empty()
                && tx
                    .send(Bytes::from(std::mem::take(&mut batch)))
                    .await
                    .is_err()
            {
                return self.dropped();
            }
            if ended {
                // The run's end went out. A paused run (an interrupt, a frontend call) waits in
                // the session for its answer whoever is attached (`Sessions::release`).
                return self.sessions.release(&self.client);
            }
            tokio::select! {
                _ = self.out.wake.notified() => {
                    // Pieces of the answer take the fast path until the first other event;
                    // from there on, in order, the general one.
                    let mut general = self.skip_readies.is_some();
                    while let Some(f) = self.out.pop() {
                        if !general && run.answer_piece(&f, &mut batch, after) {
                            continue;
                        }
                        general = true;
                        pending.extend(serde_json::from_str::<Value>(&f).ok());
                    }
                    if self.out.is_slow() {
                        let e = Run::refused("the stream was read too slowly; reconnect with Last-Event-ID", "slow_consumer");
                        let _ = tx.send(frame(&e, None)).await;
                        return self.dropped();
                    }
                }
                _ = keep_alive.tick() => {
                    if tx.send(sse::keep_alive()).await.is_err() {
                        return self.dropped();
                    }
                }
                _ = tx.closed() => return self.dropped(),
                _ = self.hold.stop.notified() => {
                    // Another request took the thread over (a reconnect, an interrupting
                    // message): this stream closes what it opened and ends; the run is theirs.
                    for e in run.cut() {
                        let _ = tx.send(frame(&e, None)).await;
                    }
                    return self.sessions.release(&self.client);
                }
                _ = close_all.cancelled() => {
                    let e = Run::refused("the host is shutting down; the run was interrupted", "server_shutting_down");
                    let _ = tx.send(frame(&e, None)).await;
                    return self.sessions.release(&self.client);
                }
            }
        }
    }

    /// Whether `ev` still belongs to the runs this run's message waits behind (it was queued).
    fn waits_its_turn(&mut self, ev: &Value) -> bool {
        let Some(n) = self.skip_readies.as_mut() else {
            return false;
        };
        if ev["event"] == "agent.ready" {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.skip_readies = None;
            }
        }
        true
    }

    /// The stream is gone before the run's end: the run is cancelled (unless `background`).
    fn dropped(self) {
        if !self.background {
            self.sessions.cancel(&self.client, &self.session_id);
        }
        self.sessions.release(&self.client);
    }
}

/// Appends the frames after `after` (all, when None) to `batch`.
fn write_frames(batch: &mut Vec<u8>, frames: Vec<Frame>, after: Option<FrameId>) {
    for f in frames.iter().filter(|f| after.is_none_or(|a| f.id > a)) {
        sse::write_event(batch, Some(f.id), &f.event);
    }
}

/// One SSE frame: `id:` (when it has one) and `data:`.
fn frame(event: &Value, id: Option<FrameId>) -> Bytes {
    let mut out = Vec::new();
    sse::write_event(&mut out, id, event);
    Bytes::from(out)
}
