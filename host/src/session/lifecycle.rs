//! Shutdown signals and task tracking (mini-redis's detect → tell → wait, see `server::run`).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Default)]
pub struct Lifecycle {
    /// Cancelled first on shutdown: stop accepting, refuse upgrades, cancel runs.
    pub shutdown: CancellationToken,
    /// Cancelled once runs have wound down: connections flush and close with 1001.
    pub close_all: CancellationToken,
    /// Agent runs and other session work; waited for on shutdown.
    pub runs: TaskTracker,
    /// Connection tasks; waited for on shutdown.
    pub conns: TaskTracker,
}
