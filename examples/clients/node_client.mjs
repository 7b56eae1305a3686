// The document's flow with Node's `ws` package: connect, create a session, ask, print the
// agent's events until the final answer.
//
//   npm ci && node node_client.mjs [ws://localhost:8080] ["What's the weather in Paris?"]
import WebSocket from "ws";

const url = process.argv[2] || "ws://localhost:8080";
const question = process.argv[3] || "What's the weather in Paris?";
const ws = new WebSocket(url);
let reasoning = false; // in the middle of a streamed line of reasoning
const say = (...parts) => {
  if (reasoning) { process.stdout.write("\n"); reasoning = false; }
  console.log(...parts);
};

ws.on("open", () => {
  ws.send(JSON.stringify({ event: "user.create_session", timestamp: new Date().toISOString() }));
});

ws.on("message", (data) => {
  const message = JSON.parse(data.toString());
  switch (message.event) {
    case "agent.session_created":
      ws.send(JSON.stringify({
        event: "user.message",
        session_id: message.session_id,
        content: question,
        timestamp: new Date().toISOString(),
      }));
      break;
    case "agent.thinking":
      if (message.metadata && message.metadata.delta) {
        // The agent's reasoning, streamed: print it as it comes.
        if (!reasoning) { process.stdout.write("reasoning: "); reasoning = true; }
        process.stdout.write(message.content);
      } else {
        say("thinking:", message.content);
      }
      break;
    case "agent.tool_call":
      say("tool call:", message.metadata.tool, JSON.stringify(message.metadata.args));
      break;
    case "agent.tool_result":
      say("tool result:", message.content);
      break;
    case "agent.final_answer":
      say("answer:", message.content);
      ws.close();
      break;
    case "agent.error":
      console.error("error:", message.error);
      process.exitCode = 1;
      ws.close();
      break;
  }
});

ws.on("error", (e) => {
  console.error("connection failed:", e.message);
  process.exitCode = 1;
});
