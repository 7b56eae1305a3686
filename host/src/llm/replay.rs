//! Record and replay of model exchanges, so agents can be demoed and tested with no key and no
//! network. A recording is JSON lines: `{"request": {"messages": [...]}, "response": {...}}`.
//!
//! Replay matches a request by its messages exactly (roles, text, tool calls and their ids) and
//! streams the recorded answer back in small pieces. An unrecorded request is an error naming
//! the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ChatMessage, ChatRequest, ChatResponse, Delta, LlmError, OnDelta};
use crate::journal::{Journal, WhenFull};

#[derive(Serialize, Deserialize)]
struct Exchange {
    request: RecordedRequest,
    response: ChatResponse,
}

#[derive(Serialize, Deserialize)]
struct RecordedRequest {
    #[serde(default)]
    model: String,
    messages: Vec<ChatMessage>,
}

fn key(messages: &[ChatMessage]) -> String {
    serde_json::to_string(messages).unwrap_or_default()
}

/// Appends every successful exchange to a file.
pub struct Recorder {
    journal: Journal,
}

impl Recorder {
    /// Opens (appends to) `path`, created 0600; past `max_bytes` recording stops (a recording
    /// cut in the middle of a rotation would not replay).
    pub fn create(path: &Path, max_bytes: u64) -> std::io::Result<Recorder> {
        Ok(Recorder {
            journal: Journal::create(path, max_bytes, WhenFull::Stop)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.journal.path()
    }

    pub fn record(&self, req: &ChatRequest, resp: &ChatResponse) {
        let ex = Exchange {
            request: RecordedRequest {
                model: req.model.clone(),
                messages: req.messages.clone(),
            },
            response: resp.clone(),
        };
        self.journal
            .append(&serde_json::to_string(&ex).unwrap_or_default());
    }
}

/// Answers from a recording.
pub struct ReplayModel {
    path: PathBuf,
    answers: HashMap<String, ChatResponse>,
    /// The opening user messages of the recorded conversations, to suggest on a miss.
    questions: Vec<String>,
    /// Pause between streamed pieces, so replay looks like a live model.
    piece_delay: Duration,
}

impl ReplayModel {
    pub fn open(path: &Path, piece_delay: Duration) -> Result<ReplayModel, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read recording {}: {e}", path.display()))?;
        let mut answers = HashMap::new();
        let mut questions: Vec<String> = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let ex: Exchange = serde_json::from_str(line).map_err(|e| {
                format!("{}:{}: not a recorded exchange: {e}", path.display(), n + 1)
            })?;
            let first_user = ex
                .request
                .messages
                .iter()
                .find(|m| m.role == super::Role::User);
            if let Some(q) = first_user.and_then(|m| m.text()).map(|t| t.into_owned()) {
                if !questions.contains(&q) {
                    questions.push(q);
                }
            }
            answers.insert(key(&ex.request.messages), ex.response);
        }
        Ok(ReplayModel {
            path: path.to_owned(),
            answers,
            questions,
            piece_delay,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "replay of {} ({} recorded answers)",
            self.path.display(),
            self.answers.len()
        )
    }

    pub async fn chat(
        &self,
        req: &ChatRequest,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let Some(resp) = self.answers.get(&key(&req.messages)) else {
            let asked: Vec<String> = self
                .questions
                .iter()
                .take(6)
                .map(|q| format!("{q:?}"))
                .collect();
            return Err(LlmError::Replay(format!(
                "this conversation is not in the recording {} (it answers new sessions asking {}); \
                 set OPENAI_API_KEY to use a live model, or record it with --record",
                self.path.display(),
                asked.join(", ")
            )));
        };
        let mut rest = resp.content.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(6);
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (piece, tail) = rest.split_at(cut);
            on_delta(Delta::Text(piece));
            rest = tail;
            if !self.piece_delay.is_zero() {
                on_delta(Delta::Pause);
                tokio::time::sleep(self.piece_delay).await;
            }
        }
        if !resp.tool_calls.is_empty() {
            on_delta(Delta::ToolCalls);
        }
        Ok(resp.clone())
    }
}
