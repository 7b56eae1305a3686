//! The WebSocket event protocol (docs/protocol.md): what clients may send, parsed in one place
//! ([`parse`] → [`ClientMessage`]), and everything the server sends ([`ServerEvent`], with a
//! stable [`ErrorCode`] on every error).
//!
//! **Architecture Invariant:** every server frame is built from a [`ServerEvent`] here (or is a
//! plugin's own custom event); no other module writes event JSON by hand.

use serde_json::{Map, Value};

use crate::llm::Content;

mod fields;
use fields::{
    agent_config, approved, capabilities, content, last_seq, list_limit, on_busy, optional_str,
    reason, required_str, traceparent, unknown_event,
};
pub use fields::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, MAX_CONTENT_PARTS, MAX_REASON_CHARS};

// What the server sends is the session engine's own event type; this door encodes nothing
// by hand.
pub use crate::session::event::{
    custom_frame, AgentInfo, AnswerMeta, ApprovalMeta, ErrorCode, FinalMeta, OnBusy, ServedAgent,
    ServerEvent, Serving, ThinkingMeta, ToolCallMeta, ToolResultMeta, MAX_EVENT_BYTES,
};

/// A message from a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `agent_config`: the session's own settings, checked against the plugin's limits.
    CreateSession {
        /// Which of the served agents (None: the first).
        agent: Option<String>,
        agent_config: Option<Map<String, Value>>,
        /// The client can decide tool approvals (`capabilities: ["tool_approval"]`).
        approves: bool,
    },
    Message {
        session_id: String,
        /// Text, or OpenAI content parts (text and images).
        content: Content,
        /// What to do if a run is active (`None`: the server's default).
        on_busy: Option<OnBusy>,
        /// The message's trace (`metadata.traceparent`).
        trace: Option<crate::otel::TraceParent>,
    },
    Cancel {
        session_id: String,
    },
    Resume {
        session_id: String,
        /// Required when anonymous; an authenticated principal may resume its own sessions
        /// without it.
        resume_token: Option<String>,
        last_seq: u64,
        approves: bool,
    },
    /// The principal's sessions, newest first: at most `limit`, after the cursor `before`.
    ListSessions {
        limit: usize,
        before: Option<String>,
    },
    /// Removes one of the principal's sessions and its stored events.
    DeleteSession {
        session_id: String,
    },
    CloseSession {
        session_id: String,
    },
    GetHistory {
        session_id: String,
    },
    /// A person's decision on a tool call that waits for approval.
    ToolApproval {
        session_id: String,
        step_id: String,
        approved: bool,
        reason: Option<String>,
    },
    /// An event under the plugin's custom prefix, passed to its hook.
    Custom {
        session_id: String,
        event: Value,
    },
}

/// Why a client message was refused. `code` is stable for programs; the text is for people.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The session the message named, when it could be read.
    pub session_id: Option<String>,
}

impl ProtocolError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            session_id: None,
        }
    }
}

/// A parsed message plus the optional `token` field (authentication on the first message).
pub struct Parsed {
    pub message: ClientMessage,
    pub token: Option<String>,
}

/// Parses one text frame. `custom_prefix` is the plugin's declared event prefix, if any.
pub fn parse(text: &str, custom_prefix: Option<&str>) -> Result<Parsed, ProtocolError> {
    parse_for(text, custom_prefix.as_slice())
}

/// [`parse`] for a host serving several agents: an event under any of their prefixes is a
/// custom event (for the agent of the session it names).
pub fn parse_for(text: &str, custom_prefixes: &[&str]) -> Result<Parsed, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, format!("Invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            "A message must be a JSON object with an `event` field",
        ));
    };
    let token = obj.get("token").and_then(Value::as_str).map(str::to_owned);
    let event = event_name(&obj)?;
    // Errors about a message that names its session say which session.
    let session_id = obj.get("session_id").and_then(Value::as_str);
    let message = message(&obj, event, custom_prefixes).map_err(|mut e| {
        if e.session_id.is_none() {
            e.session_id = session_id.map(str::to_owned);
        }
        e
    })?;
    Ok(Parsed { message, token })
}

fn event_name(obj: &Map<String, Value>) -> Result<&str, ProtocolError> {
    match obj.get("event") {
        Some(Value::String(e)) => Ok(e.as_str()),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            "Field `event` must be a string",
        )),
        None => Err(ProtocolError::new(
            ErrorCode::MissingEvent,
            "Missing field `event`",
        )),
    }
}

/// One message of type `event`: one arm per event, its fields read by the helpers below.
fn message(
    obj: &Map<String, Value>,
    event: &str,
    custom_prefixes: &[&str],
) -> Result<ClientMessage, ProtocolError> {
    let session = || required_str(obj, event, "session_id");
    Ok(match event {
        "user.create_session" => ClientMessage::CreateSession {
            agent: optional_str(obj, event, "agent")?,
            agent_config: agent_config(obj)?,
            approves: capabilities(obj)?.contains(&"tool_approval"),
        },
        "user.message" => ClientMessage::Message {
            session_id: session()?,
            content: content(obj)?,
            on_busy: on_busy(obj)?,
            trace: traceparent(obj)?,
        },
        "user.cancel" => ClientMessage::Cancel {
            session_id: session()?,
        },
        "user.close_session" => ClientMessage::CloseSession {
            session_id: session()?,
        },
        "user.get_history" => ClientMessage::GetHistory {
            session_id: session()?,
        },
        "user.resume_session" => ClientMessage::Resume {
            session_id: session()?,
            resume_token: optional_str(obj, event, "resume_token")?,
            last_seq: last_seq(obj)?,
            approves: capabilities(obj)?.contains(&"tool_approval"),
        },
        "user.list_sessions" => ClientMessage::ListSessions {
            limit: list_limit(obj)?,
            before: optional_str(obj, event, "before")?,
        },
        "user.delete_session" => ClientMessage::DeleteSession {
            session_id: session()?,
        },
        "user.tool_approval" => ClientMessage::ToolApproval {
            session_id: session()?,
            step_id: required_str(obj, event, "step_id")?,
            approved: approved(obj)?,
            reason: reason(obj)?,
        },
        other
            if custom_prefixes
                .iter()
                .any(|p| !p.is_empty() && other.starts_with(p)) =>
        {
            ClientMessage::Custom {
                session_id: session()?,
                event: Value::Object(obj.clone()),
            }
        }
        other => return Err(unknown_event(other, custom_prefixes)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documents_messages() {
        let p = parse(r#"{"event":"user.create_session","timestamp":1}"#, None).unwrap();
        assert_eq!(
            p.message,
            ClientMessage::CreateSession {
                agent: None,
                agent_config: None,
                approves: false
            }
        );
        let p = parse(r#"{"event":"user.create_session","agent":"billing"}"#, None).unwrap();
        assert!(
            matches!(p.message, ClientMessage::CreateSession { agent: Some(a), .. } if a == "billing")
        );
        let p = parse(
            r#"{"event":"user.create_session","capabilities":["tool_approval","future"]}"#,
            None,
        )
        .unwrap();
        assert!(matches!(
            p.message,
            ClientMessage::CreateSession { approves: true, .. }
        ));
        let e = parse(
            r#"{"event":"user.create_session","capabilities":"all"}"#,
            None,
        );
        assert_eq!(e.err().unwrap().code, ErrorCode::InvalidField);
        let p = parse(
            r#"{"event":"user.message","session_id":"s","content":"hi","timestamp":1}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            p.message,
            ClientMessage::Message {
                session_id: "s".into(),
                content: Content::Text("hi".into()),
                on_busy: None,
                trace: None,
            }
        );
        // A message's own trace context; an invalid one is ignored (W3C), a non-string refused.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |meta: &str| {
            parse(
                &format!(
                    r#"{{"event":"user.message","session_id":"s","content":"hi","metadata":{meta}}}"#
                ),
                None,
            )
        };
        let p = with(&format!(r#"{{"traceparent":"{tp}"}}"#)).unwrap();
        assert!(
            matches!(p.message, ClientMessage::Message { trace: Some(t), .. } if t.header() == tp)
        );
        let p = with(r#"{"traceparent":"nonsense"}"#).unwrap();
        assert!(matches!(
            p.message,
            ClientMessage::Message { trace: None, .. }
        ));
        assert_eq!(
            with(r#"{"traceparent":7}"#).err().unwrap().code,
            ErrorCode::InvalidField
        );
        // The design's Python client sends an ISO timestamp; both forms are fine.
        let p = parse(
            r#"{"event":"user.message","session_id":"s","content":"hi","timestamp":"2026-11-30T09:30:00.123456","on_busy":"enqueue"}"#,
            None,
        )
        .unwrap();
        assert!(matches!(
            p.message,
            ClientMessage::Message {
                on_busy: Some(OnBusy::Enqueue),
                ..
            }
        ));
        let e = parse(
            r#"{"event":"user.message","session_id":"s","content":"hi","on_busy":"later"}"#,
            None,
        )
        .err()
        .unwrap();
        assert_eq!(
            (e.code, e.session_id.as_deref()),
            (ErrorCode::InvalidField, Some("s"))
        );
        // Content parts: text and images by data URL or web URL; anything else is refused.
        let ok = r#"{"event":"user.message","session_id":"s","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"low"}},{"type":"image_url","image_url":{"url":"https://example.com/a.jpg"}}]}"#;
        assert!(
            matches!(parse(ok, None).unwrap().message, ClientMessage::Message { content: Content::Parts(p), .. } if p.len() == 3)
        );
        for bad in [
            r#"[]"#,
            r#"[{"type":"audio","data":"x"}]"#,
            r#"[{"type":"text"}]"#,
            r#"[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]"#,
            r#"[{"type":"image_url","image_url":{"url":"data:text/html;base64,PGI+"}}]"#,
            r#"[{"type":"image_url","image_url":{"url":"data:image/png;base64,a b"}}]"#,
            r#"[{"type":"image_url","image_url":{"url":"https://x/y","detail":"max"}}]"#,
        ] {
            let text = format!(r#"{{"event":"user.message","session_id":"s","content":{bad}}}"#);
            let e = parse(&text, None)
                .err()
                .unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(e.code, ErrorCode::InvalidField, "{bad}: {}", e.message);
        }
        let p = parse(r#"{"event":"user.cancel","session_id":"s"}"#, None).unwrap();
        assert_eq!(
            p.message,
            ClientMessage::Cancel {
                session_id: "s".into()
            }
        );
    }

    #[test]
    fn tool_approvals_need_a_step_and_a_boolean() {
        let p = parse(
            r#"{"event":"user.tool_approval","session_id":"s","step_id":"step1-0-c","approved":false,"reason":"not to them"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            p.message,
            ClientMessage::ToolApproval {
                session_id: "s".into(),
                step_id: "step1-0-c".into(),
                approved: false,
                reason: Some("not to them".into()),
            }
        );
        for (bad, code) in [
            (r#""step_id":"x""#, ErrorCode::MissingField),
            (r#""step_id":"x","approved":"yes""#, ErrorCode::InvalidField),
            (r#""approved":true"#, ErrorCode::MissingField),
            (
                r#""step_id":"x","approved":true,"reason":7"#,
                ErrorCode::InvalidField,
            ),
        ] {
            let text = format!(r#"{{"event":"user.tool_approval","session_id":"s",{bad}}}"#);
            let e = parse(&text, None).err().unwrap();
            assert_eq!(
                (e.code, e.session_id.as_deref()),
                (code, Some("s")),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_input_names_the_problem() {
        assert_eq!(
            parse("{nope", None).err().unwrap().code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            parse("[1]", None).err().unwrap().code,
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            parse("{}", None).err().unwrap().code,
            ErrorCode::MissingEvent
        );
        let e = parse(r#"{"event":"user.dance"}"#, None).err().unwrap();
        assert_eq!(e.code, ErrorCode::UnknownEvent);
        assert!(e.message.contains("user.dance"));
        let e = parse(r#"{"event":"user.message","session_id":"s"}"#, None)
            .err()
            .unwrap();
        assert_eq!(
            (e.code, e.session_id.as_deref()),
            (ErrorCode::MissingField, Some("s"))
        );
        assert!(e.message.contains("content"));
        assert_eq!(
            parse(
                r#"{"event":"user.message","session_id":5,"content":"x"}"#,
                None
            )
            .err()
            .unwrap()
            .code,
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn custom_events_need_the_plugin_prefix() {
        let p = parse(
            r#"{"event":"weather.ping","session_id":"s"}"#,
            Some("weather."),
        )
        .unwrap();
        assert!(matches!(p.message, ClientMessage::Custom { .. }));
        assert_eq!(
            parse(r#"{"event":"weather.ping","session_id":"s"}"#, None)
                .err()
                .unwrap()
                .code,
            ErrorCode::UnknownEvent
        );
    }
}
