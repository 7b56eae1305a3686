//! AG-UI's `RunAgentInput`, read: which thread and run, what the run is asked to do (answer a
//! new user message, or go on after the interrupts it answers), and the options our door reads
//! from `forwardedProps` (`agent_config`, `background`).

use serde_json::{Map, Value};

use crate::agent::Decision;
use crate::llm::{Content, ImageUrl, Part, ToolSpec};

/// One request, checked.
#[derive(Debug)]
pub(crate) struct Input {
    pub thread_id: String,
    pub run_id: String,
    pub parent_run_id: Option<String>,
    /// The conversation as the client holds it (echoed back in snapshots).
    pub messages: Vec<Value>,
    pub ask: Ask,
    /// Answers to the interrupts of the thread's previous run (`resume`), by interrupt id.
    pub resume: Vec<(String, Decision)>,
    /// `forwardedProps.background`: a dropped stream does not cancel the run.
    pub background: bool,
    /// `forwardedProps.agent_config`: the session's settings, checked as on the WebSocket.
    pub agent_config: Option<Map<String, Value>>,
    /// The client's own tools (frontend tools), offered to the model beside the agent's.
    pub tools: Vec<ToolSpec>,
}

/// What the run is asked to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Ask {
    /// Answer this user message (the last entry of `messages`).
    Message(Content),
    /// Nothing new: go on after the interrupts `resume` answers.
    Resume,
    /// The results of the client's own tools the last run called (the trailing `tool`
    /// messages): call id and result.
    ToolResults(Vec<(String, String)>),
}

/// Reads a request body; the error says what is wrong with it.
pub(crate) fn parse(body: &[u8]) -> Result<Input, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let string = |k: &str| {
        v[k].as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("`{k}` (a non-empty string) is required"))
    };
    let thread_id = string("threadId")?;
    let run_id = string("runId")?;
    if thread_id.len() > 128 || thread_id.contains(char::is_control) {
        return Err("`threadId` is at most 128 characters, with no control characters".into());
    }
    let messages = v["messages"]
        .as_array()
        .cloned()
        .ok_or("`messages` (an array) is required")?;
    let resume = match v.get("resume") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(entries)) => {
            entries.iter().map(resume_entry).collect::<Result<_, _>>()?
        }
        Some(_) => return Err("`resume` must be an array".into()),
    };
    let ask = match messages.last() {
        _ if !resume.is_empty() => Ask::Resume,
        Some(m) if m["role"] == "user" => Ask::Message(content(&m["content"])?),
        Some(m) if m["role"] == "tool" => Ask::ToolResults(tool_results(&messages)?),
        _ => return Err("the last entry of `messages` must be the user's new message".into()),
    };
    let props = &v["forwardedProps"];
    let agent_config = match &props["agent_config"] {
        Value::Null => None,
        Value::Object(m) => Some(m.clone()),
        _ => return Err("`forwardedProps.agent_config` must be an object".into()),
    };
    let tools = match &v["tools"] {
        Value::Null => Vec::new(),
        Value::Array(t) => t.iter().map(tool).collect::<Result<_, _>>()?,
        _ => return Err("`tools` must be an array".into()),
    };
    Ok(Input {
        tools,
        thread_id,
        run_id,
        parent_run_id: v["parentRunId"].as_str().map(str::to_owned),
        messages,
        ask,
        resume,
        background: props["background"].as_bool().unwrap_or(false),
        agent_config,
    })
}

/// A frontend tool: `name`, `description`, `parameters` (a JSON Schema).
fn tool(t: &Value) -> Result<ToolSpec, String> {
    let name = t["name"]
        .as_str()
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or("each of `tools` needs a `name` of 1-64 letters, digits, `_` or `-`")?;
    Ok(ToolSpec {
        name: name.to_owned(),
        description: t["description"].as_str().unwrap_or("").to_owned(),
        parameters: match &t["parameters"] {
            Value::Object(_) => t["parameters"].clone(),
            _ => serde_json::json!({"type": "object", "properties": {}}),
        },
    })
}

/// The trailing `tool` messages: each call's id and its result as text.
fn tool_results(messages: &[Value]) -> Result<Vec<(String, String)>, String> {
    let trailing = messages.iter().rev().take_while(|m| m["role"] == "tool");
    let mut out: Vec<(String, String)> = trailing
        .map(|m| {
            let id = m["toolCallId"]
                .as_str()
                .ok_or("a `tool` message needs its `toolCallId`")?;
            let text = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                other => other.to_string(),
            };
            let text = match m["error"].as_str() {
                Some(e) => format!("Error: {e}"),
                None => text,
            };
            Ok((id.to_owned(), text))
        })
        .collect::<Result<_, String>>()?;
    out.reverse();
    Ok(out)
}

/// One `resume` entry: `resolved` with `payload.approved` (and an optional `reason`), or
/// `cancelled` (a denial).
fn resume_entry(e: &Value) -> Result<(String, Decision), String> {
    let id = e["interruptId"]
        .as_str()
        .ok_or("each `resume` entry needs an `interruptId`")?
        .to_owned();
    let reason = e["payload"]["reason"].as_str().map(str::to_owned);
    let decision = match e["status"].as_str() {
        Some("resolved") => Decision {
            approved: e["payload"]["approved"].as_bool().ok_or_else(|| {
                format!("the answer to interrupt {id} needs `payload.approved` (true or false)")
            })?,
            reason,
        },
        Some("cancelled") => Decision {
            approved: false,
            reason: reason.or_else(|| Some("cancelled by the user".into())),
        },
        _ => {
            return Err(format!(
                "the answer to interrupt {id} needs `status`: resolved or cancelled"
            ))
        }
    };
    Ok((id, decision))
}

/// A user message's content: a string, or parts (text; images by URL or inline data).
fn content(c: &Value) -> Result<Content, String> {
    if let Some(s) = c.as_str() {
        return Ok(Content::Text(s.to_owned()));
    }
    let parts = c
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("a user message's `content` is a string or an array of parts")?;
    let mut out = Vec::new();
    for p in parts {
        let source = &p["source"];
        let mime = source["mimeType"].as_str().unwrap_or("");
        match (p["type"].as_str(), source["type"].as_str()) {
            (Some("text"), _) => out.push(Part::Text {
                text: p["text"].as_str().unwrap_or("").to_owned(),
            }),
            (Some("image"), Some("url")) => out.push(image(source["value"].as_str())),
            (Some("image"), Some("data")) if mime.starts_with("image/") => {
                let data = source["value"].as_str().map(|b| format!("data:{mime};base64,{b}"));
                out.push(image(data.as_deref()))
            }
            _ => return Err("only text parts and images (by url, or data with an image/* mimeType) are supported".into()),
        }
    }
    Ok(match out.as_slice() {
        [Part::Text { text }] => Content::Text(text.clone()),
        _ => Content::Parts(out),
    })
}

fn image(url: Option<&str>) -> Part {
    Part::ImageUrl {
        image_url: ImageUrl {
            url: url.unwrap_or("").to_owned(),
            detail: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn a_plain_run_asks_about_the_last_user_message() {
        let i = parse(&body(json!({"threadId": "t", "runId": "r", "messages": [
            {"id": "1", "role": "user", "content": "hi"},
            {"id": "2", "role": "assistant", "content": "hello"},
            {"id": "3", "role": "user", "content": [{"type": "text", "text": "weather?"}]}],
            "forwardedProps": {"background": true}})))
        .unwrap();
        assert_eq!(i.ask, Ask::Message(Content::Text("weather?".into())));
        assert!(i.background && i.resume.is_empty());
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let e = |v: Value| parse(&body(v)).unwrap_err();
        assert!(e(json!({"runId": "r", "messages": []})).contains("threadId"));
        assert!(e(json!({"threadId": "t", "runId": "r", "messages": []}))
            .contains("user's new message"));
        assert!(e(json!({"threadId": "t", "runId": "r", "messages": [],
            "resume": [{"interruptId": "x", "status": "resolved", "payload": {}}]}))
        .contains("payload.approved"));
        assert!(parse(b"{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn resume_entries_are_decisions() {
        let i = parse(&body(json!({"threadId": "t", "runId": "r", "messages": [],
            "resume": [{"interruptId": "a", "status": "resolved", "payload": {"approved": true}},
                       {"interruptId": "b", "status": "cancelled"}]})))
        .unwrap();
        assert_eq!(i.ask, Ask::Resume);
        assert!(i.resume[0].1.approved && !i.resume[1].1.approved);
    }
}
