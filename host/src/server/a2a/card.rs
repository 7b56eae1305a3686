//! The agent card (`/.well-known/agent-card.json`): who the agent is, where its JSON-RPC
//! endpoint is, what it can do (its skills are its tools) and how to authenticate.

use serde_json::{json, Value};

/// The card of `plugin`'s agent (a build the runtime serves now), its endpoint under `base`
/// (`http://host:port`).
pub(crate) fn card(plugin: &crate::plugin::Plugin, base: &str, tokens_required: bool) -> Value {
    let m = &plugin.manifest;
    let mut skills = vec![json!({
        "id": m.name,
        "name": m.name,
        "description": if m.description.is_empty() { format!("The {} agent", m.name) } else { m.description.clone() },
        "tags": ["agent"],
    })];
    for tool in &m.tools {
        skills.push(json!({
            "id": format!("tool:{}", tool.name),
            "name": tool.name,
            "description": tool.description,
            "tags": ["tool"],
        }));
    }
    let mut card = json!({
        "name": m.name,
        "description": m.description,
        "version": m.version,
        "supportedInterfaces": [{
            "url": format!("{base}/a2a/{}", m.name),
            "protocolBinding": "JSONRPC",
            "protocolVersion": "1.0",
        }],
        "capabilities": {"streaming": true, "pushNotifications": false},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": skills,
    });
    if tokens_required {
        card["securitySchemes"] = json!({"bearer": {"httpAuthSecurityScheme": {
            "scheme": "Bearer",
            "description": "A token of the host's principals (--auth-tokens-file or --auth-token)",
        }}});
        card["securityRequirements"] = json!([{"schemes": {"bearer": {"list": []}}}]);
    }
    card
}
