//! Agents of one host working together. **Handoffs**: an agent's model gets a tool
//! `transfer_to_<agent>` for each agent it may hand over to; calling it moves the rest of the
//! turn — and the session's next messages — to that agent (`run.rs` switches, the session keeps
//! the [`Bound`] it ends on). **Agents as tools**: `ask_<agent>` {input} runs that agent as a
//! child run with a fresh memory (`child.rs`), its answer the tool's result.
//!
//! Who may do what is the plugins' word ([`Manifest::handoffs`], [`Manifest::agent_tools`])
//! plus the operator's (`--handoff FROM=TO`, `--agent-tool FROM=TO`): [`Links`].

use std::sync::Arc;

use serde_json::json;

use super::{AgentConfig, RunContext};
use crate::llm::ToolSpec;
use crate::plugin::reload::{Agents, PluginSlot};
use crate::plugin::{Instance, Manifest, Plugin};

/// A handoff tool's name: this, then the target's name made safe.
pub const TRANSFER_PREFIX: &str = "transfer_to_";
/// An agent tool's name: this, then the agent's name made safe.
pub const ASK_PREFIX: &str = "ask_";
/// Child runs nest at most this deep (a child may ask another agent; that one may not).
pub const MAX_DEPTH: u8 = 2;

/// The agent a session (or a run, after a handoff) talks to: its slot, the build serving it
/// and an agent instance in that build.
#[derive(Clone)]
pub struct Bound {
    /// The agent (its builds come and go with reloads).
    pub slot: Arc<PluginSlot>,
    pub plugin: Arc<Plugin>,
    pub instance: Instance,
}

impl Bound {
    /// A fresh instance of `slot`'s serving build.
    pub async fn to(slot: &Arc<PluginSlot>, config: &AgentConfig) -> Result<Bound, String> {
        let plugin = slot.current();
        let timeout = config.tool_timeout_for(&plugin.manifest);
        match plugin.instantiate(timeout).await {
            Ok(Ok(instance)) => Ok(Bound {
                slot: slot.clone(),
                plugin,
                instance,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The operator's links between agents, beside those the plugins declare.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// `--handoff FROM=TO`.
    pub handoffs: Vec<(String, String)>,
    /// `--agent-tool FROM=TO`.
    pub agent_tools: Vec<(String, String)>,
}

impl Links {
    /// Reads `FROM=TO` pairs (`flag` names them in errors).
    pub fn pairs(values: &[String], flag: &str) -> Result<Vec<(String, String)>, String> {
        values
            .iter()
            .map(|v| match v.split_once('=') {
                Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
                    Ok((from.trim().to_owned(), to.trim().to_owned()))
                }
                _ => Err(format!("{flag} {v:?}: expected FROM=TO (two agent names)")),
            })
            .collect()
    }

    /// Every name the operator's pairs use must be an agent this host serves.
    pub fn check(&self, served: &[String]) -> Result<(), String> {
        let pairs = [
            ("--handoff", &self.handoffs),
            ("--agent-tool", &self.agent_tools),
        ];
        for (flag, list) in pairs {
            for (from, to) in list {
                for name in [from, to] {
                    if !served.contains(name) {
                        return Err(format!(
                            "{flag} {from}={to}: no agent named {name:?} is served (served: {})",
                            served.join(", ")
                        ));
                    }
                }
                if from == to {
                    return Err(format!(
                        "{flag} {from}={to}: an agent cannot link to itself"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The agents `m` may hand over to: its own list, then the operator's.
    fn handoffs_of(&self, m: &Manifest) -> Vec<String> {
        merged(&m.handoffs, &self.handoffs, &m.name)
    }

    /// The agents `m` may ask as tools.
    fn asks_of(&self, m: &Manifest) -> Vec<String> {
        merged(&m.agent_tools, &self.agent_tools, &m.name)
    }
}

fn merged(own: &[String], operator: &[(String, String)], from: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let extra = operator.iter().filter(|(f, _)| f == from).map(|(_, t)| t);
    for to in own.iter().chain(extra) {
        if to != from && !all.contains(to) {
            all.push(to.clone());
        }
    }
    all
}

/// `name` with every character outside `[A-Za-z0-9_]` replaced by `_` (tool names are that).
pub fn safe(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_ascii_alphanumeric() || c == '_' {
            true => c,
            false => '_',
        })
        .collect()
}

/// What a tool name offered to a run stands for among its agent's links.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Link {
    /// `transfer_to_<agent>`.
    Handoff(String),
    /// `ask_<agent>`.
    Ask(String),
}

/// The links offered to a run of `ctx`'s agent, by tool name: no handoffs in a child run (it
/// has no session of its own to move), no agent tools past [`MAX_DEPTH`], and none whose name
/// a tool of the plugin already has.
pub(super) fn offered(ctx: &RunContext<'_>) -> Vec<(String, Link)> {
    let m = ctx.manifest;
    let links = &ctx.config.links;
    let mut out = Vec::new();
    if ctx.depth == 0 {
        for to in links.handoffs_of(m) {
            out.push((format!("{TRANSFER_PREFIX}{}", safe(&to)), Link::Handoff(to)));
        }
    }
    if ctx.depth < MAX_DEPTH {
        for to in links.asks_of(m) {
            out.push((format!("{ASK_PREFIX}{}", safe(&to)), Link::Ask(to)));
        }
    }
    out.retain(|(name, _)| !m.tools.iter().any(|t| &t.name == name));
    out
}

/// The link tool `name` stands for among `offered`, if it is one.
pub(super) fn find<'a>(offered: &'a [(String, Link)], name: &str) -> Option<&'a Link> {
    offered.iter().find(|(n, _)| n == name).map(|(_, l)| l)
}

/// The link tools as the model sees them, each described by its target's description.
pub(super) fn specs(ctx: &RunContext<'_>) -> Vec<ToolSpec> {
    offered(ctx)
        .into_iter()
        .map(|(name, link)| {
            let (to, verb, parameters) = match link {
                Link::Handoff(to) => (
                    to,
                    "Hand the conversation over to",
                    json!({"type": "object", "properties": {"reason": {"type": "string",
                        "description": "Why the conversation goes to this agent"}}}),
                ),
                Link::Ask(to) => (
                    to,
                    "Ask",
                    json!({"type": "object", "properties": {"input": {"type": "string",
                        "description": "The question or task for this agent"}},
                        "required": ["input"]}),
                ),
            };
            ToolSpec {
                name,
                description: describe(ctx.agents, &to, verb),
                parameters,
            }
        })
        .collect()
}

/// `to`'s description as its serving build says it (or a plain sentence when it has none or
/// is not served).
fn describe(agents: &Agents, to: &str, verb: &str) -> String {
    let served = agents
        .named(to)
        .map(|s| s.current().manifest.description.clone());
    match served.filter(|d| !d.trim().is_empty()) {
        Some(d) => d,
        None => format!("{verb} the agent {to}."),
    }
}

/// The agent `to`, when this host serves it; else the text the model sees.
pub(super) fn served<'a>(agents: &'a Agents, to: &str) -> Result<&'a Arc<PluginSlot>, String> {
    agents.named(to).ok_or_else(|| {
        format!(
            "Error: there is no agent named `{to}` on this host (served: {}).",
            agents.names().join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_for_tools() {
        assert_eq!(safe("billing-assistant"), "billing_assistant");
        assert_eq!(safe("wéather.v2"), "w_ather_v2");
    }

    #[test]
    fn operator_pairs_add_to_the_plugins_own() {
        let pairs = Links::pairs(&["a=b".into(), " a = c ".into()], "--handoff").unwrap();
        assert_eq!(pairs, [("a".into(), "b".into()), ("a".into(), "c".into())]);
        assert!(Links::pairs(&["a".into()], "--handoff").is_err());
        assert_eq!(
            merged(&["b".into(), "a".into()], &pairs, "a"),
            ["b".to_owned(), "c".to_owned()]
        );
        let links = Links {
            handoffs: pairs,
            agent_tools: Vec::new(),
        };
        assert!(links.check(&["a".into(), "b".into(), "c".into()]).is_ok());
        let err = links.check(&["a".into(), "b".into()]).unwrap_err();
        assert!(err.contains("no agent named \"c\""), "{err}");
    }
}
