//! `SendMessage` / `SendStreamingMessage`: a new task in a new or given context (attaching the
//! caller to the context's session, or creating one), or the answer a task waiting for input
//! was waiting for — and how the reply goes out (a stream, the task at once, or once it ends).

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

use super::rpc::{Code, RpcError};
use super::task::{lock, Control, Shared, State, Task};
use super::{driver, history_length, Ctx, Reply};
use crate::agent::Decision;
use crate::llm::{Content, ImageUrl, Part};
use crate::server::door::{self, first_answer};
use crate::session::event::OnBusy;

impl Ctx<'_> {
    /// `SendMessage` / `SendStreamingMessage`: a new task in a new or given context, or the
    /// answer a task waiting for input (an approval) was waiting for.
    pub(super) async fn send(mut self, p: &Value, streaming: bool) -> Result<Reply, RpcError> {
        let msg = p
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| RpcError::params("`message` is required"))?;
        if !matches!(msg["role"].as_str(), Some("ROLE_USER" | "user")) {
            return Err(RpcError::params("`message.role` must be ROLE_USER"));
        }
        if msg["messageId"].as_str().is_none_or(str::is_empty) {
            return Err(RpcError::params("`message.messageId` is required"));
        }
        let parts = msg["parts"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| RpcError::params("`message.parts` must hold at least one part"))?;
        let how = How {
            streaming,
            blocking: !p["configuration"]["returnImmediately"]
                .as_bool()
                .unwrap_or(false),
            history: history_length(&p["configuration"]),
        };
        if let Some(task_id) = msg["taskId"].as_str().filter(|t| !t.is_empty()) {
            let task = self
                .tasks()
                .get(task_id, self.client.user())
                .ok_or_else(RpcError::task_not_found)?;
            let (first, rx) = answer_input(&task, parts, msg)?;
            return reply(&task, first, rx, how).await;
        }
        let content = content(parts)?;
        let sessions = self.deps.sessions.clone();
        let (session_id, context_id) = self
            .attach(msg["contextId"].as_str(), &p["metadata"]["agent_config"])
            .await?;
        // What is numbered so far is not this task's: the previous task's `agent.ready` may
        // still be held for the store's commit when its client, told COMPLETED, sends this.
        let floor = sessions.newest_seq(&self.client, &session_id).unwrap_or(0);
        let mut user = msg.clone();
        let task_id = uuid::Uuid::new_v4().to_string();
        user["contextId"] = context_id.clone().into();
        user["taskId"] = task_id.clone().into();
        let (task, control) = Task::new(
            task_id,
            context_id,
            session_id.clone(),
            self.client.user().cloned(),
            user,
        );
        let task: Shared = Arc::new(std::sync::Mutex::new(task));
        let (first, rx) = {
            let t = lock(&task);
            (json!({"task": t.to_json(None)}), t.updates.subscribe())
        };
        sessions
            .message(
                &self.client,
                &session_id,
                content,
                (Some(OnBusy::Reject), None),
            )
            .await;
        let (started, began) = oneshot::channel();
        tokio::spawn(driver::drive(
            sessions,
            (self.client, self.out),
            task.clone(),
            control,
            (started, floor),
        ));
        began
            .await
            .unwrap_or_else(|_| Err(RpcError::new(Code::Internal, "the run could not start")))?;
        self.tasks.insert(task.clone());
        reply(&task, first, rx, how).await
    }

    /// Attaches the caller to context `context` (its session), or to a new session; returns
    /// the session's id and the context id.
    async fn attach(
        &mut self,
        context: Option<&str>,
        agent_config: &Value,
    ) -> Result<(String, String), RpcError> {
        let sessions = self.deps.sessions.clone();
        let anonymous = self.client.principal.is_none();
        let config = agent_config.as_object().cloned();
        let Some(c) = context.filter(|c| !c.is_empty()) else {
            sessions
                .create(&mut self.client, Some(&self.agent), config)
                .await;
            let v = first_answer(&self.out);
            let (Some(sid), Some(token)) = (v["session_id"].as_str(), v["resume_token"].as_str())
            else {
                return Err(refused(&v, "message"));
            };
            let context = if anonymous {
                format!("{sid}.{token}")
            } else {
                sid.to_owned()
            };
            return Ok((sid.to_owned(), context));
        };
        let sid = c.split_once('.').map_or(c, |(s, _)| s);
        if let Some(running) = self.tasks().running_in(sid) {
            let id = lock(&running).id.clone();
            return Err(RpcError::new(
                Code::Unsupported,
                format!(
                    "Context {c} has a running task ({id}): wait for it, answer it or cancel it"
                ),
            ));
        }
        let agent = Some(self.agent.as_str());
        let opened = door::open(
            &sessions,
            &mut self.client,
            &self.out,
            c,
            (agent, config),
            u64::MAX,
        )
        .await
        .map_err(|v| refused(&v, "contextId"))?;
        Ok((opened.session_id, c.to_owned()))
    }
}

/// The engine's refusal (an `agent.error`) as A2A's.
fn refused(v: &Value, what: &str) -> RpcError {
    match v["code"].as_str() {
        Some("session_not_found") => {
            RpcError::params(format!("Unknown {what}: no such context (or not yours)"))
        }
        Some("invalid_field") if what == "contextId" => {
            RpcError::params("Unknown contextId: no such context (or not yours)")
        }
        Some("invalid_field") => RpcError::params(
            v["error"]
                .as_str()
                .unwrap_or("invalid agent_config")
                .to_owned(),
        ),
        Some(code) => RpcError::new(
            Code::Unsupported,
            format!("{code}: {}", v["error"].as_str().unwrap_or("")),
        ),
        None => RpcError::new(Code::Internal, "the session could not be opened"),
    }
}

/// How a send is answered (`SendStreamingMessage`; `returnImmediately`; `historyLength`).
#[derive(Clone, Copy)]
struct How {
    streaming: bool,
    blocking: bool,
    history: Option<usize>,
}

/// A message to a task waiting for input: the approval decision it waits for, handed to the
/// task's driver. Returns the task as it goes on and its updates from there.
fn answer_input(
    task: &Shared,
    parts: &[Value],
    msg: &Value,
) -> Result<(Value, broadcast::Receiver<Value>), RpcError> {
    let (first, rx) = {
        let mut t = lock(task);
        if t.state.terminal() {
            return Err(RpcError::new(
                Code::Unsupported,
                format!("Task {} is in terminal state: {}", t.id, t.state.as_str()),
            ));
        }
        let Some(pending) = t
            .pending
            .clone()
            .filter(|_| t.state == State::InputRequired)
        else {
            return Err(RpcError::new(
                Code::Unsupported,
                format!("Task {} is working, not waiting for input", t.id),
            ));
        };
        let decision = decision(parts).ok_or_else(|| RpcError::params(format!(
            "Task {} waits for a decision on calling `{}`: reply `approve` or `deny` (a reason may follow), or a data part {{\"approved\": true|false}}",
            t.id, pending.tool)))?;
        let mut m = msg.clone();
        m["contextId"] = t.context_id.clone().into();
        t.history.push(m);
        let _ = t.control.send(Control::Decide {
            step_id: pending.step_id,
            decision,
        });
        // The answer is given: the task works again (the stream starts from there).
        t.pending = None;
        t.set_state(State::Working, None);
        (json!({"task": t.to_json(None)}), t.updates.subscribe())
    };
    Ok((first, rx))
}

/// The answer to a send: the stream, the task at once, or the task once it ends or needs input.
async fn reply(
    task: &Shared,
    first: Value,
    mut rx: broadcast::Receiver<Value>,
    how: How,
) -> Result<Reply, RpcError> {
    if how.streaming {
        return Ok(Reply::Stream(first, rx));
    }
    if how.blocking {
        while !lock(task).state.final_for_streams() {
            if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                break;
            }
        }
    }
    Ok(Reply::Json(
        json!({"task": lock(task).to_json(how.history)}),
    ))
}

/// A message's parts as the model's input: text, and images by URL or inline bytes.
fn content(parts: &[Value]) -> Result<Content, RpcError> {
    let mut out = Vec::new();
    for part in parts {
        let media = part["mediaType"].as_str().unwrap_or("");
        if let Some(t) = part["text"].as_str() {
            out.push(Part::Text { text: t.to_owned() });
        } else if let (Some(url), true) = (part["url"].as_str(), media.starts_with("image/")) {
            out.push(Part::ImageUrl {
                image_url: ImageUrl {
                    url: url.to_owned(),
                    detail: None,
                },
            });
        } else if let (Some(raw), true) = (part["raw"].as_str(), media.starts_with("image/")) {
            out.push(Part::ImageUrl {
                image_url: ImageUrl {
                    url: format!("data:{media};base64,{raw}"),
                    detail: None,
                },
            });
        } else {
            return Err(RpcError::new(
                Code::ContentType,
                "Only text parts and images (url or raw with an image/* mediaType) are supported",
            ));
        }
    }
    Ok(match out.as_slice() {
        [Part::Text { text }] => Content::Text(text.clone()),
        _ => Content::Parts(out),
    })
}

/// An approval decision in a message: a data part `{approved, reason}`, or text starting with
/// approve/yes or deny/no (the rest is the reason).
fn decision(parts: &[Value]) -> Option<Decision> {
    for p in parts {
        if let Some(approved) = p["data"]["approved"].as_bool() {
            let reason = p["data"]["reason"].as_str().map(str::to_owned);
            return Some(Decision { approved, reason });
        }
    }
    let text: String = parts
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let word = word
        .trim_end_matches(['.', '!', ',', ':'])
        .to_ascii_lowercase();
    let approved = match word.as_str() {
        "approve" | "approved" | "yes" | "y" | "ok" | "allow" => true,
        "deny" | "denied" | "no" | "n" | "reject" => false,
        _ => return None,
    };
    let reason = Some(rest.trim().to_owned()).filter(|r| !r.is_empty());
    Some(Decision { approved, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_come_from_words_or_data() {
        let t = |s: &str| decision(&[json!({"text": s})]);
        assert_eq!(t("approve").map(|d| d.approved), Some(true));
        assert_eq!(
            t("Deny: not today").map(|d| (d.approved, d.reason)),
            Some((false, Some("not today".into())))
        );
        assert!(t("maybe").is_none());
        let d = decision(&[json!({"data": {"approved": false, "reason": "no"}})]).unwrap();
        assert_eq!((d.approved, d.reason.as_deref()), (false, Some("no")));
    }

    #[test]
    fn parts_become_content() {
        assert_eq!(
            content(&[json!({"text": "hi"})]).unwrap(),
            Content::Text("hi".into())
        );
        let c = content(&[
            json!({"text": "see"}),
            json!({"url": "https://x/y.png", "mediaType": "image/png"}),
        ])
        .unwrap();
        assert!(matches!(c, Content::Parts(ref p) if p.len() == 2));
        assert_eq!(
            content(&[json!({"url": "https://x/y.pdf", "mediaType": "application/pdf"})])
                .unwrap_err()
                .code,
            Code::ContentType
        );
    }
}
