//! The design document's flow in Rust: connect, create a session, ask, print the agent's events
//! until the final answer.
//!
//! `cargo run -p myagent-example-client -- [--approve | --deny] [ws://localhost:8080] ["What's the weather in Paris?"]`
//!
//! A tool call that needs approval (`agent.tool_approval_required`) is approved with `--approve`,
//! denied with `--deny`, else asked about on the terminal (denied when there is none).`

use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (flags, mut args): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| a.starts_with("--"));
    let policy = match flags.as_slice() {
        [] => Policy::Ask,
        [f] if f == "--approve" => Policy::Approve,
        [f] if f == "--deny" => Policy::Deny,
        _ => return Err("usage: rust-client [--approve | --deny] [URL] [QUESTION]".into()),
    };
    args.reverse();
    let url = args.pop().unwrap_or_else(|| "ws://localhost:8080".into());
    let question = args
        .pop()
        .unwrap_or_else(|| "What's the weather in Paris?".into());

    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    ws.send(Message::text(
        json!({"event": "user.create_session", "capabilities": ["tool_approval"]}).to_string(),
    ))
    .await?;
    let mut reasoning = false; // in the middle of a streamed line of reasoning
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let m: Value = serde_json::from_str(&text)?;
        let event = m["event"].as_str().unwrap_or_default();
        let content = m["content"].as_str().unwrap_or_default();
        // Reasoning streams in pieces (`metadata.delta`); anything else starts a new line.
        let piece = event == "agent.thinking" && m["metadata"]["delta"] == true;
        if reasoning && !piece {
            println!();
            reasoning = false;
        }
        match event {
            "agent.session_created" => {
                let ask = json!({"event": "user.message", "session_id": m["session_id"], "content": question});
                ws.send(Message::text(ask.to_string())).await?;
            }
            "agent.thinking" if piece => {
                if !reasoning {
                    print!("reasoning: ");
                    reasoning = true;
                }
                print!("{content}");
                std::io::stdout().flush()?;
            }
            "agent.thinking" => println!("thinking: {content}"),
            "agent.tool_call" => println!(
                "tool call: {} {}",
                m["metadata"]["tool"].as_str().unwrap_or_default(),
                m["metadata"]["args"]
            ),
            "agent.tool_approval_required" => {
                let (tool, args) = (&m["metadata"]["tool"], &m["metadata"]["args"]);
                println!(
                    "approval required: {} {args}",
                    tool.as_str().unwrap_or_default()
                );
                let approved = policy.decide(tool.as_str().unwrap_or_default(), args)?;
                println!(
                    "approval: {} {}",
                    tool.as_str().unwrap_or_default(),
                    if approved { "approved" } else { "denied" }
                );
                let mut reply = json!({"event": "user.tool_approval", "session_id": m["session_id"],
                    "step_id": m["step_id"], "approved": approved});
                if !approved {
                    reply["reason"] = "denied by the user of rust-client".into();
                }
                ws.send(Message::text(reply.to_string())).await?;
            }
            "agent.tool_result" => println!("tool result: {content}"),
            "agent.usage" => println!(
                "usage: {} · session: {}",
                usage_line(&m["run"]),
                usage_line(&m["session"])
            ),
            "agent.final_answer" => {
                println!("answer: {content}");
                ws.close(None).await?;
                return Ok(());
            }
            "agent.error" => return Err(format!("agent error: {}", m["error"]).into()),
            _ => {}
        }
    }
    Err("connection closed before the final answer".into())
}

/// What to do with a tool call that needs approval.
enum Policy {
    Approve,
    Deny,
    /// Ask on the terminal; deny when there is none.
    Ask,
}

impl Policy {
    fn decide(&self, tool: &str, args: &Value) -> std::io::Result<bool> {
        use std::io::IsTerminal;
        match self {
            Policy::Approve => Ok(true),
            Policy::Deny => Ok(false),
            Policy::Ask if !std::io::stdin().is_terminal() => Ok(false),
            Policy::Ask => {
                print!("approve {tool} {args}? [y/N] ");
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Ok(matches!(line.trim().to_lowercase().as_str(), "y" | "yes"))
            }
        }
    }
}

/// `agent.usage`'s totals in one line: tokens in and out, model calls, dollars if priced.
fn usage_line(u: &serde_json::Value) -> String {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let mut line = format!(
        "{} in / {} out tokens, {} model call(s)",
        n("input_tokens"),
        n("output_tokens"),
        n("model_calls")
    );
    if let Some(cost) = u["cost_usd"].as_f64() {
        line.push_str(&format!(", ${cost:.6}"));
    }
    if u["estimated"] == true {
        line.push_str(" (estimated)");
    }
    line
}
