//! The fields of client messages, each read and checked in one place: what a wrong value
//! is told (`invalid_field`, `missing_field`) is decided here.

use serde_json::{Map, Value};

use super::{ErrorCode, OnBusy, ProtocolError};
use crate::llm::{Content, ImageUrl, Part};

pub(super) fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidField, message)
}

pub(super) fn agent_config(
    obj: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, ProtocolError> {
    match obj.get("agent_config") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(invalid("Field `agent_config` must be an object")),
    }
}

pub(super) fn on_busy(obj: &Map<String, Value>) -> Result<Option<OnBusy>, ProtocolError> {
    match obj.get("on_busy") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "reject" => Ok(Some(OnBusy::Reject)),
        Some(Value::String(s)) if s == "enqueue" => Ok(Some(OnBusy::Enqueue)),
        Some(Value::String(s)) if s == "interrupt" => Ok(Some(OnBusy::Interrupt)),
        Some(_) => Err(invalid(
            "Field `on_busy` must be \"reject\", \"enqueue\" or \"interrupt\"",
        )),
    }
}

/// `metadata.traceparent` (with `metadata.tracestate`): the message's W3C trace context. A
/// value that is not a valid `traceparent` is ignored, as the W3C recommendation says; one
/// that is not a string is an error.
pub(super) fn traceparent(
    obj: &Map<String, Value>,
) -> Result<Option<crate::otel::TraceParent>, ProtocolError> {
    let Some(meta) = obj.get("metadata").filter(|m| !m.is_null()) else {
        return Ok(None);
    };
    let Some(meta) = meta.as_object() else {
        return Err(invalid("Field `metadata` must be an object"));
    };
    let text = |k: &str| match meta.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(format!("Field `metadata.{k}` must be a string"))),
    };
    let (parent, state) = (text("traceparent")?, text("tracestate")?);
    Ok(parent.and_then(|p| crate::otel::TraceParent::parse(p, state)))
}

pub(super) fn last_seq(obj: &Map<String, Value>) -> Result<u64, ProtocolError> {
    match obj.get("last_seq") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid("Field `last_seq` must be a non-negative integer")),
    }
}

pub(super) fn approved(obj: &Map<String, Value>) -> Result<bool, ProtocolError> {
    match obj.get("approved") {
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(
            "Field `approved` of `user.tool_approval` must be true or false",
        )),
        None => Err(ProtocolError::new(
            ErrorCode::MissingField,
            "Missing field `approved` for `user.tool_approval`",
        )),
    }
}

pub(super) fn reason(obj: &Map<String, Value>) -> Result<Option<String>, ProtocolError> {
    match obj.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) if r.chars().count() <= MAX_REASON_CHARS => Ok(Some(r.clone())),
        Some(_) => Err(invalid(format!(
            "Field `reason` of `user.tool_approval` must be a string of at most {MAX_REASON_CHARS} characters"
        ))),
    }
}

pub(super) fn unknown_event(other: &str, custom_prefixes: &[&str]) -> ProtocolError {
    let mut known = "user.create_session, user.message, user.cancel, user.resume_session, user.close_session, user.get_history, user.tool_approval, user.list_sessions, user.delete_session".to_owned();
    let prefixes: Vec<String> = custom_prefixes
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| format!("`{p}`"))
        .collect();
    if !prefixes.is_empty() {
        known.push_str(&format!(
            ", or a custom event starting with {}",
            prefixes.join(" or ")
        ));
    }
    ProtocolError::new(
        ErrorCode::UnknownEvent,
        format!("Unknown event `{other}`; expected {known}"),
    )
}

/// Characters in a `user.tool_approval`'s `reason`, at most (the model reads it).
pub const MAX_REASON_CHARS: usize = 1000;

/// Content parts in one message, at most.
pub const MAX_CONTENT_PARTS: usize = 16;

/// `content` of a `user.message`: a non-empty string, or an array of OpenAI content parts —
/// `{"type": "text", "text"}` and `{"type": "image_url", "image_url": {"url", "detail"?}}` with a
/// `data:image/...;base64,` or `http(s)://` URL (the host never fetches it; the model provider
/// does). The message size limit bounds them.
pub(super) fn content(obj: &Map<String, Value>) -> Result<Content, ProtocolError> {
    let invalid = |m: String| ProtocolError::new(ErrorCode::InvalidField, m);
    let parts = match obj.get("content") {
        Some(Value::Array(parts)) => parts,
        _ => return required_str(obj, "user.message", "content").map(Content::Text),
    };
    if parts.is_empty() || parts.len() > MAX_CONTENT_PARTS {
        return Err(invalid(format!(
            "Field `content` must have 1 to {MAX_CONTENT_PARTS} parts"
        )));
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| content_part(i, part))
        .collect::<Result<_, _>>()
        .map(Content::Parts)
}

/// One content part, rebuilt from its validated fields only (anything else in it is dropped).
pub(super) fn content_part(i: usize, part: &Value) -> Result<Part, ProtocolError> {
    let invalid = |m: String| ProtocolError::new(ErrorCode::InvalidField, m);
    match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text") {
            Some(Value::String(text)) => Ok(Part::Text { text: text.clone() }),
            _ => Err(invalid(format!("`content[{i}]`: a text part needs a string `text`"))),
        },
        Some("image_url") => {
            let url = part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
            let data = url
                .strip_prefix("data:image/")
                .and_then(|rest| rest.split_once(";base64,"))
                .is_some_and(|(kind, b64)| {
                    ["png", "jpeg", "jpg", "gif", "webp"].contains(&kind)
                        && !b64.is_empty()
                        && b64.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                });
            let web = url.starts_with("https://") || url.starts_with("http://");
            if !data && !web {
                return Err(invalid(format!(
                    "`content[{i}].image_url.url` must be a data:image/(png|jpeg|gif|webp);base64, URL or an http(s) URL"
                )));
            }
            let detail = match part.pointer("/image_url/detail") {
                None => None,
                Some(Value::String(d)) if ["auto", "low", "high"].contains(&d.as_str()) => Some(d.clone()),
                Some(_) => return Err(invalid(format!("`content[{i}].image_url.detail` must be auto, low or high"))),
            };
            Ok(Part::ImageUrl {
                image_url: ImageUrl {
                    url: url.to_owned(),
                    detail,
                },
            })
        }
        _ => Err(invalid(format!(
            "`content[{i}]` must be a text or image_url part ({{\"type\": \"text\", \"text\": ...}} or {{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}})"
        ))),
    }
}

/// What a client says it can do (`capabilities`: strings; unknown ones are ignored).
pub(super) fn capabilities(obj: &Map<String, Value>) -> Result<Vec<&str>, ProtocolError> {
    match obj.get("capabilities") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= 32 => a
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| invalid("`capabilities` is a list of strings"))
            })
            .collect(),
        Some(_) => Err(invalid("`capabilities` is a list of at most 32 strings")),
    }
}

/// Sessions a `user.list_sessions` page holds by default, and at most.
pub const LIST_LIMIT_DEFAULT: usize = 20;
pub const LIST_LIMIT_MAX: usize = 100;

pub(super) fn list_limit(obj: &Map<String, Value>) -> Result<usize, ProtocolError> {
    match obj.get("limit") {
        None | Some(Value::Null) => Ok(LIST_LIMIT_DEFAULT),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=LIST_LIMIT_MAX as u64).contains(&n) => Ok(n as usize),
            _ => Err(invalid(format!(
                "Field `limit` of `user.list_sessions` must be an integer from 1 to {LIST_LIMIT_MAX}"
            ))),
        },
    }
}

/// A string field that may be absent (or null); given, it must be a non-empty string.
pub(super) fn optional_str(
    obj: &Map<String, Value>,
    event: &str,
    field: &str,
) -> Result<Option<String>, ProtocolError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => required_str(obj, event, field).map(Some),
    }
}

pub(super) fn required_str(
    obj: &Map<String, Value>,
    event: &str,
    field: &str,
) -> Result<String, ProtocolError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!("Field `{field}` of `{event}` must not be empty"),
        )),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!("Field `{field}` of `{event}` must be a string"),
        )),
        None => Err(ProtocolError::new(
            ErrorCode::MissingField,
            format!("Missing field `{field}` for `{event}`"),
        )),
    }
}
