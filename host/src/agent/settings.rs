//! Per-session agent configuration (the MyAgent design's `AgentSession(session_id,
//! agent_config)`): what a client asked for in `agent_config`, checked against the limits the
//! plugin declares ([`SessionOverrides`]), and how it changes a run.

use serde_json::{Map, Value};

use crate::plugin::Manifest;
use myagent_plugin_api::SessionOverrides;

/// `agent_config.budget`: `{"tokens": N, "cost_usd": X}` (either or both; it can only tighten
/// the host's budget, so any value is allowed).
fn budget(value: &Value) -> Result<crate::agent::usage::Budget, String> {
    let bad = || {
        "`agent_config.budget` must be {\"tokens\": positive integer, \"cost_usd\": positive number}".to_owned()
    };
    let obj = value.as_object().ok_or_else(bad)?;
    let mut b = crate::agent::usage::Budget::default();
    for (k, v) in obj {
        match k.as_str() {
            "tokens" => b.tokens = Some(v.as_u64().filter(|n| *n > 0).ok_or_else(bad)?),
            "cost_usd" => {
                b.cost_usd = Some(
                    v.as_f64()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(bad)?,
                )
            }
            _ => return Err(bad()),
        }
    }
    Ok(b)
}

/// A session's own settings; `None` keeps the agent's.
/// Serialized as the client sees it in `agent.session_created` (unset fields left out).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Appended to the system prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// A budget of the session's own, within the host's (the tighter of the two applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::agent::usage::Budget>,
}

const FIELDS: &str = "model, temperature, max_steps, instructions, budget";

impl SessionSettings {
    /// Reads a client's `agent_config` object and checks each field against `manifest`'s
    /// limits. The error says which field and what is allowed.
    pub fn from_request(
        config: &Map<String, Value>,
        manifest: &Manifest,
    ) -> Result<SessionSettings, String> {
        let mut s = SessionSettings::default();
        for (key, value) in config {
            match key.as_str() {
                "model" => {
                    s.model = Some(
                        value
                            .as_str()
                            .ok_or("`agent_config.model` must be a string")?
                            .to_owned(),
                    )
                }
                "temperature" => {
                    s.temperature = Some(
                        value
                            .as_f64()
                            .ok_or("`agent_config.temperature` must be a number")?
                            as f32,
                    )
                }
                "max_steps" => {
                    let n = value.as_u64().filter(|n| *n >= 1 && *n <= u32::MAX as u64);
                    s.max_steps = Some(
                        n.ok_or("`agent_config.max_steps` must be a positive integer")? as u32,
                    );
                }
                "instructions" => {
                    s.instructions = Some(
                        value
                            .as_str()
                            .ok_or("`agent_config.instructions` must be a string")?
                            .to_owned(),
                    )
                }
                "budget" => s.budget = Some(budget(value)?),
                other => {
                    return Err(format!(
                        "Unknown field `agent_config.{other}`; expected {FIELDS}"
                    ))
                }
            }
        }
        s.check(manifest)?;
        Ok(s)
    }

    /// The budget a run of this session works within: the host's, tightened by the session's.
    pub fn budget(&self, host: crate::agent::usage::Budget) -> crate::agent::usage::Budget {
        self.budget.map_or(host, |b| host.tighter(b))
    }

    /// These settings for a run of `manifest`'s agent (another agent's, after a handoff, or a
    /// new build's): all of them where its limits allow them, else its own settings — and the
    /// session's budget either way (it is the session's, whichever agent speaks).
    pub fn for_agent(&self, manifest: &Manifest) -> SessionSettings {
        match self.check(manifest) {
            Ok(()) => self.clone(),
            Err(_) => SessionSettings {
                budget: self.budget,
                ..Default::default()
            },
        }
    }

    /// Whether `manifest`'s limits allow these settings (also re-checked after a hot reload).
    pub fn check(&self, manifest: &Manifest) -> Result<(), String> {
        let o: &SessionOverrides = &manifest.session_overrides;
        let agent = &manifest.name;
        if let Some(m) = &self.model {
            if !o.models.contains(m) {
                return Err(if o.models.is_empty() {
                    format!("`agent_config.model`: {agent} does not let sessions choose the model")
                } else {
                    format!(
                        "`agent_config.model` `{m}` is not allowed by {agent} (allowed: {})",
                        o.models.join(", ")
                    )
                });
            }
        }
        if let Some(t) = self.temperature {
            match o.temperature {
                Some((lo, hi)) if t >= lo && t <= hi => {}
                Some((lo, hi)) => {
                    return Err(format!(
                        "`agent_config.temperature` {t} is outside {agent}'s range {lo}..={hi}"
                    ))
                }
                None => {
                    return Err(format!(
                    "`agent_config.temperature`: {agent} does not let sessions set the temperature"
                ))
                }
            }
        }
        if let Some(n) = self.max_steps {
            match o.max_steps {
                Some(max) if n <= max => {}
                Some(max) => {
                    return Err(format!(
                        "`agent_config.max_steps` {n} is over {agent}'s limit of {max}"
                    ))
                }
                None => {
                    return Err(format!(
                        "`agent_config.max_steps`: {agent} does not let sessions set max_steps"
                    ))
                }
            }
        }
        if let Some(text) = &self.instructions {
            let n = text.chars().count();
            if o.instructions_chars == 0 {
                return Err(format!(
                    "`agent_config.instructions`: {agent} does not take extra instructions"
                ));
            }
            if n > o.instructions_chars {
                return Err(format!(
                    "`agent_config.instructions` has {n} characters; {agent} takes at most {}",
                    o.instructions_chars
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(o: SessionOverrides) -> Manifest {
        let mut m: Manifest = serde_json::from_value(json!({
            "api_version": 1, "name": "weather-assistant", "version": "1", "description": "",
            "system_prompt": "", "next_step_prompt": "", "max_steps": 5, "enable_tracing": false,
            "model": null, "temperature": null, "tool_timeout_ms": null, "event_prefix": null,
            "tools": []
        }))
        .unwrap();
        m.session_overrides = o;
        m
    }

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let m = manifest(SessionOverrides::default());
        assert_eq!(
            SessionSettings::from_request(&req(json!({})), &m),
            Ok(SessionSettings::default())
        );
        for (k, v) in [
            ("model", json!("gpt-4o")),
            ("temperature", json!(0.5)),
            ("max_steps", json!(2)),
            ("instructions", json!("be brief")),
        ] {
            let e = SessionSettings::from_request(&req(json!({ k: v })), &m).unwrap_err();
            assert!(e.contains(k) && e.contains("weather-assistant"), "{e}");
        }
        let e = SessionSettings::from_request(&req(json!({"tools": []})), &m).unwrap_err();
        assert!(e.contains("Unknown field `agent_config.tools`"), "{e}");
    }

    #[test]
    fn each_field_within_its_limit() {
        let m = manifest(SessionOverrides {
            models: vec!["a".into(), "b".into()],
            temperature: Some((0.0, 1.0)),
            max_steps: Some(8),
            instructions_chars: 10,
        });
        let ok = SessionSettings::from_request(
            &req(json!({"model": "b", "temperature": 0.25, "max_steps": 8, "instructions": "Be brief."})),
            &m,
        )
        .unwrap();
        assert_eq!(ok.model.as_deref(), Some("b"));
        let shown = serde_json::to_value(&ok).unwrap();
        assert_eq!(
            shown,
            json!({"model": "b", "temperature": 0.25, "max_steps": 8, "instructions": "Be brief."})
        );
        let bad = [
            (json!({"model": "c"}), "allowed: a, b"),
            (json!({"temperature": 1.5}), "range"),
            (json!({"temperature": "hot"}), "must be a number"),
            (json!({"max_steps": 9}), "limit of 8"),
            (json!({"max_steps": 0}), "positive integer"),
            (json!({"instructions": "x".repeat(11)}), "at most 10"),
        ];
        for (v, want) in bad {
            let e = SessionSettings::from_request(&req(v.clone()), &m).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
