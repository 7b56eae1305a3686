//! `fake-llm`: a local OpenAI-compatible `/v1/chat/completions` server for tests, benchmarks
//! and demos. It speaks the real streaming wire format (SSE chunks, tool-call fragments keyed
//! by index, a usage chunk, `[DONE]`) and can be scripted per test.
//!
//! Usage: `fake-llm [--port N] [--token-delay-ms N]` — prints `listening on 127.0.0.1:PORT`.
//!
//! What it answers, for each request:
//! 1. the next queued *script step*, if any (`POST /_control/script` with a JSON array of steps;
//!    see [`myagent_tests::fake::Step`]), else
//! 2. the *auto* model: directives in the user's message (`call:TOOL {json}`, `say:TEXT`,
//!    `stream:N`, `bench:N`), a weather question when a `get_weather` tool is offered, or an
//!    answer built from the tool results that follow its last tool call.
//!
//! `GET /_control/requests` returns every request body received, for assertions;
//! `GET /_control/traceparents` each one's `traceparent` header (null when it had none).

use myagent_tests::fake;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut port = 0u16;
    let mut token_delay_ms = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--port N"))?
            }
            "--token-delay-ms" => {
                token_delay_ms = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--token-delay-ms N"))?
            }
            "-h" | "--help" => {
                println!("fake-llm [--port N] [--token-delay-ms N]\nA local OpenAI-compatible test server; see the source for the script format.");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let listener = myagent_host::server::listen(&format!("127.0.0.1:{port}")).await?;
    println!("listening on {}", listener.local_addr()?);
    fake::serve(listener, fake::Options { token_delay_ms }).await;
    Ok(())
}
