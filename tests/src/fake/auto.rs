//! The fake model's *auto* mode, used when no script step is queued: directives in the user's
//! message (`call:TOOL {json}`, `say:TEXT`, `stream:N`, `fault:KIND`, `bench:N[@MS]`), a weather
//! question answered with `get_weather` (or handed to a `transfer_to_*weather*` agent), or an
//! answer built from the tool results that follow its last tool call.

use serde_json::{json, Value};

use super::{ScriptCall, Step};

/// The deterministic "model" used when no script step is queued.
pub fn auto_step(request: &Value) -> Step {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let mut last_assistant = messages.iter().rposition(|m| m["role"] == "assistant");
    // A handoff (the last step only called `transfer_to_*`): the agent it went to takes the
    // user's request up as if it were new.
    if let Some(i) = last_assistant.filter(|i| handed_over(&messages[*i])) {
        last_assistant = messages[..i].iter().rposition(|m| m["role"] == "assistant");
    }
    let after: &[Value] = match last_assistant {
        Some(i) => &messages[i + 1..],
        None => &messages[..],
    };
    let handoff = after.iter().any(handed_over);
    let tool_results: Vec<&str> = after
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str())
        .collect();
    if !tool_results.is_empty() && !handoff {
        return Step {
            text: format!("Here is what I found: {}", tool_results.join("; ")),
            ..Default::default()
        };
    }
    // The user's input is the first user message after the last assistant turn (the host may
    // append its next-step prompt after it).
    let input = after
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let tools: Vec<&str> = request["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();

    let mut step = Step::default();
    for part in input.split(" ;; ") {
        let part = part.trim();
        if let Some(rest) = part.strip_prefix("call:") {
            let (name, args) = rest.split_once(' ').unwrap_or((rest, "{}"));
            step.tool_calls.push(ScriptCall {
                name: name.into(),
                arguments: args.into(),
            });
        } else if let Some(text) = part.strip_prefix("say:") {
            step.text.push_str(text);
        } else if let Some(n) = part.strip_prefix("stream:") {
            let n: usize = n.parse().unwrap_or(10);
            step.text = (0..n).map(|i| format!("word{i} ")).collect();
            step.chunk_chars = Some(6);
        } else if let Some(kind) = part.strip_prefix("fault:") {
            // Per-request faults, so a test can break one session's model while others stream:
            // `fault:429`, `fault:500`, `fault:stall`, `fault:garbage`, `fault:reset`.
            step.text = "partial answer before the fault ".into();
            match kind {
                "429" => {
                    step.status = Some(429);
                    step.headers = vec![("retry-after-ms".into(), "50".into())];
                }
                "500" => step.status = Some(500),
                "stall" => {
                    step.after_chunks = Some(3);
                    step.stall_ms = Some(60_000);
                }
                "garbage" => {
                    step.after_chunks = Some(3);
                    step.garbage = true;
                }
                _ => {
                    step.after_chunks = Some(3);
                    step.reset = true;
                }
            }
        } else if let Some(spec) = part.strip_prefix("bench:") {
            // `bench:N` or `bench:N@MS`: N chunks (MS apart), each carrying the time it leaves
            // this server as `~<unix micros>|` (the load generator measures latency from it).
            let (n, ms) = spec.split_once('@').unwrap_or((spec, ""));
            step.text = format!("\u{0}bench:{}", n.parse::<usize>().unwrap_or(10));
            if let Ok(ms) = ms.parse() {
                step.delay_ms = Some(ms);
            }
        }
    }
    if step.text.is_empty() && step.tool_calls.is_empty() {
        let lower = input.to_lowercase();
        let to_weather = tools
            .iter()
            .find(|t| t.starts_with("transfer_to_") && t.contains("weather"));
        if tools.contains(&"get_weather") && lower.contains("weather") {
            let city = city_in(input).unwrap_or_else(|| "Paris".into());
            step.text = format!("Let me look up the weather in {city}.");
            step.tool_calls.push(ScriptCall {
                name: "get_weather".into(),
                arguments: json!({"city": city}).to_string(),
            });
        } else if let Some(to) = to_weather.filter(|_| lower.contains("weather")) {
            step.text = "This is a weather question: handing it over.".into();
            step.tool_calls.push(ScriptCall {
                name: (*to).into(),
                arguments: json!({"reason": "a weather question"}).to_string(),
            });
        } else {
            step.text = format!("You said: {input}");
        }
    }
    step
}

/// An assistant message whose every tool call is a handoff (`transfer_to_*`).
fn handed_over(m: &Value) -> bool {
    let calls = m["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    m["role"] == "assistant"
        && !calls.is_empty()
        && calls.iter().all(|c| {
            c["function"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("transfer_to_"))
        })
}

/// "What's the weather in New York today?" → "New York".
fn city_in(input: &str) -> Option<String> {
    let lower = input.to_lowercase();
    let at = lower.find(" in ")? + 4;
    let words: Vec<&str> = input[at..]
        .split(|c: char| !(c.is_alphanumeric() || c == ' ' || c == '-'))
        .next()?
        .split_whitespace()
        .take_while(|w| w.chars().next().is_some_and(char::is_uppercase))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cities() {
        assert_eq!(
            city_in("What's the weather in New York today?").as_deref(),
            Some("New York")
        );
        assert_eq!(city_in("weather in Paris").as_deref(), Some("Paris"));
        assert_eq!(city_in("how is the weather"), None);
    }

    #[test]
    fn auto_model_answers_from_tool_results() {
        let req = json!({"messages": [
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "Paris: sunny"},
            {"role": "user", "content": "next step prompt"}
        ]});
        assert_eq!(auto_step(&req).text, "Here is what I found: Paris: sunny");
    }

    #[test]
    fn auto_model_hands_weather_over_and_the_target_takes_the_question_up() {
        let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
        let ask = json!({"role": "user", "content": "What's the weather in Rome?"});
        let first = json!({"messages": [ask], "tools": [tool("query_database"), tool("transfer_to_weather_assistant")]});
        let step = auto_step(&first);
        assert_eq!(step.tool_calls[0].name, "transfer_to_weather_assistant");
        let then = json!({"messages": [
            {"role": "system", "content": "You are a weather assistant."},
            ask,
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "transfer_to_weather_assistant", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "Transferred"}
        ], "tools": [tool("get_weather")]});
        let step = auto_step(&then);
        assert_eq!(step.tool_calls[0].name, "get_weather");
        assert_eq!(step.tool_calls[0].arguments, r#"{"city":"Rome"}"#);
    }
}
