//! One MCP server, kept connected: a supervisor task connects (a child process for a stdio
//! server, HTTP for a streamable-HTTP one), lists the tools, re-lists them on
//! `notifications/tools/list_changed`, and when the connection ends (the process died, the HTTP
//! server went away) marks the server down and connects again with back-off. Calls made while it
//! is down fail at once with a message that says so; its last known tools stay offered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::lines::each_line;

use super::config::ServerSpec;

/// How long connecting and the MCP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long listing the tools may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(20);
/// Restart back-off: from this, doubling, up to [`MAX_BACKOFF`]; reset after a connection that
/// lasted [`STABLE`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(30);

/// A tool as the server lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    pub name: String,
    pub description: String,
    /// The JSON Schema of the arguments (`inputSchema`).
    pub parameters: Value,
}

struct State {
    peer: Option<Peer<RoleClient>>,
    tools: Vec<McpTool>,
    /// Why it is down (None while connected).
    down: Option<String>,
}

pub struct McpServer {
    pub name: String,
    pub spec: ServerSpec,
    state: RwLock<State>,
    /// Woken by `notifications/tools/list_changed`.
    relist: Arc<Notify>,
    /// Woken when a connection attempt ends, either way: connected with its tools listed, or
    /// failed (start-up waits on it).
    attempted: Notify,
    /// Connections made (the first included): more than one means restarts.
    pub connections: AtomicU64,
    /// Bytes of stderr lines past [`MAX_LINE`] dropped (a stdio server).
    pub stderr_dropped: Arc<AtomicU64>,
}

/// Pages of `tools/list` read from one server, at most.
const MAX_PAGES: usize = 16;
/// Tools kept from one server, at most (the rest are left out and logged).
pub(crate) const MAX_TOOLS_PER_SERVER: usize = 128;
/// Bytes of one tool's name, description and input schema, at most (a bigger one is left out:
/// every model request carries it).
const MAX_TOOL_BYTES: usize = 32 * 1024;
/// Bytes of all of one server's tools, at most.
const MAX_LIST_BYTES: usize = 512 * 1024;

/// Every page of the server's tool list, up to [`MAX_PAGES`] (and a little more than
/// [`MAX_TOOLS_PER_SERVER`] tools: the rest is not asked for).
async fn list_bounded(peer: &Peer<RoleClient>) -> Result<Vec<rmcp::model::Tool>, String> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let page = peer
            .list_tools(Some(
                rmcp::model::PaginatedRequestParams::default().with_cursor(cursor),
            ))
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
        tools.extend(page.tools);
        cursor = page.next_cursor;
        if cursor.is_none() || tools.len() > MAX_TOOLS_PER_SERVER {
            break;
        }
    }
    Ok(tools)
}

/// What a server's listing may put in every model request: tools by count and bytes.
#[derive(Default)]
struct ListBounds {
    count: usize,
    bytes: usize,
    left_out: usize,
}

impl ListBounds {
    fn admit(&mut self, server: &str, t: rmcp::model::Tool) -> Option<McpTool> {
        let tool = McpTool {
            name: t.name.to_string(),
            description: t.description.map(|d| d.to_string()).unwrap_or_default(),
            parameters: Value::Object((*t.input_schema).clone()),
        };
        let size = tool.name.len() + tool.description.len() + tool.parameters.to_string().len();
        let why = if self.count >= MAX_TOOLS_PER_SERVER {
            Some(format!("more than {MAX_TOOLS_PER_SERVER} tools"))
        } else if size > MAX_TOOL_BYTES {
            Some(format!(
                "{size} bytes of name, description and schema (at most {MAX_TOOL_BYTES})"
            ))
        } else if self.bytes + size > MAX_LIST_BYTES {
            Some(format!("its tools over {MAX_LIST_BYTES} bytes"))
        } else {
            None
        };
        if let Some(why) = why {
            self.left_out += 1;
            if self.left_out <= 3 {
                tracing::warn!(mcp_server = %server, tool = %tool.name.chars().take(64).collect::<String>(), %why, "MCP tool left out");
            }
            return None;
        }
        self.count += 1;
        self.bytes += size;
        Some(tool)
    }
}

/// Receives the server's notifications; only the tool list's changes matter here.
struct Handler {
    relist: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relist.notify_one();
    }
}

type Running = RunningService<RoleClient, Handler>;

impl McpServer {
    pub fn new(name: String, spec: ServerSpec) -> Arc<McpServer> {
        Arc::new(McpServer {
            name,
            spec,
            state: RwLock::new(State {
                peer: None,
                tools: Vec::new(),
                down: Some("not connected yet".into()),
            }),
            relist: Arc::new(Notify::new()),
            attempted: Notify::new(),
            connections: AtomicU64::new(0),
            stderr_dropped: Arc::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The tools last listed (kept while the server is down).
    pub fn tools(&self) -> Vec<McpTool> {
        self.read().tools.clone()
    }

    /// Why the server is down, or None when it is connected.
    pub fn down(&self) -> Option<String> {
        self.read().down.clone()
    }

    /// Starts the supervisor; returns once the first connection attempt ended (or `wait`).
    pub async fn start(self: &Arc<Self>, shutdown: CancellationToken, wait: Duration) {
        let attempted = self.attempted.notified();
        tokio::pin!(attempted);
        attempted.as_mut().enable();
        // On an async worker thread (they live as long as the runtime): a stdio server's
        // parent-death signal follows the thread that spawned it.
        tokio::spawn(self.clone().supervise(shutdown));
        let _ = tokio::time::timeout(wait, attempted).await;
    }

    async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        while !shutdown.is_cancelled() {
            let began = Instant::now();
            let reason = match self.connect().await {
                Err(e) => {
                    self.write().down = Some(e.clone());
                    self.attempted.notify_waiters();
                    e
                }
                Ok(running) => {
                    self.connections.fetch_add(1, Ordering::Relaxed);
                    self.serve(running, &shutdown).await
                }
            };
            {
                let mut st = self.write();
                st.peer = None;
                st.down = Some(reason.clone());
            }
            if shutdown.is_cancelled() {
                return;
            }
            let wait = backoff.failed_after(began.elapsed(), STABLE);
            tracing::warn!(mcp_server = %self.name, reason = %reason, retry_in_ms = wait.as_millis() as u64,
                "MCP server unavailable; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Lists the tools, then waits for the connection to end (re-listing on notification).
    /// Returns why it ended.
    async fn serve(&self, running: Running, shutdown: &CancellationToken) -> String {
        let peer = running.peer().clone();
        let stop = running.cancellation_token();
        if let Err(e) = self.list(&peer).await {
            self.write().down = Some(e.clone());
            self.attempted.notify_waiters();
            stop.cancel();
            let _ = running.waiting().await;
            return e;
        }
        {
            let mut st = self.write();
            st.peer = Some(peer.clone());
            st.down = None;
        }
        self.attempted.notify_waiters();
        let waiting = running.waiting();
        tokio::pin!(waiting);
        loop {
            tokio::select! {
                r = &mut waiting => {
                    return match r {
                        Ok(reason) => format!("the connection ended ({reason:?})"),
                        Err(e) => format!("the connection failed ({e})"),
                    };
                }
                _ = self.relist.notified() => {
                    if let Err(e) = self.list(&peer).await {
                        tracing::warn!(mcp_server = %self.name, error = %e, "re-listing tools failed");
                    }
                }
                _ = shutdown.cancelled() => {
                    stop.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(3), &mut waiting).await;
                    return "the host is shutting down".into();
                }
            }
        }
    }

    async fn list(&self, peer: &Peer<RoleClient>) -> Result<(), String> {
        let listed = tokio::time::timeout(LIST_TIMEOUT, list_bounded(peer))
            .await
            .map_err(|_| format!("tools/list took longer than {} s", LIST_TIMEOUT.as_secs()))??;
        let mut kept = ListBounds::default();
        let tools: Vec<McpTool> = listed
            .into_iter()
            .filter_map(|t| kept.admit(&self.name, t))
            .collect();
        if kept.left_out > 0 {
            tracing::warn!(mcp_server = %self.name, left_out = kept.left_out, kept = tools.len(),
                "MCP server lists more than the host offers the model; the rest are left out");
        }
        tracing::info!(mcp_server = %self.name, tools = tools.len(), "MCP tools listed");
        self.write().tools = tools;
        Ok(())
    }

    async fn connect(&self) -> Result<Running, String> {
        let handler = Handler {
            relist: self.relist.clone(),
        };
        let connecting = async {
            match &self.spec {
                ServerSpec::Stdio { command, args, env } => {
                    let mut cmd = tokio::process::Command::new(command);
                    cmd.args(args).envs(env).kill_on_drop(true);
                    // SAFETY: prctl in the forked child before exec, async-signal-safe; it only
                    // asks the kernel to kill the child when its parent thread dies, so a stdio
                    // server never outlives the host (even after SIGKILL).
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                            Ok(())
                        });
                    }
                    let (transport, stderr) = TokioChildProcess::builder(cmd)
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
                    if let Some(stderr) = stderr {
                        let (name, dropped) = (self.name.clone(), self.stderr_dropped.clone());
                        tokio::spawn(each_line(stderr, move |line| {
                            dropped.fetch_add(line.dropped as u64, Ordering::Relaxed);
                            tracing::info!(mcp_server = %name, "stderr: {}", line.text);
                        }));
                    }
                    handler
                        .serve(transport)
                        .await
                        .map_err(|e| format!("the MCP handshake failed: {e}"))
                }
                ServerSpec::Http { url, headers } => {
                    let mut custom = HashMap::new();
                    for (k, v) in headers {
                        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                            .map_err(|_| format!("header name `{k}` is not valid"))?;
                        let value = reqwest::header::HeaderValue::from_str(v)
                            .map_err(|_| format!("the value of header `{k}` is not valid"))?;
                        custom.insert(name, value);
                    }
                    let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                        .custom_headers(custom);
                    let transport =
                        StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
                    handler
                        .serve(transport)
                        .await
                        .map_err(|e| format!("cannot connect to {url}: {e}"))
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no MCP handshake within {} s", CONNECT_TIMEOUT.as_secs()))?
    }

    /// Calls `tool`. `Ok((success, text))` is what the model sees; `Err` says why there was no
    /// answer (down, timed out, the connection broke).
    pub async fn call(
        &self,
        tool: &str,
        args: Value,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<(bool, String), String> {
        let peer = {
            let st = self.read();
            match &st.peer {
                Some(p) => p.clone(),
                None => {
                    let why = st.down.clone().unwrap_or_default();
                    return Err(format!(
                        "the MCP server `{}` is not available ({why}); it is being restarted, try again shortly",
                        self.name
                    ));
                }
            }
        };
        let arguments = match args {
            Value::Object(m) => m,
            _ => Default::default(),
        };
        let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        if let Some(tp) = traceparent {
            // W3C trace context in the request's `_meta` (MCP SEP-414), on every transport.
            let mut meta = rmcp::model::RequestMetaObject::default();
            meta.set_traceparent(tp);
            params.meta = Some(meta);
        }
        let result = match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => {
                return Err(format!(
                    "tool `{tool}` on MCP server `{}` timed out after {} ms",
                    self.name,
                    timeout.as_millis()
                ))
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "the MCP server `{}` did not answer: {e}",
                    self.name
                ))
            }
            Ok(Ok(r)) => r,
        };
        // Read through JSON: the content block types are the protocol's, stable on the wire.
        let v = serde_json::to_value(&result).unwrap_or(Value::Null);
        let failed = v["isError"].as_bool().unwrap_or(false);
        Ok((!failed, content_text(&v)))
    }
}

#[cfg(test)]
impl McpServer {
    /// A server that listed `tools` (never connected), for naming tests.
    pub fn listed(name: &str, tools: &[&str]) -> Arc<McpServer> {
        let s = McpServer::new(
            name.into(),
            ServerSpec::Http {
                url: "http://127.0.0.1:9".into(),
                headers: Default::default(),
            },
        );
        s.write().tools = tools
            .iter()
            .map(|t| McpTool {
                name: t.to_string(),
                description: String::new(),
                parameters: serde_json::json!({"type": "object"}),
            })
            .collect();
        s
    }
}

/// The text a tool result carries for the model: its text blocks; what is not text is named
/// (images, audio) or given by its URI (resources); structured content when there is no text.
fn content_text(result: &Value) -> String {
    let mut parts = Vec::new();
    for block in result["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => parts.push(block["text"].as_str().unwrap_or_default().to_owned()),
            Some("image") | Some("audio") => parts.push(format!(
                "[{} content: {}]",
                block["type"].as_str().unwrap_or_default(),
                block["mimeType"].as_str().unwrap_or("unknown type")
            )),
            Some("resource") => {
                let r = &block["resource"];
                match r["text"].as_str() {
                    Some(t) => parts.push(t.to_owned()),
                    None => parts.push(format!("[resource {}]", r["uri"].as_str().unwrap_or("?"))),
                }
            }
            Some("resource_link") => parts.push(format!(
                "[resource link {}]",
                block["uri"].as_str().unwrap_or("?")
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        if let Some(s) = result.get("structuredContent").filter(|s| !s.is_null()) {
            return s.to_string();
        }
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_read_as_text() {
        let r = json!({"content": [
            {"type": "text", "text": "one"},
            {"type": "image", "data": "AAAA", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "text": "inline"}},
            {"type": "resource_link", "uri": "file:///b", "name": "b"}
        ]});
        assert_eq!(
            content_text(&r),
            "one\n[image content: image/png]\ninline\n[resource link file:///b]"
        );
        assert_eq!(
            content_text(&json!({"content": [], "structuredContent": {"t": 1}})),
            "{\"t\":1}"
        );
    }
}
