// The document's flow with Node's `ws` package: connect, create a session, ask, print the
// agent's events until the final answer.
//
//   npm ci && node node_client.mjs [ws://localhost:8080] ["What's the weather in Paris?"]
import WebSocket from "ws";

const url = process.argv[2] || "ws://localhost:8080";
const question = process.argv[3] || "What's the weather in Paris?";
const ws = new WebSocket(url);

ws.on("open", () => {
  ws.send(JSON.stringify({ event: "user.create_session", timestamp: Date.now() / 1000 }));
});

ws.on("message", (data) => {
  const message = JSON.parse(data.toString());
  switch (message.event) {
    case "agent.session_created":
      ws.send(JSON.stringify({
        event: "user.message",
        session_id: message.session_id,
        content: question,
        timestamp: Date.now() / 1000,
      }));
      break;
    case "agent.thinking":
      console.log("thinking:", message.content);
      break;
    case "agent.tool_call":
      console.log("tool call:", message.metadata.tool, JSON.stringify(message.metadata.args));
      break;
    case "agent.tool_result":
      console.log("tool result:", message.content);
      break;
    case "agent.final_answer":
      console.log("answer:", message.content);
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
