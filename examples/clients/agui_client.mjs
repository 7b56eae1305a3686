// An AG-UI client of myagent-host, on the official TypeScript client (@ag-ui/client's
// HttpAgent) — what CopilotKit and other AG-UI front ends use underneath. It asks one question
// over POST /agui and prints the run as it streams: reasoning, tool calls and results, the
// answer, and the usage from RUN_FINISHED. An approval interrupt is answered on the next run
// (--approve or --deny), as AG-UI's interrupt contract says.
//
//   npm ci   (in this directory, once)
//   node agui_client.mjs [--approve|--deny] [--token T] http://127.0.0.1:8765 "What's the weather in Paris?"
import { HttpAgent } from "@ag-ui/client";
import { randomUUID } from "node:crypto";

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 1).length > 0 : false;
};
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const approve = flag("--approve");
const deny = flag("--deny");
const token = option("--token") ?? process.env.MYAGENT_TOKEN;
const base = (args[0] ?? "http://127.0.0.1:8765").replace(/^ws/, "http").replace(/\/$/, "");
const question = args[1] ?? "查询上海天气";

const agent = new HttpAgent({
  url: `${base}/agui`,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
  threadId: randomUUID(),
});
agent.addMessage({ id: randomUUID(), role: "user", content: question });

let answer = "";
let reasoning = "";
let interrupts = [];
const subscriber = {
  onReasoningMessageContentEvent: ({ event }) => { reasoning += event.delta; },
  onReasoningEndEvent: () => { if (reasoning) console.log(`reasoning: ${reasoning}`); reasoning = ""; },
  onToolCallEndEvent: ({ toolCallName, toolCallArgs }) =>
    console.log(`tool call: ${toolCallName} ${JSON.stringify(toolCallArgs)}`),
  onToolCallResultEvent: ({ event }) => console.log(`tool result: ${event.content}`),
  onTextMessageStartEvent: () => { answer = ""; },
  onTextMessageContentEvent: ({ event }) => { answer += event.delta; },
  onCustomEvent: ({ event }) => console.log(`custom: ${event.name} ${JSON.stringify(event.value)}`),
  onRunFinishedEvent: ({ event, outcome, interrupts: asked }) => {
    interrupts = outcome === "interrupt" ? asked : [];
    for (const i of interrupts) console.log(`approval needed: ${i.metadata?.tool} ${JSON.stringify(i.metadata?.args)}`);
    const u = event.usage?.[0];
    if (outcome !== "interrupt" && u) console.log(`usage: ${u.inputTokens} in / ${u.outputTokens} out tokens`);
  },
  onRunErrorEvent: ({ event }) => console.log(`error: ${event.code}: ${event.message}`),
};

try {
  await agent.runAgent({ runId: randomUUID() }, subscriber);
  while (interrupts.length > 0) {
    if (!approve && !deny) {
      console.log("the run waits for approval: run again with --approve or --deny");
      process.exit(2);
    }
    const resume = interrupts.map((i) => ({ interruptId: i.id, status: "resolved", payload: { approved: approve, reason: approve ? undefined : "denied by the user" } }));
    for (const i of interrupts) console.log(`approval: ${i.metadata?.tool} ${approve ? "approved" : "denied"}`);
    interrupts = [];
    await agent.runAgent({ runId: randomUUID(), resume }, subscriber);
  }
  console.log(`answer: ${answer}`);
} catch (e) {
  console.error(`AG-UI run failed: ${e.message ?? e}`);
  process.exit(1);
}
