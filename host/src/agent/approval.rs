//! Human approval of tool calls. A tool needs approval when its plugin says so
//! (`Tool::needs_approval`) or the operator does (`--require-approval`). The run reaches such a
//! call, registers it here ([`Approvals::ask`]) and waits; the client's `user.tool_approval`
//! decides it ([`Approvals::decide`]). Denied, unanswered within the timeout, or the run
//! cancelled meanwhile: the tool does not run.
//!
//! The pending calls belong to the session, not to a connection: a client that reconnects and
//! resumes is told which calls still wait (`agent.session_resumed`'s `pending_approvals`) and
//! can decide them from the new connection.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

/// A person's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub approved: bool,
    /// Why (shown to the model when denied).
    pub reason: Option<String>,
}

/// A call waiting for a decision, as a client that resumes is told about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingApproval {
    pub step_id: String,
    pub tool: String,
    pub args: Value,
    pub step: u32,
}

/// The calls of one session that wait for a decision (rarely more than one: the calls of a
/// step run concurrently, so each may wait at once).
#[derive(Default)]
pub struct Approvals {
    pending: Mutex<Vec<(PendingApproval, oneshot::Sender<Decision>)>>,
    /// The tools the session's client runs itself, and their calls waiting for results.
    pub client: super::client_tools::ClientTools,
    /// The client last attached to the session cannot decide (it did not declare the
    /// `tool_approval` capability): a call that needs approval fails at once instead of waiting.
    no_approver: std::sync::atomic::AtomicBool,
}

/// Why a decision could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPending {
    /// No call with that `step_id` is waiting (never asked, already decided, timed out, or its
    /// run ended).
    Unknown,
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PendingApproval, oneshot::Sender<Decision>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the session's client can decide approvals (set when a client attaches).
    pub fn set_approver(&self, can_decide: bool) {
        self.no_approver
            .store(!can_decide, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a call asked now can be decided by the session's client.
    pub fn has_approver(&self) -> bool {
        !self.no_approver.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers `call` as waiting; the returned [`Ask`] waits for the decision and withdraws
    /// the call when dropped (the run was cancelled) or done.
    pub fn ask(&self, call: PendingApproval) -> Ask<'_> {
        let (tx, rx) = oneshot::channel();
        let step_id = call.step_id.clone();
        self.lock().push((call, tx));
        Ask {
            approvals: self,
            step_id,
            rx,
        }
    }

    /// Delivers a decision to the call `step_id` waits on.
    pub fn decide(&self, step_id: &str, decision: Decision) -> Result<PendingApproval, NotPending> {
        let mut pending = self.lock();
        let i = pending
            .iter()
            .position(|(p, _)| p.step_id == step_id)
            .ok_or(NotPending::Unknown)?;
        let (call, tx) = pending.remove(i);
        // The waiting run may have just timed out; then the decision is moot.
        tx.send(decision).map_err(|_| NotPending::Unknown)?;
        Ok(call)
    }

    /// Whether a call waits for someone outside the run: a decision, or a client tool's result.
    pub fn waiting(&self) -> bool {
        !self.lock().is_empty() || !self.client.pending().is_empty()
    }

    /// The calls waiting now, in the order they were asked.
    pub fn pending(&self) -> Vec<PendingApproval> {
        self.lock().iter().map(|(p, _)| p.clone()).collect()
    }

    fn withdraw(&self, step_id: &str) {
        self.lock().retain(|(p, _)| p.step_id != step_id);
    }
}

/// One call waiting for its decision.
pub struct Ask<'a> {
    approvals: &'a Approvals,
    step_id: String,
    rx: oneshot::Receiver<Decision>,
}

impl Ask<'_> {
    /// The decision, or `None` when none came within `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<Decision> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(d)) => Some(d),
            _ => None,
        }
    }
}

impl Drop for Ask<'_> {
    fn drop(&mut self) {
        self.approvals.withdraw(&self.step_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> PendingApproval {
        PendingApproval {
            step_id: id.into(),
            tool: "send_email".into(),
            args: serde_json::json!({"to": "a@b.c"}),
            step: 1,
        }
    }

    #[tokio::test]
    async fn a_decision_reaches_its_call_once() {
        let a = Approvals::default();
        let ask = a.ask(call("s1"));
        assert_eq!(a.pending(), vec![call("s1")]);
        let yes = Decision {
            approved: true,
            reason: None,
        };
        assert_eq!(a.decide("nope", yes.clone()), Err(NotPending::Unknown));
        assert_eq!(a.decide("s1", yes.clone()), Ok(call("s1")));
        assert_eq!(a.decide("s1", yes.clone()), Err(NotPending::Unknown));
        assert_eq!(ask.wait(Duration::from_secs(1)).await, Some(yes));
        assert!(a.pending().is_empty());
    }

    #[tokio::test]
    async fn an_unanswered_or_dropped_call_is_withdrawn() {
        let a = Approvals::default();
        let ask = a.ask(call("s1"));
        assert_eq!(ask.wait(Duration::from_millis(10)).await, None);
        assert!(a.pending().is_empty());
        let ask = a.ask(call("s2"));
        drop(ask);
        assert!(a.pending().is_empty());
        let no = Decision {
            approved: false,
            reason: None,
        };
        assert_eq!(a.decide("s2", no), Err(NotPending::Unknown));
    }
}
