//! The MCP configuration file, in the format editors and desktop apps already use:
//!
//! ```json
//! {"mcpServers": {
//!   "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"], "env": {"DEBUG": "1"}},
//!   "search": {"url": "http://127.0.0.1:3001/mcp", "headers": {"Authorization": "Bearer …"}}
//! }}
//! ```
//!
//! A server with `command` is a stdio server (a child process of the host); one with `url` a
//! streamable-HTTP server. Other fields (`disabled`, `type`, editor-specific ones) are read or
//! ignored so a file copied from an editor works as it is.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// How to reach one MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSpec {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

impl ServerSpec {
    /// What the log and `inspect` say about it (no header values: they hold secrets).
    pub fn describe(&self) -> String {
        match self {
            ServerSpec::Stdio { command, args, .. } => {
                let mut s = command.clone();
                for a in args {
                    s.push(' ');
                    s.push_str(a);
                }
                format!("stdio: {s}")
            }
            ServerSpec::Http { url, .. } => format!("http: {url}"),
        }
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "mcpServers")]
    mcp_servers: Option<BTreeMap<String, Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    disabled: bool,
}

/// A server's name becomes part of tool names (`NAME__tool`): letters, digits, `_` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads `path`; every problem is one clear message naming the file and the server.
pub fn load(path: &Path) -> Result<BTreeMap<String, ServerSpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --mcp-config {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("--mcp-config {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<BTreeMap<String, ServerSpec>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| {
        format!("not a valid MCP configuration ({e}); expected {{\"mcpServers\": {{\"NAME\": {{\"command\": ..., \"args\": [...]}} or {{\"url\": ...}}}}}}")
    })?;
    let entries = file
        .mcp_servers
        .ok_or("no `mcpServers` object: expected {\"mcpServers\": {\"NAME\": {...}}}")?;
    let mut out = BTreeMap::new();
    for (name, e) in entries {
        if e.disabled {
            continue;
        }
        if !valid_name(&name) {
            return Err(format!(
                "server name `{name}`: use 1 to 32 letters, digits, `_` or `-` (it prefixes tool names)"
            ));
        }
        let spec = match (e.command, e.url) {
            (Some(command), None) if !command.trim().is_empty() => ServerSpec::Stdio {
                command,
                args: e.args,
                env: e.env,
            },
            (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                ServerSpec::Http {
                    url,
                    headers: e.headers,
                }
            }
            (None, Some(url)) => {
                return Err(format!(
                    "server `{name}`: `url` must be an http:// or https:// URL, not `{url}`"
                ))
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "server `{name}` has both `command` and `url`; give one"
                ))
            }
            _ => {
                return Err(format!(
                    "server `{name}` needs a `command` (a stdio server) or a `url` (a streamable-HTTP server)"
                ))
            }
        };
        out.insert(name, spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_editors_format() {
        let servers = parse(
            r#"{"mcpServers": {
                "files": {"command": "npx", "args": ["-y", "server"], "env": {"A": "1"}, "type": "stdio"},
                "web": {"url": "http://127.0.0.1:3001/mcp", "headers": {"Authorization": "Bearer x"}},
                "off": {"command": "nope", "disabled": true}
            }, "other": 1}"#,
        )
        .unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers["files"],
            ServerSpec::Stdio {
                command: "npx".into(),
                args: vec!["-y".into(), "server".into()],
                env: [("A".to_string(), "1".to_string())].into()
            }
        );
        assert_eq!(servers["web"].describe(), "http: http://127.0.0.1:3001/mcp");
    }

    #[test]
    fn every_mistake_is_named() {
        for (text, says) in [
            ("[]", "not a valid MCP configuration"),
            ("{}", "no `mcpServers`"),
            (
                r#"{"mcpServers": {"a b": {"command": "x"}}}"#,
                "server name `a b`",
            ),
            (r#"{"mcpServers": {"s": {}}}"#, "needs a `command`"),
            (
                r#"{"mcpServers": {"s": {"command": "x", "url": "http://h"}}}"#,
                "both",
            ),
            (
                r#"{"mcpServers": {"s": {"url": "ftp://h"}}}"#,
                "http:// or https://",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
