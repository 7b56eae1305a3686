//! One AG-UI run's stream: a client of the session engine, attached to the thread's session,
//! that feeds the session's events through the translation and writes the frames as SSE
//! (a keep-alive comment every 15 s). The response body is the driver: hyper polls it from the
//! connection's task, so there is no task or channel between the session's outbox and the
//! socket. A dropped stream (the body dropped) cancels the run unless the request said
//! `background`; a run that ends with an interrupt lets the session go, and the call waits in
//! the session for its answer whoever is attached.
//!
//! A reconnect (`Last-Event-ID: N`) replays the session from its start and translates it again
//! — the translation is a function of the events, so frames come out with the ids they had —
//! sending only the frames after N. A run begins after an `agent.ready` or an approval
//! interrupt; the translation restarts at each of those the client had seen.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper::Response;
use serde_json::Value;

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
    /// Whether the session was let go (the run ended, was refused or handed over).
    released: bool,
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
            released: false,
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
    pub(super) fn refuse_run(mut self, started: Frame, error: Value) -> Response<Body> {
        let mut out = Vec::new();
        sse::write_event(&mut out, Some(started.id), &started.event);
        sse::write_event::<u64>(&mut out, None, &error);
        self.finish();
        sse::from_stream(futures_util::stream::iter([Bytes::from(out)]))
    }

    /// Lets the thread's session go (a request refused before its run began).
    pub(super) fn release(mut self) {
        self.finish();
    }

    /// The run, live from its start.
    pub(super) fn live(self, run: Run, started: Frame) -> Response<Body> {
        let first = frame(&started.event, Some(started.id));
        self.respond(run, Some(first), None)
    }

    /// The run `last` belongs to, from after `last` (replayed, then live).
    pub(super) fn reconnect(self, run: Run, last: FrameId) -> Response<Body> {
        self.respond(run, None, Some(last))
    }

    /// The SSE response: its body drives the translation itself (hyper polls it as the
    /// connection can take more), so a batch of the session's events goes from the outbox to
    /// the socket in the connection's own task — no channel, no second task. Dropping the body
    /// (the client went away) drops the driver, which cancels the run unless `background`.
    fn respond(mut self, run: Run, first: Option<Bytes>, after: Option<FrameId>) -> Response<Body> {
        let mut keep_alive = tokio::time::interval(sse::KEEP_ALIVE);
        keep_alive.reset();
        let drive = Drive {
            pending: std::mem::take(&mut self.early),
            close_all: self.sessions.lifecycle().close_all.clone(),
            driver: self,
            run,
            after,
            first,
            keep_alive,
            buf: BytesMut::new(),
        };
        sse::from_stream(futures_util::stream::unfold(drive, |mut d| async move {
            let batch = d.next().await?;
            Some((batch, d))
        }))
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

    /// This request is done with the thread's session: it lets it go (once). A paused run (an
    /// interrupt, a frontend call) waits in the session for its answer whoever is attached.
    fn finish(&mut self) {
        if !self.released {
            self.released = true;
            self.sessions.release(&self.client);
        }
    }

    /// The stream is given up before the run's end: the run is cancelled (unless
    /// `background`) and the session let go.
    fn abandon(&mut self) {
        if !self.released {
            if self.background {
                tracing::info!(session_id = %self.session_id, "AG-UI stream ended before its run: the run goes on in the background");
            } else {
                tracing::info!(session_id = %self.session_id, "AG-UI stream ended before its run: the run is cancelled");
                self.sessions.cancel(&self.client, &self.session_id);
            }
            self.finish();
        }
    }
}

impl Drop for Driver {
    /// The body was dropped (the client went away) before the run's end.
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Room reserved for one wake-up's frames (most are a few answer pieces, ~150 bytes each).
const BATCH_ROOM: usize = 8 * 1024;

/// A run being streamed: what the body's next batch is made from.
struct Drive {
    driver: Driver,
    run: Run,
    /// A reconnect's `Last-Event-ID` (frames up to it are not sent again).
    after: Option<FrameId>,
    /// RUN_STARTED of a live run, sent first.
    first: Option<Bytes>,
    keep_alive: tokio::time::Interval,
    close_all: tokio_util::sync::CancellationToken,
    /// Session events taken from the outbox and not yet translated.
    pending: Vec<Value>,
    /// Where batches are written: each goes out as its own `Bytes`, and the memory comes back
    /// for the next once hyper has written it (no allocation per batch).
    buf: BytesMut,
}

impl Drive {
    /// The frames of the next batch of the session's events, as one write; None once the run's
    /// end went out (or the stream was stopped).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(f) = self.first.take() {
            return Some(f);
        }
        // Room for a wake-up's worth of frames without growing as they are written.
        let mut buf = std::mem::take(&mut self.buf);
        buf.reserve(BATCH_ROOM);
        let some = self.next_into(&mut buf).await;
        let batch = buf.split().freeze();
        self.buf = buf;
        some.then_some(batch)
    }

    /// Writes the next batch into `batch`; false when there is none (the stream ends).
    async fn next_into(&mut self, batch: &mut BytesMut) -> bool {
        loop {
            if !self.driver.released && self.translate(batch) {
                // The run's end is in this batch.
                self.driver.finish();
            }
            if !batch.is_empty() {
                return true;
            }
            if self.driver.released {
                return false;
            }
            let d = &mut self.driver;
            tokio::select! {
                _ = d.out.wake.notified() => {
                    // Pieces of the answer take the fast path until the first other event;
                    // from there on, in order, the general one.
                    let mut general = d.skip_readies.is_some();
                    while let Some(f) = d.out.pop() {
                        if !general && self.run.answer_piece(&f, batch, self.after) {
                            continue;
                        }
                        general = true;
                        self.pending.extend(serde_json::from_str::<Value>(&f).ok());
                    }
                    if d.out.is_slow() {
                        let e = Run::refused("the stream was read too slowly; reconnect with Last-Event-ID", "slow_consumer");
                        sse::write_event::<u64>(batch, None, &e);
                        // Cancelled, unless `background`, as a dropped stream is.
                        d.abandon();
                    }
                }
                _ = self.keep_alive.tick() => {
                    batch.extend_from_slice(&sse::keep_alive());
                    return true;
                }
                _ = d.hold.stop.notified() => {
                    // Another request took the thread over (a reconnect, an interrupting
                    // message): this stream closes what it opened and ends; the run is theirs.
                    for e in self.run.cut() {
                        sse::write_event::<u64>(batch, None, &e);
                    }
                    d.finish();
                }
                _ = self.close_all.cancelled() => {
                    let e = Run::refused("the host is shutting down; the run was interrupted", "server_shutting_down");
                    sse::write_event::<u64>(batch, None, &e);
                    d.finish();
                }
            }
        }
    }

    /// Translates the pending events into `batch`; true when the run's end is among them.
    fn translate(&mut self, batch: &mut BytesMut) -> bool {
        let mut pending = std::mem::take(&mut self.pending).into_iter();
        for ev in pending.by_ref() {
            let Some(seq) = ev["seq"].as_u64() else {
                continue;
            };
            if self.driver.waits_its_turn(&ev) {
                if ev["event"] == "agent.message_queued" {
                    write_frames(batch, self.run.on(&ev), self.after);
                }
                continue;
            }
            write_frames(batch, self.run.on(&ev), self.after);
            if !self.run.ended {
                continue;
            }
            if self.after.is_some_and(|a| FrameId { seq, part: LAST } <= a) {
                // A replayed run the client saw end: the one it asks about starts here.
                self.run = self.run.next();
                continue;
            }
            return true;
        }
        false
    }
}

/// Appends the frames after `after` (all, when None) to `batch`.
fn write_frames(batch: &mut BytesMut, frames: Vec<Frame>, after: Option<FrameId>) {
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
