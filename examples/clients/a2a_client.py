"""Calls a myagent-host agent over A2A with the official Python client (a2a-sdk): discovers the
agent from its card, streams a task and prints what it does — its tool calls, the answer as it
arrives, the final state and usage.

    python a2a_client.py http://localhost:8080 "What's the weather in Paris?" [--token T]
"""

import argparse
import asyncio
import uuid

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf.json_format import MessageToDict


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url", nargs="?", default="http://localhost:8080")
    ap.add_argument("question", nargs="?", default="What's the weather in Paris?")
    ap.add_argument("--token", help="the host's token for you (Authorization: Bearer)")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        client = await ClientFactory(ClientConfig(httpx_client=http)).create_from_url(args.url)
        message = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=args.question)])
        answer = ""
        async for event in client.send_message(SendMessageRequest(message=message)):
            if event.HasField("status_update"):
                status = event.status_update.status
                meta = MessageToDict(status.message.metadata) if status.HasField("message") else {}
                if "tool" in meta and "args" in meta:
                    print(f"tool call: {meta['tool']} {meta['args']}")
                state = TaskState.Name(status.state)
                if state in ("TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_INPUT_REQUIRED"):
                    usage = MessageToDict(event.status_update.metadata).get("usage", {})
                    print(f"state: {state}")
                    if usage:
                        print(f"usage: {int(usage.get('input_tokens', 0))} in / {int(usage.get('output_tokens', 0))} out tokens")
            elif event.HasField("artifact_update"):
                piece = "".join(p.text for p in event.artifact_update.artifact.parts)
                answer = answer + piece if event.artifact_update.append else piece
        print(f"answer: {answer}")


asyncio.run(main())
