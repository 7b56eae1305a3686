// The document's flow with Node's `ws` package: connect, create a session, ask, print the
// agent's events until the final answer.
//
//   npm ci && node node_client.mjs [--approve | --deny] [ws://localhost:8080] ["What's the weather in Paris?"]
//
// A tool call that needs approval (agent.tool_approval_required) is approved with --approve,
// denied with --deny, else asked about on the terminal (denied when there is none).
import WebSocket from "ws";
import readline from "node:readline/promises";

const flags = process.argv.slice(2).filter((a) => a.startsWith("--"));
const rest = process.argv.slice(2).filter((a) => !a.startsWith("--"));
if (flags.length > 1 || flags.some((f) => f !== "--approve" && f !== "--deny")) {
  console.error("usage: node node_client.mjs [--approve | --deny] [URL] [QUESTION]");
  process.exit(2);
}
const policy = flags.length ? flags[0].slice(2) : "ask";
const url = rest[0] || "ws://localhost:8080";
const question = rest[1] || "What's the weather in Paris?";

// The answer to an approval request: by the flag, else the user's, on the terminal.
async function decide(message) {
  const { tool, args } = message.metadata;
  let approved = policy === "approve";
  if (policy === "ask" && process.stdin.isTTY) {
    const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
    approved = /^y(es)?$/i.test((await rl.question(`approve ${tool} ${JSON.stringify(args)}? [y/N] `)).trim());
    rl.close();
  }
  console.log("approval:", tool, approved ? "approved" : "denied");
  return {
    event: "user.tool_approval", session_id: message.session_id, step_id: message.step_id, approved,
    ...(approved ? {} : { reason: "denied by the user of node_client.mjs" }),
    timestamp: new Date().toISOString(),
  };
}
const ws = new WebSocket(url);
let reasoning = false; // in the middle of a streamed line of reasoning
const say = (...parts) => {
  if (reasoning) { process.stdout.write("\n"); reasoning = false; }
  console.log(...parts);
};

ws.on("open", () => {
  ws.send(JSON.stringify({ event: "user.create_session", timestamp: new Date().toISOString(), capabilities: ["tool_approval"] }));
});

ws.on("message", async (data) => {
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
    case "agent.tool_approval_required":
      say("approval required:", message.metadata.tool, JSON.stringify(message.metadata.args));
      ws.send(JSON.stringify(await decide(message)));
      break;
    case "agent.tool_result":
      say("tool result:", message.content);
      break;
    case "agent.usage":
      say("usage:", usageLine(message.run), "· session:", usageLine(message.session));
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

/** `agent.usage`'s totals in one line: tokens in and out, model calls, dollars if priced. */
function usageLine(u) {
  let line = `${u.input_tokens} in / ${u.output_tokens} out tokens, ${u.model_calls} model call(s)`;
  if (u.cost_usd !== undefined) line += `, $${u.cost_usd.toFixed(6)}`;
  return line + (u.estimated ? " (estimated)" : "");
}
