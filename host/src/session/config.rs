//! How sessions behave: caps, resume, replay, double texting. No `Default`: the CLI's
//! `args.rs` holds each default once.

use std::time::Duration;

use super::event::OnBusy;

/// Sessions: caps, resume, replay.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Sessions alive at once (attached or waiting for a resume), over all clients.
    pub max_sessions: usize,
    /// Sessions per client address at most (0: no limit).
    pub max_sessions_per_ip: usize,
    pub max_sessions_per_connection: usize,
    /// Bytes of past events kept per session for resume (with per-event overhead).
    pub replay_buffer_bytes: usize,
    /// Bytes of past events kept by all sessions together.
    pub replay_budget_bytes: usize,
    /// How long a session (and its run) outlives its connection, waiting for a resume.
    pub resume_window: Duration,
    /// Double texting: what a message does while its session runs, unless it says (`on_busy`).
    pub on_busy: OnBusy,
}
