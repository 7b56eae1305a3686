"""The design document's Python client (the `websockets` library), unchanged in its flow:
connect, create a session, send a message, print events until the final answer.

    python3 examples/clients/python_client.py [ws://localhost:8080] ["查询上海天气"]

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


async def main(url: str, question: str) -> None:
    reasoning = False  # in the middle of a streamed line of reasoning

    def say(*parts: object) -> None:
        nonlocal reasoning
        if reasoning:
            print()
            reasoning = False
        print(*parts)

    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "user.create_session", "timestamp": now()}))
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
            elif event == "agent.tool_result":
                say("tool result:", message["content"])
            elif event == "agent.final_answer":
                say("answer:", message["content"])
                break
            elif event == "agent.error":
                say("error:", message["error"])
                sys.exit(1)


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "ws://localhost:8080"
    question = sys.argv[2] if len(sys.argv) > 2 else "查询上海天气"
    asyncio.run(main(url, question))
