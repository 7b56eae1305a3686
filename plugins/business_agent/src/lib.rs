//! The design document's business-assistant: `query_database` over a real SQLite database of
//! sample business data (read-only: only queries are accepted) and `send_email`, which delivers
//! into a local Maildir (`<data dir>/maildir/new/`) — a real mail sink any mail client can read.
//!
//! The data directory is `$BUSINESS_AGENT_DATA`, else `./business-data`; the database is created
//! with sample data on first use.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use myagent_plugin_api::{export_agent, json, Agent, Map, Tool, ToolContext, ToolResult, Value};
use rusqlite::{types::ValueRef, Connection, OpenFlags};

/// Rows returned at most; the result says when more matched.
const MAX_ROWS: usize = 100;
/// Bytes of JSON returned at most (the host truncates long outputs anyway, but a huge result
/// would first be built in memory).
const MAX_RESULT_BYTES: usize = 64 * 1024;
/// A query gets this long when called outside the host (the host passes its tool timeout).
const STANDALONE_TIMEOUT: Duration = Duration::from_secs(30);

fn data_dir() -> PathBuf {
    std::env::var_os("BUSINESS_AGENT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("business-data"))
}

const SCHEMA: &str = "
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL,
                     ordered_on TEXT NOT NULL, status TEXT NOT NULL);
INSERT INTO customers VALUES (1,'Acme Corp','orders@acme.example','Berlin'),(2,'Globex','buying@globex.example','Paris'),
  (3,'Initech','it@initech.example','Austin'),(4,'Umbrella','procurement@umbrella.example','Tokyo');
INSERT INTO products VALUES (1,'Widget',1999),(2,'Gadget',4950),(3,'Gizmo',12000);
INSERT INTO orders VALUES (1,1,1,10,'2026-10-01','shipped'),(2,1,3,1,'2026-10-15','pending'),(3,2,2,5,'2026-10-20','shipped'),
  (4,3,1,100,'2026-11-02','pending'),(5,4,3,2,'2026-11-10','cancelled'),(6,2,1,3,'2026-11-18','pending');
";

/// Opens the sample database read-only, creating it first if needed.
fn open_db() -> Result<Connection, String> {
    let dir = data_dir();
    let path = dir.join("business.sqlite");
    if !path.exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!("business.sqlite.{}.tmp", std::process::id()));
        let conn = Connection::open(&tmp).map_err(|e| e.to_string())?;
        conn.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
        drop(conn);
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

pub struct QueryDatabase;

impl Tool for QueryDatabase {
    fn name(&self) -> &str {
        "query_database"
    }
    fn description(&self) -> &str {
        "Run one read-only SQL query (SELECT or WITH) on the business database. Tables: \
         customers(id, name, email, city), products(id, name, price_cents), \
         orders(id, customer_id, product_id, quantity, ordered_on, status). Returns up to 100 rows \
         (64 KiB) as JSON; a query that runs past the tool's deadline is stopped."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"query": {"type": "string", "description": "A single SQL SELECT statement"}}, "required": ["query"]})
    }
    fn execute(&self, args: Value) -> ToolResult {
        self.execute_with(args, &ToolContext::with_timeout(STANDALONE_TIMEOUT))
    }
    fn execute_with(&self, args: Value, ctx: &ToolContext) -> ToolResult {
        let Some(query) = args.get("query").and_then(Value::as_str) else {
            return ToolResult::error("missing required argument `query`");
        };
        let q = query.trim().trim_end_matches(';');
        let first = q
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if first != "select" && first != "with" {
            return ToolResult::error("only read-only queries (SELECT or WITH) are allowed");
        }
        if q.contains(';') {
            return ToolResult::error("send one statement at a time");
        }
        let conn = match open_db() {
            Ok(c) => c,
            Err(e) => return ToolResult::error(format!("database unavailable: {e}")),
        };
        // SQLite calls this every ~1,000 VM instructions; `true` interrupts the statement. A
        // runaway query (a recursive CTE without end, a huge cross join) stops at the deadline
        // or as soon as the host cancels the call, instead of spinning a core forever.
        let watch = ctx.clone();
        if let Err(e) = conn.progress_handler(1000, Some(move || watch.is_cancelled())) {
            return ToolResult::error(format!("database unavailable: {e}"));
        }
        let stopped = |e: rusqlite::Error| {
            if ctx.is_cancelled() {
                let why = match ctx.time_left() {
                    Some(t) if t.is_zero() => "it ran past the tool's time limit",
                    _ => "the call was cancelled",
                };
                ToolResult::error(format!(
                    "query stopped: {why}; make the query cheaper (add a WHERE or LIMIT)"
                ))
            } else {
                ToolResult::error(format!("SQL error: {e}"))
            }
        };
        let mut stmt = match conn.prepare(q) {
            Ok(s) => s,
            Err(e) => return ToolResult::error(format!("SQL error: {e}")),
        };
        if !stmt.readonly() {
            return ToolResult::error("only read-only queries are allowed");
        }
        let cols: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let mut rows = match stmt.query([]) {
            Ok(r) => r,
            Err(e) => return stopped(e),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    if out.len() == MAX_ROWS || bytes > MAX_RESULT_BYTES {
                        return ToolResult::ok(json!({"rows": out, "truncated": true}).to_string());
                    }
                    let mut obj = Map::new();
                    for (i, c) in cols.iter().enumerate() {
                        let v = match row.get_ref(i) {
                            Ok(ValueRef::Null) | Err(_) => Value::Null,
                            Ok(ValueRef::Integer(n)) => json!(n),
                            Ok(ValueRef::Real(f)) => json!(f),
                            Ok(ValueRef::Text(t)) => json!(String::from_utf8_lossy(t)),
                            Ok(ValueRef::Blob(b)) => json!(format!("<{} bytes>", b.len())),
                        };
                        obj.insert(c.clone(), v);
                    }
                    let row = Value::Object(obj);
                    bytes += row.to_string().len() + 1;
                    if bytes > MAX_RESULT_BYTES && !out.is_empty() {
                        return ToolResult::ok(json!({"rows": out, "truncated": true}).to_string());
                    }
                    out.push(row);
                }
                Ok(None) => break,
                Err(e) => return stopped(e),
            }
        }
        ToolResult::ok(json!({"rows": out}).to_string())
    }
}

pub struct SendEmail;

static SEQ: AtomicU64 = AtomicU64::new(0);
/// Longest subject and body accepted.
const MAX_SUBJECT_CHARS: usize = 200;
const MAX_BODY_BYTES: usize = 32 * 1024;
/// Messages per minute, per plugin build (a runaway agent must not flood the mail sink).
const MAX_PER_MINUTE: usize = 20;
static SENT: std::sync::Mutex<Vec<std::time::Instant>> = std::sync::Mutex::new(Vec::new());

/// A header value must be one line of visible text: no control characters at all (a bare `\r`
/// starts a new header for many parsers) and no Unicode line or paragraph separators.
fn header_ok(v: &str) -> bool {
    !v.chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{0085}'))
}

/// Takes a place under the per-minute limit, or says how long until one frees up.
fn rate_limit() -> Result<(), u64> {
    let now = std::time::Instant::now();
    let mut sent = SENT.lock().unwrap_or_else(|p| p.into_inner());
    sent.retain(|t| now.duration_since(*t) < std::time::Duration::from_secs(60));
    if sent.len() >= MAX_PER_MINUTE {
        let wait = 60u64.saturating_sub(now.duration_since(sent[0]).as_secs());
        return Err(wait.max(1));
    }
    sent.push(now);
    Ok(())
}

impl Tool for SendEmail {
    fn name(&self) -> &str {
        "send_email"
    }
    fn description(&self) -> &str {
        "Send an email notification. It is delivered to the local Maildir mail sink."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "to": {"type": "string", "description": "Recipient address"},
            "subject": {"type": "string"},
            "body": {"type": "string"}
        }, "required": ["to", "subject", "body"]})
    }
    /// Mail leaves the building: a person approves each one first.
    fn needs_approval(&self) -> bool {
        true
    }
    fn execute(&self, args: Value) -> ToolResult {
        let field = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(to), Some(subject), Some(body)) = (field("to"), field("subject"), field("body"))
        else {
            return ToolResult::error("`to`, `subject` and `body` are required strings");
        };
        let valid = to.split_once('@').is_some_and(|(u, d)| {
            !u.is_empty() && d.contains('.') && !to.contains(char::is_whitespace)
        });
        if !valid {
            return ToolResult::error(format!("`{to}` is not an email address"));
        }
        if !header_ok(&to) || !header_ok(&subject) {
            return ToolResult::error(
                "`to` and `subject` must be one line of text without control characters",
            );
        }
        if subject.chars().count() > MAX_SUBJECT_CHARS || body.len() > MAX_BODY_BYTES {
            return ToolResult::error(format!(
                "too long: the subject may have {MAX_SUBJECT_CHARS} characters, the body {MAX_BODY_BYTES} bytes"
            ));
        }
        if let Err(wait) = rate_limit() {
            return ToolResult::error(format!(
                "rate limit: at most {MAX_PER_MINUTE} emails a minute; try again in {wait} s"
            ));
        }
        let maildir = data_dir().join("maildir");
        for sub in ["tmp", "new", "cur"] {
            if let Err(e) = std::fs::create_dir_all(maildir.join(sub)) {
                return ToolResult::error(format!("mail sink unavailable: {e}"));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Unique across processes and reloads (each build has its own SEQ): seconds, then
        // microseconds, pid and sequence, as Maildir's naming convention suggests.
        let name = format!(
            "{}.M{}P{}Q{}.myagent",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let message = format!(
            "From: business-assistant <agent@localhost>\r\nTo: {to}\r\nSubject: {subject}\r\nX-Mailer: myagent business_agent\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
        );
        // Maildir delivery: write in tmp/ (never over an existing file), then rename into new/
        // (atomic for readers).
        let tmp = maildir.join("tmp").join(&name);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(message.as_bytes())?;
            std::fs::rename(&tmp, maildir.join("new").join(&name))
        };
        if let Err(e) = write() {
            return ToolResult::error(format!("delivery failed: {e}"));
        }
        ToolResult::ok(format!("Email to {to} delivered (message {name})"))
    }
}

pub fn business_assistant() -> Agent {
    Agent::builder("business-assistant")
        .version(env!("CARGO_PKG_VERSION"))
        .description("Queries the business database and sends email notifications.")
        .system_prompt(
            "You are a business assistant. You can query the company database (customers, products, \
             orders) with query_database and send email notifications with send_email.",
        )
        .next_step_prompt("Use query_database to look things up and send_email to notify people.")
        .max_steps(10)
        .enable_tracing(true)
        .tool(QueryDatabase)
        .tool(SendEmail)
        // Weather questions go to the weather agent, when the host serves it too
        // (`myagent-host serve libbusiness_agent.so libweather_agent.so`).
        .handoff("weather-assistant")
        .build()
}

export_agent!(business_assistant);

#[cfg(test)]
mod tests {
    use super::*;

    /// The data directory comes from the environment: tests that set it run one at a time.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn queries_read_and_writes_are_refused_and_mail_lands_in_the_maildir() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("business-test-{}", std::process::id()));
        std::env::set_var("BUSINESS_AGENT_DATA", &dir);
        let agent = business_assistant();
        let r = agent.call_tool(
            "query_database",
            json!({"query": "SELECT name FROM customers WHERE city = 'Paris'"}),
        );
        assert_eq!(r.output.as_deref(), Some(r#"{"rows":[{"name":"Globex"}]}"#));
        for bad in [
            "DELETE FROM orders",
            "SELECT 1; DROP TABLE orders",
            "UPDATE orders SET status='x'",
        ] {
            assert!(
                agent
                    .call_tool("query_database", json!({ "query": bad }))
                    .is_error(),
                "{bad}"
            );
        }
        let r = agent.call_tool(
            "send_email",
            json!({"to": "a@b.example", "subject": "Hi", "body": "Order shipped"}),
        );
        assert!(!r.is_error(), "{r:?}");
        let new: Vec<_> = std::fs::read_dir(dir.join("maildir/new"))
            .unwrap()
            .collect();
        assert_eq!(new.len(), 1);
        assert!(agent
            .call_tool(
                "send_email",
                json!({"to": "nobody", "subject": "x", "body": "y"})
            )
            .is_error());
        // Header injection in every spelling, and oversized bodies: refused, nothing delivered.
        for (to, subject) in [
            ("a@b.example", "Invoice\rBcc: attacker@evil.example"),
            ("a@b.example", "Invoice\nBcc: attacker@evil.example"),
            ("a@b.example", "Invoice\u{2028}Bcc: attacker@evil.example"),
            ("a@b.example\rBcc: x@evil.example", "Hi"),
            ("a@b.example", "tab\tinside"),
        ] {
            let r = agent.call_tool(
                "send_email",
                json!({"to": to, "subject": subject, "body": "x"}),
            );
            assert!(r.is_error(), "{subject:?} was accepted");
        }
        let r = agent.call_tool(
            "send_email",
            json!({"to": "a@b.example", "subject": "Hi", "body": "x".repeat(3_000_000)}),
        );
        assert!(r.error.unwrap().contains("too long"));
        assert_eq!(
            std::fs::read_dir(dir.join("maildir/new")).unwrap().count(),
            1
        );
        // The per-minute limit (one was sent above).
        let mut refused = None;
        for i in 0..MAX_PER_MINUTE {
            let r = agent.call_tool(
                "send_email",
                json!({"to": "a@b.example", "subject": "n", "body": "x"}),
            );
            if r.is_error() {
                refused = Some((i, r.error.unwrap()));
                break;
            }
        }
        let (i, why) = refused.expect("the rate limit never refused");
        assert_eq!(i, MAX_PER_MINUTE - 1);
        assert!(why.contains("rate limit"), "{why}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_runaway_query_stops_at_its_deadline_and_big_results_are_cut() {
        let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("business-test-cte-{}", std::process::id()));
        std::env::set_var("BUSINESS_AGENT_DATA", &dir);
        let agent = business_assistant();
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let t0 = std::time::Instant::now();
        let ctx = ToolContext::with_timeout(Duration::from_millis(300));
        let r = agent.call_tool_with("query_database", json!({ "query": endless }), &ctx);
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(
            r.error.as_deref().unwrap_or("").contains("time limit"),
            "{r:?}"
        );

        // Cancelled from another thread, as the host does on user cancel.
        let ctx = ToolContext::detached();
        let c2 = ctx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.cancel();
        });
        let r = agent.call_tool_with("query_database", json!({ "query": endless }), &ctx);
        assert!(
            r.error.as_deref().unwrap_or("").contains("cancelled"),
            "{r:?}"
        );

        let big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50) SELECT x, printf('%.5000c', 'y') AS pad FROM c";
        let r = agent.call_tool("query_database", json!({ "query": big }));
        let out: Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
        assert_eq!(out["truncated"], true);
        assert!(r.output.unwrap().len() < MAX_RESULT_BYTES + 6_000);
        let _ = std::fs::remove_dir_all(dir);
    }
}
