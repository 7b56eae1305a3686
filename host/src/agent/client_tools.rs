//! Tools the session's client runs itself (AG-UI's frontend tools): offered to the model
//! beside the plugin's, for the runs the client asks for. When the model calls one, the call
//! waits here — like a call waiting for approval — until the client sends its result
//! ([`ClientTools::deliver`]), the approval timeout passes, or the run is cancelled.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::llm::ToolSpec;

#[derive(Default)]
pub struct ClientTools {
    offered: Mutex<Vec<ToolSpec>>,
    waiting: Mutex<Vec<(String, oneshot::Sender<String>)>>,
}

/// No call with that id waits for a client's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWaiting;

impl ClientTools {
    /// The tools the client offers from now on (replacing what it offered before).
    pub fn offer(&self, tools: Vec<ToolSpec>) {
        *self.offered.lock().unwrap_or_else(|p| p.into_inner()) = tools;
    }

    /// The tools on offer.
    pub fn offered(&self) -> Vec<ToolSpec> {
        self.offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `name` is the client's to run.
    pub fn runs(&self, name: &str) -> bool {
        self.offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|t| t.name == name)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<(String, oneshot::Sender<String>)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `timeout`) for the client's result of call `step_id`; None if none came.
    /// A cancelled run drops the wait, which withdraws the call.
    pub async fn result_of(&self, step_id: &str, timeout: Duration) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.waiting().push((step_id.to_owned(), tx));
        let _withdraw = Withdraw(self, step_id);
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// The client's result of call `step_id`.
    pub fn deliver(&self, step_id: &str, result: String) -> Result<(), NotWaiting> {
        let mut waiting = self.waiting();
        let i = waiting
            .iter()
            .position(|(id, _)| id == step_id)
            .ok_or(NotWaiting)?;
        let (_, tx) = waiting.remove(i);
        tx.send(result).map_err(|_| NotWaiting)
    }

    /// The calls waiting for a result now.
    pub fn pending(&self) -> Vec<String> {
        self.waiting().iter().map(|(id, _)| id.clone()).collect()
    }
}

struct Withdraw<'a>(&'a ClientTools, &'a str);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.0.waiting().retain(|(id, _)| id != self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_result_reaches_the_waiting_call_once() {
        let t = std::sync::Arc::new(ClientTools::default());
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.result_of("s1", Duration::from_secs(5)).await })
        };
        while t.pending().is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(t.deliver("nope", "x".into()), Err(NotWaiting));
        assert_eq!(t.deliver("s1", "42".into()), Ok(()));
        assert_eq!(waiter.await.unwrap().as_deref(), Some("42"));
        assert!(t.pending().is_empty());
        assert_eq!(t.deliver("s1", "again".into()), Err(NotWaiting));
    }
}
