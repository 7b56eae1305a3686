//! `myagent-host new NAME`: creates a plugin crate that builds, tests and loads as is.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the generated crate gets `myagent-plugin-api` from.
pub enum ApiSource {
    /// A local checkout of the crate (`plugin-api/` of this repository).
    Path(PathBuf),
    /// A registry version requirement.
    Version(String),
}

impl ApiSource {
    /// The `plugin-api` this host was built from, if its source is still there; else the
    /// registry version matching this host.
    pub fn default_for_this_host() -> ApiSource {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
        match here.canonicalize() {
            Ok(p) if p.join("Cargo.toml").is_file() => ApiSource::Path(p),
            _ => ApiSource::Version(env!("CARGO_PKG_VERSION").into()),
        }
    }

    fn dependency(&self) -> String {
        match self {
            ApiSource::Path(p) => format!(
                "myagent-plugin-api = {{ path = {} }}",
                toml_string(&p.to_string_lossy())
            ),
            ApiSource::Version(v) => format!("myagent-plugin-api = \"{v}\""),
        }
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks a crate name the way cargo will (letters, digits, `_`, `-`; starts with a letter).
pub fn validate_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        _ => {
            return Err(format!(
                "`{name}` is not a valid crate name: it must start with a letter"
            ))
        }
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "`{name}` is not a valid crate name: `{bad}` is not allowed (use letters, digits, `_`, `-`)"
        ));
    }
    Ok(())
}

/// Creates the crate at `dir` (whose last component is the crate name). Returns the files written.
pub fn create(dir: &Path, api: &ApiSource) -> Result<Vec<PathBuf>, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no usable name", dir.display()))?
        .to_owned();
    validate_name(&name)?;
    if dir.exists()
        && dir
            .read_dir()
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} already exists and is not empty; choose another name",
            dir.display()
        ));
    }
    let lib_name = name.replace('-', "_");
    let agent_name = name.replace('_', "-");
    let files = [
        (PathBuf::from("Cargo.toml"), cargo_toml(&name, api)),
        (PathBuf::from("src/lib.rs"), lib_rs(&lib_name, &agent_name)),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
        (PathBuf::from("README.md"), readme(&name, &lib_name)),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn cargo_toml(name: &str, api: &ApiSource) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the .so that `myagent-host serve` loads; rlib: so `cargo test` can test the tools.
crate-type = ["cdylib", "rlib"]

[dependencies]
{dep}

# Its own workspace, even when created inside another one.
[workspace]
"#,
        dep = api.dependency()
    );
    s
}

fn lib_rs(lib_name: &str, agent_name: &str) -> String {
    format!(
        r#"//! The `{agent_name}` agent: a system prompt and its tools, loaded by `myagent-host serve`.

use myagent_plugin_api::{{export_agent, json, Agent, Tool, ToolResult, Value}};

/// An example tool: counts the words in a text. Replace it with your own; tools may block
/// (they run on a thread of their own) and get a timeout from the host.
pub struct WordCount;

impl Tool for WordCount {{
    fn name(&self) -> &str {{
        "word_count"
    }}
    fn description(&self) -> &str {{
        "Count the words in a text."
    }}
    fn parameters(&self) -> Value {{
        json!({{
            "type": "object",
            "properties": {{"text": {{"type": "string", "description": "The text to count"}}}},
            "required": ["text"]
        }})
    }}
    // A tool with effects outside the conversation (sending mail, paying, deleting) can ask a
    // person to approve each call first: the client gets `agent.tool_approval_required`.
    // fn needs_approval(&self) -> bool {{
    //     true
    // }}
    fn execute(&self, args: Value) -> ToolResult {{
        match args.get("text").and_then(Value::as_str) {{
            Some(text) => ToolResult::ok(text.split_whitespace().count().to_string()),
            None => ToolResult::error("missing required argument `text` (a string)"),
        }}
    }}
}}

/// The factory: the host calls it for every new session.
pub fn agent() -> Agent {{
    Agent::builder("{agent_name}")
        .version(env!("CARGO_PKG_VERSION"))
        .description("An agent created by `myagent-host new`.")
        .system_prompt("You are a helpful assistant. Use the word_count tool to count words.")
        .max_steps(5)
        .tool(WordCount)
        // Tools from an MCP server, beside this agent's own (`use myagent_plugin_api::McpServer`):
        // .mcp_server("files", McpServer::stdio("npx", ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]))
        // Hand the conversation to another agent the host serves (`serve this.so billing.so`):
        // .handoff("billing-assistant")
        // Or ask one as a tool (its answer comes back as the tool's result):
        // .agent_tool("research-assistant")
        .build()
}}

export_agent!(agent);

#[cfg(test)]
mod tests {{
    use super::*;

    // Tools are tested without a host or a model: `Agent::call_tool` runs one as the host would.
    #[test]
    fn word_count_counts_words() {{
        let result = agent().call_tool("word_count", json!({{"text": "one two  three"}}));
        assert_eq!(result.output.as_deref(), Some("3"));
    }}

    #[test]
    fn word_count_needs_text() {{
        assert!(agent().call_tool("word_count", json!({{}})).is_error());
    }}

    #[test]
    fn the_crate_is_named_{lib_name}() {{
        assert_eq!(agent().name(), "{agent_name}");
    }}
}}
"#
    )
}

fn readme(name: &str, lib_name: &str) -> String {
    format!(
        "# {name}\n\nAn agent plugin for myagent-host.\n\n```sh\ncargo test                 # test the tools, no host or model needed\ncargo build                # builds target/debug/lib{lib_name}.so\nmyagent-host serve target/debug/lib{lib_name}.so\n```\n\nRebuild while it is served and the host hot-swaps the agent.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("my_agent").is_ok());
        assert!(validate_name("my-agent2").is_ok());
        assert!(validate_name("2agent").is_err());
        assert!(validate_name("my agent").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn path_dependencies_are_quoted() {
        let dep = ApiSource::Path(PathBuf::from("/a \"b\"/plugin-api")).dependency();
        assert_eq!(
            dep,
            r#"myagent-plugin-api = { path = "/a \"b\"/plugin-api" }"#
        );
    }
}
