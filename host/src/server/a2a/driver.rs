//! One task's driver: a client of the session engine, attached to the task's session for as
//! long as the run goes on, that turns the session's events into the task's state, its answer
//! artifact and the updates streamed to A2A clients — and carries later calls about the task
//! (a cancel, an approval decision) to the engine. It ends with the run (`agent.ready`); the
//! session then waits for its next message like any other (`--resume-window`, then the store).

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::rpc::{Code, RpcError};
use super::task::{lock, Control, Pending, Shared, State, Task};
use crate::server::outbox::Outbox;
use crate::session::{Client, Sessions};

/// Whether the message started a run: `Ok` at its first event, or the engine's refusal.
pub(crate) type Started = oneshot::Sender<Result<(), RpcError>>;

/// Drives `task` (whose message was just handed to the engine through `client`) until its run
/// ends. `started` hears first whether the run began; the session's events up to `floor` are
/// not this run's.
pub(crate) async fn drive(
    sessions: Arc<Sessions>,
    (client, out): (Client, Arc<Outbox>),
    task: Shared,
    mut control: mpsc::UnboundedReceiver<Control>,
    (started, floor): (Started, u64),
) {
    let session_id = lock(&task).session_id.clone();
    let mut run = Run {
        started: Some(started),
        pieces: 0,
        floor,
    };
    let close_all = sessions.lifecycle().close_all.clone();
    loop {
        tokio::select! {
            _ = out.wake.notified() => {
                while let Some(frame) = out.pop() {
                    let Ok(event) = serde_json::from_str::<Value>(&frame) else { continue };
                    if run.on(&task, &event) {
                        sessions.release(&client);
                        return;
                    }
                }
            }
            Some(c) = control.recv() => match c {
                Control::Cancel => sessions.cancel(&client, &session_id),
                Control::Decide { step_id, decision } => {
                    lock(&task).pending = None;
                    sessions.approve(&client, &session_id, &step_id, decision);
                }
            },
            _ = close_all.cancelled() => {
                let mut t = lock(&task);
                if !t.state.terminal() {
                    let m = t.agent_message("The host is shutting down; the run was interrupted.", None);
                    t.set_state(State::Failed, Some(m));
                }
                drop(t);
                run.refuse(RpcError::new(Code::Internal, "The host is shutting down"));
                sessions.release(&client);
                return;
            }
        }
    }
}

/// What the driver knows of the run so far.
struct Run {
    /// Taken when the run's first event (or the refusal) arrives.
    started: Option<Started>,
    /// Pieces of the answer published (the first replaces, the others append).
    pieces: usize,
    /// The session's last `seq` before this run's message: what is numbered up to it belongs
    /// to the run before (its `agent.ready`, held for the store, can arrive here first).
    floor: u64,
}

impl Run {
    fn refuse(&mut self, e: RpcError) {
        if let Some(s) = self.started.take() {
            let _ = s.send(Err(e));
        }
    }

    /// Applies one session event to the task; true when the run is over.
    fn on(&mut self, task: &Shared, event: &Value) -> bool {
        let name = event["event"].as_str().unwrap_or("");
        let in_log = event.get("seq").is_some();
        if event["seq"].as_u64().is_some_and(|seq| seq <= self.floor) {
            return false;
        }
        if !in_log {
            // Outside the session's log: answers to the driver's own requests.
            if name == "agent.error" && self.started.is_some() {
                let code = event["code"].as_str().unwrap_or("");
                let text = event["error"].as_str().unwrap_or("refused").to_owned();
                let rpc = match code {
                    "already_running" => RpcError::new(
                        Code::Unsupported,
                        format!("{text}: this context has a running task"),
                    ),
                    "session_not_found" => RpcError::params("Unknown contextId (or not yours)"),
                    _ => RpcError::new(Code::Unsupported, format!("{code}: {text}")),
                };
                self.refuse(rpc);
                return true;
            }
            return false;
        }
        if let Some(s) = self.started.take() {
            let _ = s.send(Ok(()));
        }
        let mut t = lock(task);
        if matches!(t.state, State::Submitted | State::InputRequired) && name != "agent.ready" {
            t.set_state(State::Working, None);
        }
        let text = |k: &str| event[k].as_str().unwrap_or("").to_owned();
        let meta = &event["metadata"];
        match name {
            "agent.tool_call" => {
                let tool = meta["tool"].as_str().unwrap_or("");
                let mut about =
                    json!({"tool": tool, "args": meta["args"], "stepId": event["step_id"]});
                speaker(&mut about, meta);
                let m = t.agent_message(&format!("Calling {tool}"), Some(about));
                t.set_state(State::Working, Some(m));
            }
            "agent.tool_result" => {
                let tool = meta["tool"].as_str().unwrap_or("");
                let mut about =
                    json!({"tool": tool, "status": meta["status"], "stepId": event["step_id"]});
                speaker(&mut about, meta);
                let m = t.agent_message(&text("content"), Some(about));
                t.set_state(State::Working, Some(m));
            }
            "agent.handoff" => {
                let m = t.agent_message(
                    &format!("Handed over to {}", text("to")),
                    Some(json!({"handoff": {"from": event["from"], "to": event["to"],
                        "reason": event["reason"], "stepId": event["step_id"]}})),
                );
                t.set_state(State::Working, Some(m));
            }
            "agent.partial_answer" if meta["reset"] == true => {
                t.answer_piece("", false, false);
                self.pieces = 0;
            }
            "agent.partial_answer" => {
                t.answer_piece(&text("content"), self.pieces > 0, false);
                self.pieces += 1;
            }
            "agent.tool_approval_required" => ask_approval(&mut t, event),
            "agent.usage" => t.usage = Some(event["run"].clone()),
            "agent.final_answer" => answered(&mut t, event),
            "agent.error" => {
                let m = t.agent_message(&text("error"), Some(json!({"code": event["code"]})));
                t.set_state(State::Failed, Some(m));
            }
            "agent.interrupted" if event["reason"] == "host_lost" => {
                let m =
                    t.agent_message("The host running this task stopped before it ended.", None);
                t.set_state(State::Failed, Some(m));
            }
            "agent.interrupted" => t.set_state(State::Canceled, None),
            "agent.ready" => {
                if !t.state.terminal() {
                    t.set_state(State::Completed, None);
                }
                return true;
            }
            _ => {}
        }
        false
    }
}

/// A tool call waits for a person: the task needs input, and says what and how to answer.
fn ask_approval(t: &mut Task, event: &Value) {
    let meta = &event["metadata"];
    let pending = Pending {
        step_id: event["step_id"].as_str().unwrap_or("").to_owned(),
        tool: meta["tool"].as_str().unwrap_or("").to_owned(),
        args: meta["args"].clone(),
    };
    let ask = format!(
        "The agent asks to call `{}` with {}. Reply in this task with `approve` or `deny` (a reason may follow), or a data part {{\"approved\": true|false, \"reason\": \"...\"}}.",
        pending.tool, pending.args
    );
    let m = t.agent_message(
        &ask,
        Some(json!({"stepId": pending.step_id, "tool": pending.tool, "args": pending.args})),
    );
    t.pending = Some(pending);
    t.set_state(State::InputRequired, Some(m));
}

/// The final answer: the artifact made whole (its last piece), the agent's message, completed.
fn answered(t: &mut Task, event: &Value) {
    let answer = event["content"].as_str().unwrap_or("").to_owned();
    if t.answer == answer {
        t.answer_piece("", true, true);
    } else {
        t.answer_piece(&answer, false, true);
    }
    let m = t.agent_message(
        &answer,
        Some(json!({"reason": event["metadata"]["reason"]})),
    );
    t.history.push(m.clone());
    t.set_state(State::Completed, Some(m));
}

/// Which agent a tool event is from (and, in a child run, the asking call), as an A2A
/// message's metadata says it: `agent`, `parentStepId`.
fn speaker(about: &mut Value, meta: &Value) {
    if let Some(agent) = meta["agent"].as_str() {
        about["agent"] = agent.into();
    }
    if let Some(parent) = meta["parent_step_id"].as_str() {
        about["parentStepId"] = parent.into();
    }
}
