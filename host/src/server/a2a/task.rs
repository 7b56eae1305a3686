//! A2A tasks as this door keeps them: one task per run of a session (a context), its state, the
//! answer streamed into one artifact, its messages — and the updates its driver publishes to
//! whoever streams it. The table is in this host's memory and bounded ([`MAX_TASKS`]: the oldest
//! finished tasks go first); the conversation itself is the session's, kept by the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::agent::Decision;
use crate::time::Timestamp;

/// Tasks kept, at most.
pub(crate) const MAX_TASKS: usize = 10_000;
/// Updates buffered per task for a slow stream (it ends, and can subscribe again).
const UPDATES_BUFFERED: usize = 1024;

/// A task's state, as A2A names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Submitted,
    Working,
    InputRequired,
    Completed,
    Failed,
    Canceled,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Submitted => "TASK_STATE_SUBMITTED",
            State::Working => "TASK_STATE_WORKING",
            State::InputRequired => "TASK_STATE_INPUT_REQUIRED",
            State::Completed => "TASK_STATE_COMPLETED",
            State::Failed => "TASK_STATE_FAILED",
            State::Canceled => "TASK_STATE_CANCELED",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<State> {
        [
            State::Submitted,
            State::Working,
            State::InputRequired,
            State::Completed,
            State::Failed,
            State::Canceled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub(crate) fn terminal(self) -> bool {
        matches!(self, State::Completed | State::Failed | State::Canceled)
    }

    /// A stream of the task ends after an update to this state.
    pub(crate) fn final_for_streams(self) -> bool {
        self.terminal() || self == State::InputRequired
    }
}

/// What a task's driver is asked to do by later calls.
#[derive(Debug)]
pub(crate) enum Control {
    Cancel,
    Decide { step_id: String, decision: Decision },
}

/// The tool call a task waits on (INPUT_REQUIRED).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub step_id: String,
    pub tool: String,
    pub args: Value,
}

/// One task.
pub(crate) struct Task {
    pub id: String,
    /// The A2A context id (the session, and on an anonymous host its resume token).
    pub context_id: String,
    pub session_id: String,
    /// The principal that may see it (None: anonymous host).
    pub owner: Option<Arc<str>>,
    pub state: State,
    /// The status message (the answer, an error, what waits for input).
    pub status_message: Option<Value>,
    pub status_at: Timestamp,
    /// The messages of the task: the user's, then the agent's final one.
    pub history: Vec<Value>,
    /// The answer so far (the artifact's text).
    pub answer: String,
    pub pending: Option<Pending>,
    /// The run's usage (`agent.usage`), once known.
    pub usage: Option<Value>,
    pub updates: broadcast::Sender<Value>,
    pub control: mpsc::UnboundedSender<Control>,
}

/// A task shared between its driver and the calls about it.
pub(crate) type Shared = Arc<Mutex<Task>>;

pub(crate) fn lock(t: &Shared) -> MutexGuard<'_, Task> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl Task {
    pub(crate) fn new(
        id: String,
        context_id: String,
        session_id: String,
        owner: Option<Arc<str>>,
        user_message: Value,
    ) -> (Task, mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = mpsc::unbounded_channel();
        let task = Task {
            id,
            context_id,
            session_id,
            owner,
            state: State::Submitted,
            status_message: None,
            status_at: Timestamp::now(),
            history: vec![user_message],
            answer: String::new(),
            pending: None,
            usage: None,
            updates: broadcast::channel(UPDATES_BUFFERED).0,
            control,
        };
        (task, rx)
    }

    /// The task as A2A's `Task` object, with at most `history` messages of its history.
    pub(crate) fn to_json(&self, history: Option<usize>) -> Value {
        let mut status =
            json!({"state": self.state.as_str(), "timestamp": self.status_at.as_str()});
        if let Some(m) = &self.status_message {
            status["message"] = m.clone();
        }
        let mut t = json!({"id": self.id, "contextId": self.context_id, "status": status});
        if !self.answer.is_empty() {
            t["artifacts"] = json!([self.artifact(&self.answer)]);
        }
        let keep = history.unwrap_or(usize::MAX).min(self.history.len());
        if keep > 0 {
            t["history"] = Value::Array(self.history[self.history.len() - keep..].to_vec());
        }
        if let Some(u) = &self.usage {
            t["metadata"] = json!({"usage": u});
        }
        t
    }

    pub(crate) fn artifact(&self, text: &str) -> Value {
        json!({"artifactId": format!("{}-answer", self.id), "name": "answer", "parts": [{"text": text}]})
    }

    /// A message of the agent in this task (status messages, the answer).
    pub(crate) fn agent_message(&self, text: &str, metadata: Option<Value>) -> Value {
        let mut m = json!({
            "messageId": uuid::Uuid::new_v4().to_string(),
            "contextId": self.context_id,
            "taskId": self.id,
            "role": "ROLE_AGENT",
            "parts": [{"text": text}],
        });
        if let Some(md) = metadata {
            m["metadata"] = md;
        }
        m
    }

    /// Moves to `state` with `message` and publishes the status update.
    pub(crate) fn set_state(&mut self, state: State, message: Option<Value>) {
        self.state = state;
        self.status_message = message;
        self.status_at = Timestamp::now();
        let mut status = json!({"state": state.as_str(), "timestamp": self.status_at.as_str()});
        if let Some(m) = &self.status_message {
            status["message"] = m.clone();
        }
        let mut update = json!({"taskId": self.id, "contextId": self.context_id, "status": status});
        if let Some(u) = self.usage.as_ref().filter(|_| state.terminal()) {
            update["metadata"] = json!({"usage": u});
        }
        self.publish(json!({ "statusUpdate": update }));
    }

    /// Publishes a piece of the answer (`append`: after the earlier pieces; else it replaces
    /// them) — `last`: the answer is whole.
    pub(crate) fn answer_piece(&mut self, text: &str, append: bool, last: bool) {
        if append {
            self.answer.push_str(text);
        } else {
            self.answer = text.to_owned();
        }
        let mut update = json!({"taskId": self.id, "contextId": self.context_id, "artifact": self.artifact(text)});
        if append {
            update["append"] = true.into();
        }
        if last {
            update["lastChunk"] = true.into();
        }
        self.publish(json!({ "artifactUpdate": update }));
    }

    fn publish(&self, update: Value) {
        let _ = self.updates.send(update); // nobody streaming: fine
    }
}

/// Every task this door knows, by id.
#[derive(Default)]
pub(crate) struct Tasks {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Shared>,
    /// Ids oldest first (for eviction and listing).
    order: VecDeque<String>,
}

impl Tasks {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `task`; past [`MAX_TASKS`] the oldest finished ones are forgotten.
    pub(crate) fn insert(&self, task: Shared) {
        let id = lock(&task).id.clone();
        let mut t = self.table();
        t.by_id.insert(id.clone(), task);
        t.order.push_back(id);
        while t.by_id.len() > MAX_TASKS {
            let Some(pos) = t.order.iter().position(|id| {
                t.by_id
                    .get(id)
                    .is_none_or(|task| lock(task).state.terminal())
            }) else {
                break; // every task still runs: they are bounded by the session caps
            };
            if let Some(old) = t.order.remove(pos) {
                t.by_id.remove(&old);
            }
        }
    }

    /// Task `id` if `owner` may see it.
    pub(crate) fn get(&self, id: &str, owner: Option<&Arc<str>>) -> Option<Shared> {
        let task = self.table().by_id.get(id).cloned()?;
        let mine = lock(&task).owner.as_ref() == owner;
        mine.then_some(task)
    }

    /// `owner`'s tasks, newest first, that `keep` accepts.
    pub(crate) fn list(
        &self,
        owner: Option<&Arc<str>>,
        keep: impl Fn(&Task) -> bool,
    ) -> Vec<Shared> {
        self.newest(|t| t.owner.as_ref() == owner && keep(t), usize::MAX)
    }

    /// The running task of session `session_id`, if any.
    pub(crate) fn running_in(&self, session_id: &str) -> Option<Shared> {
        self.newest(|t| t.session_id == session_id && !t.state.terminal(), 1)
            .pop()
    }

    /// Up to `n` tasks `keep` accepts, newest first.
    fn newest(&self, keep: impl Fn(&Task) -> bool, n: usize) -> Vec<Shared> {
        let t = self.table();
        t.order
            .iter()
            .rev()
            .filter_map(|id| t.by_id.get(id))
            .filter(|task| keep(&lock(task)))
            .take(n)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Shared {
        let (t, _) = Task::new(
            id.into(),
            "c".into(),
            "s".into(),
            None,
            json!({"text": "hi"}),
        );
        Arc::new(Mutex::new(t))
    }

    #[test]
    fn a_task_reads_as_a2a_and_streams_its_answer() {
        let t = task("t1");
        let mut rx = lock(&t).updates.subscribe();
        {
            let mut t = lock(&t);
            t.set_state(State::Working, None);
            t.answer_piece("Hel", false, false);
            t.answer_piece("lo", true, false);
        }
        assert_eq!(
            rx.try_recv().unwrap()["statusUpdate"]["status"]["state"],
            "TASK_STATE_WORKING"
        );
        assert!(rx.try_recv().unwrap()["artifactUpdate"]
            .get("append")
            .is_none());
        assert_eq!(rx.try_recv().unwrap()["artifactUpdate"]["append"], true);
        let v = lock(&t).to_json(Some(0));
        assert_eq!(v["artifacts"][0]["parts"][0]["text"], "Hello");
        assert!(v.get("history").is_none());
        assert_eq!(
            lock(&t).to_json(None)["history"].as_array().unwrap().len(),
            1
        );
        assert_eq!(State::parse("TASK_STATE_CANCELED"), Some(State::Canceled));
    }

    #[test]
    fn the_table_forgets_finished_tasks_first() {
        let tasks = Tasks::default();
        let running = task("running");
        tasks.insert(running);
        for i in 0..MAX_TASKS + 5 {
            let t = task(&format!("t{i}"));
            lock(&t).state = State::Completed;
            tasks.insert(t);
        }
        assert!(tasks.get("running", None).is_some());
        assert!(tasks.get("t0", None).is_none());
        assert!(tasks.get(&format!("t{}", MAX_TASKS + 4), None).is_some());
        assert!(tasks.get("running", Some(&Arc::from("alice"))).is_none());
    }
}
