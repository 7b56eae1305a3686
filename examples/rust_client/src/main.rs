//! The design document's flow in Rust: connect, create a session, ask, print the agent's events
//! until the final answer.
//!
//! `cargo run -p myagent-example-client -- [ws://localhost:8080] ["What's the weather in Paris?"]`

use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://localhost:8080".into());
    let question = args
        .next()
        .unwrap_or_else(|| "What's the weather in Paris?".into());

    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    ws.send(Message::text(
        json!({"event": "user.create_session"}).to_string(),
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
            "agent.tool_result" => println!("tool result: {content}"),
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
