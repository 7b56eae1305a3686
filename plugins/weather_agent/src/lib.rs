//! The design document's weather-assistant: one `get_weather(city)` tool.
//!
//! The weather is simulated but deterministic (derived from the city name), so recordings and
//! tests are stable. Swap `forecast` for a real weather API call; tools may block.

use myagent_plugin_api::{export_agent, json, Agent, SessionOverrides, Tool, ToolResult, Value};

/// Looks up the (simulated) weather for a city.
pub struct WeatherTool;

const CONDITIONS: [&str; 5] = ["sunny", "cloudy", "light rain", "windy", "clear"];

/// A stable, made-up forecast for `city`: same city, same answer.
pub fn forecast(city: &str) -> String {
    let h = city
        .to_lowercase()
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let condition = CONDITIONS[(h % CONDITIONS.len() as u32) as usize];
    let celsius = 5 + (h / 7 % 25) as i32;
    format!("{city}: {condition}, {celsius}°C")
}

impl Tool for WeatherTool {
    fn name(&self) -> &str {
        "get_weather"
    }
    fn description(&self) -> &str {
        "Get the current weather for a city."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name, e.g. Paris"}
            },
            "required": ["city"]
        })
    }
    fn execute(&self, args: Value) -> ToolResult {
        match args.get("city").and_then(Value::as_str).map(str::trim) {
            Some(city) if !city.is_empty() => ToolResult::ok(forecast(city)),
            _ => ToolResult::error("missing required argument `city` (a non-empty string)"),
        }
    }
}

/// The agent factory: a fresh agent for every session.
pub fn weather_assistant() -> Agent {
    Agent::builder("weather-assistant")
        .version(env!("CARGO_PKG_VERSION"))
        .description("Answers weather questions with the get_weather tool.")
        .system_prompt(
            "You are a weather assistant. You answer questions about the weather in cities \
             around the world. Always use the get_weather tool to look up the weather; never guess.",
        )
        .next_step_prompt("To look up weather, use the get_weather tool.")
        .max_steps(5)
        // What a client may set per session with `agent_config` on `user.create_session`.
        .session_overrides(SessionOverrides {
            models: vec!["gpt-4o-mini".into(), "gpt-4o".into()],
            temperature: Some((0.0, 1.0)),
            max_steps: Some(8),
            instructions_chars: 500,
        })
        .tool(WeatherTool)
        // Shown on a new session (the web page's empty state).
        .starters([
            "What's the weather in Paris?",
            "Is it warmer in Tokyo or in Oslo today?",
            "查询上海天气",
        ])
        .build()
}

export_agent!(weather_assistant);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_weather_is_deterministic() {
        let agent = weather_assistant();
        let a = agent.call_tool("get_weather", json!({"city": "Paris"}));
        let b = agent.call_tool("get_weather", json!({"city": "Paris"}));
        assert_eq!(a, b);
        assert!(a.output.unwrap().starts_with("Paris: "));
    }

    #[test]
    fn get_weather_requires_a_city() {
        let agent = weather_assistant();
        assert!(agent.call_tool("get_weather", json!({})).is_error());
        assert!(agent
            .call_tool("get_weather", json!({"city": " "}))
            .is_error());
    }
}
