"""The design document's Python client (the `websockets` library), unchanged in its flow:
connect, create a session, send a message, print events until the final answer.

    python3 examples/clients/python_client.py [--approve | --deny] [ws://localhost:8080] ["查询上海天气"]

A tool call that needs approval (agent.tool_approval_required) is approved with --approve,
denied with --deny, else asked about on the terminal (denied when there is none).

As in the document, it asks "查询上海天气" ("look up the weather in Shanghai") by default;
`make run` without a key answers it from the demo recording.
"""
import asyncio
import json
import sys
from datetime import datetime, timezone

import websockets


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


async def decide(message: dict, policy: str) -> dict:
    """The answer to an approval request: by `policy`, else the user's, on the terminal."""
    tool, args = message["metadata"]["tool"], message["metadata"]["args"]
    if policy == "ask" and sys.stdin.isatty():
        reply = await asyncio.to_thread(input, f"approve {tool} {json.dumps(args)}? [y/N] ")
        approved = reply.strip().lower() in ("y", "yes")
    else:
        approved = policy == "approve"
    print("approval:", tool, "approved" if approved else "denied")
    return {
        "event": "user.tool_approval",
        "session_id": message["session_id"],
        "step_id": message["step_id"],
        "approved": approved,
        "reason": None if approved else "denied by the user of python_client.py",
        "timestamp": now(),
    }


async def main(url: str, question: str, policy: str = "ask") -> None:
    reasoning = False  # in the middle of a streamed line of reasoning

    def say(*parts: object) -> None:
        nonlocal reasoning
        if reasoning:
            print()
            reasoning = False
        print(*parts)

    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "user.create_session", "timestamp": now(), "capabilities": ["tool_approval"]}))
        async for raw in ws:
            message = json.loads(raw)
            event = message["event"]
            if event == "agent.session_created":
                await ws.send(json.dumps({
                    "event": "user.message",
                    "session_id": message["session_id"],
                    "content": question,
                    "timestamp": now(),
                }))
            elif event == "agent.thinking" and message.get("metadata", {}).get("delta"):
                # The agent's reasoning, streamed: print it as it comes.
                if not reasoning:
                    print("reasoning: ", end="")
                    reasoning = True
                print(message["content"], end="", flush=True)
            elif event == "agent.thinking":
                say("thinking:", message["content"])
            elif event == "agent.tool_call":
                say("tool call:", message["metadata"]["tool"], message["metadata"]["args"])
            elif event == "agent.tool_approval_required":
                say("approval required:", message["metadata"]["tool"], message["metadata"]["args"])
                await ws.send(json.dumps(await decide(message, policy)))
            elif event == "agent.tool_result":
                say("tool result:", message["content"])
            elif event == "agent.usage":
                say("usage:", usage_line(message["run"]), "· session:", usage_line(message["session"]))
            elif event == "agent.final_answer":
                say("answer:", message["content"])
                break
            elif event == "agent.error":
                say("error:", message["error"])
                sys.exit(1)


def usage_line(u):
    """`agent.usage`'s totals in one line: tokens in and out, model calls, dollars if priced."""
    line = f"{u['input_tokens']} in / {u['output_tokens']} out tokens, {u['model_calls']} model call(s)"
    if "cost_usd" in u:
        line += f", ${u['cost_usd']:.6f}"
    return line + (" (estimated)" if u.get("estimated") else "")


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    rest = [a for a in sys.argv[1:] if not a.startswith("--")]
    unknown = set(flags) - {"--approve", "--deny"}
    if unknown or len(flags) > 1:
        sys.exit(f"usage: {sys.argv[0]} [--approve | --deny] [URL] [QUESTION]")
    policy = flags[0][2:] if flags else "ask"
    url = rest[0] if rest else "ws://localhost:8080"
    question = rest[1] if len(rest) > 1 else "查询上海天气"
    asyncio.run(main(url, question, policy))
