"""The A2A door driven by the official Python client (a2a-sdk, pinned in
examples/clients/requirements.txt), against real hosts and the local fake model.

Environment: HOST_URL (an anonymous host), AUTH_HOST_URL (a host with a principal whose token
is TOKEN, and --require-approval get_weather), LLM_URL (fake-llm, scripted through /_control).
Prints one "ok - ..." line per check; any failure exits non-zero.
"""

import asyncio
import json
import os
import sys
import uuid

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)

HOST = os.environ["HOST_URL"]
AUTH_HOST = os.environ["AUTH_HOST_URL"]
TOKEN = os.environ["TOKEN"]
LLM = os.environ["LLM_URL"]


def script(steps):
    httpx.post(LLM + "/_control/script", content=json.dumps(steps)).raise_for_status()


def model_requests():
    return httpx.get(LLM + "/_control/requests").json()


def request(text, context_id=None, task_id=None, blocking=True, history=None):
    m = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)])
    if context_id:
        m.context_id = context_id
    if task_id:
        m.task_id = task_id
    r = SendMessageRequest(message=m)
    r.configuration.return_immediately = not blocking
    if history is not None:
        r.configuration.history_length = history
    return r


async def connect(url, streaming=True, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.AsyncClient(headers=headers, timeout=30)
    return await ClientFactory(ClientConfig(streaming=streaming, httpx_client=http)).create_from_url(url)


def state_name(s):
    return TaskState.Name(s)


async def collect(stream):
    """Every StreamResponse of a send or subscribe, in order."""
    return [e async for e in stream]


def answer_of(events):
    """The answer the artifact updates spell (append or replace), and the states seen."""
    text, states = "", []
    for e in events:
        if e.HasField("task"):
            states.append(state_name(e.task.status.state))
            text = "".join(p.text for a in e.task.artifacts for p in a.parts)
        elif e.HasField("status_update"):
            states.append(state_name(e.status_update.status.state))
        elif e.HasField("artifact_update"):
            piece = "".join(p.text for p in e.artifact_update.artifact.parts)
            text = text + piece if e.artifact_update.append else piece
    return text, states


def check(cond, what):
    if not cond:
        print(f"FAILED - {what}", flush=True)
        sys.exit(1)


async def main():
    # Card discovery: the client finds the JSON-RPC endpoint from the card alone.
    async with httpx.AsyncClient() as h:
        card = (await h.get(HOST + "/.well-known/agent-card.json")).json()
    check(card["capabilities"]["streaming"] is True, f"card says streaming: {card}")
    check(any(s["name"] == "get_weather" for s in card["skills"]), "the tools are skills")
    check(card["supportedInterfaces"][0]["protocolBinding"] == "JSONRPC", "JSON-RPC interface")
    print("ok - agent card discovered: " + card["name"], flush=True)

    blocking = await connect(HOST, streaming=False)
    script([{"text": "Paris is sunny."}])
    [r] = await collect(blocking.send_message(request("Weather in Paris?")))
    task = r.task
    check(state_name(task.status.state) == "TASK_STATE_COMPLETED", f"blocking send completes: {task}")
    check("".join(p.text for p in task.artifacts[0].parts) == "Paris is sunny.", f"answer artifact: {task}")
    print("ok - a blocking send returns the completed task with its answer as artifact", flush=True)

    got = await blocking.get_task(GetTaskRequest(id=task.id))
    check(got.id == task.id and state_name(got.status.state) == "TASK_STATE_COMPLETED", f"GetTask: {got}")
    check(got.history[0].parts[0].text == "Weather in Paris?", f"history: {got.history}")
    print("ok - GetTask after the fact", flush=True)

    # A context continued: the second message's model request carries the first exchange.
    script([{"text": "Still sunny tomorrow."}])
    [r2] = await collect(blocking.send_message(request("And tomorrow?", context_id=task.context_id)))
    check(r2.task.context_id == task.context_id and r2.task.id != task.id, "same context, new task")
    said = [m.get("content") for m in model_requests()[-1]["messages"]]
    check("Weather in Paris?" in said and "Paris is sunny." in said and "And tomorrow?" in said, f"history reaches the model: {said}")
    listed = await blocking.list_tasks(ListTasksRequest(context_id=task.context_id))
    check({t.id for t in listed.tasks} == {task.id, r2.task.id}, f"ListTasks by context: {listed}")
    print("ok - a context continued over two messages, with its history", flush=True)

    streaming = await connect(HOST)
    script([{"tool_calls": [{"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}]},
            {"text": "In Oslo it is " + "quite " * 30 + "cold.", "chunk_chars": 8}])
    events = await collect(streaming.send_message(request("Weather in Oslo?")))
    text, states = answer_of(events)
    check(states[0] == "TASK_STATE_SUBMITTED" and "TASK_STATE_WORKING" in states, f"states: {states}")
    check(states[-1] == "TASK_STATE_COMPLETED", f"ends completed: {states}")
    final = events[-1].status_update.status.message.parts[0].text
    check(text == final and final.startswith("In Oslo it is quite"), f"streamed artifact {text!r} = answer {final!r}")
    check(sum(1 for e in events if e.HasField("artifact_update")) > 3, "the answer streamed in pieces")
    print(f"ok - a streamed send: {len(events)} events, WORKING ... COMPLETED, the answer as an appended artifact", flush=True)

    # A dropped stream, then SubscribeToTask: the rest, no duplicates.
    script([{"text": "word " * 120, "chunk_chars": 5, "delay_ms": 25}])
    first, task_id = [], None
    async for e in streaming.send_message(request("Talk for a while")):
        first.append(e)
        task_id = task_id or e.task.id
        if len(first) == 4:
            break  # the client goes away mid-answer
    rest = await collect(streaming.subscribe(SubscribeToTaskRequest(id=task_id)))
    text, states = answer_of(rest)
    check(rest[0].HasField("task"), "a resubscription starts with the task")
    check(text == "word " * 120, f"snapshot + rest = the answer, once: {len(text)} chars")
    check(states[-1] == "TASK_STATE_COMPLETED", f"the resubscribed stream ends completed: {states}")
    print("ok - SubscribeToTask after a dropped stream gets the rest, without duplicates", flush=True)

    # CancelTask on a long run: CANCELED, and the model stream stops.
    script([{"text": "slow " * 400, "chunk_chars": 5, "delay_ms": 50}])
    [started] = await collect(blocking.send_message(request("A long one", blocking=False)))
    await asyncio.sleep(0.5)
    running = await blocking.get_task(GetTaskRequest(id=started.task.id))
    check(state_name(running.status.state) == "TASK_STATE_WORKING", f"still working before the cancel: {running}")
    canceled = await blocking.cancel_task(CancelTaskRequest(id=started.task.id))
    check(state_name(canceled.status.state) == "TASK_STATE_CANCELED", f"canceled: {canceled.status}")
    def answer_len(task):
        return sum(len(p.text) for a in task.artifacts for p in a.parts)
    cut = answer_len(canceled)
    await asyncio.sleep(1.0)  # 20 more chunks' time: a model stream still read would grow it
    got = await blocking.get_task(GetTaskRequest(id=started.task.id))
    check(state_name(got.status.state) == "TASK_STATE_CANCELED", "stays canceled")
    check(answer_len(got) == cut < len("slow " * 400), f"the answer stopped where it was cut: {cut} then {answer_len(got)}")
    try:
        await blocking.cancel_task(CancelTaskRequest(id=started.task.id))
        check(False, "a second cancel is refused")
    except TaskNotCancelableError as e:
        check("cancel" in str(e).lower(), f"not cancelable: {e}")
    print("ok - CancelTask on a long run: CANCELED (the model stream stopped); a finished task is not cancelable", flush=True)

    try:
        await blocking.get_task(GetTaskRequest(id="no-such-task"))
        check(False, "an unknown task is an error")
    except TaskNotFoundError as e:
        check("not found" in str(e).lower(), f"task not found: {e}")
    print("ok - an unknown task: TaskNotFound", flush=True)

    # Auth: refused without a token, served with one.
    try:
        anon = await connect(AUTH_HOST, streaming=False)
        await collect(anon.send_message(request("hi")))
        check(False, "a host that takes tokens refuses a call without one")
    except A2AClientError as e:
        check("401" in str(e), f"401 without a token: {e}")
    print("ok - auth refused without a token", flush=True)

    # An approval round trip through INPUT_REQUIRED (the host requires approval of get_weather).
    authed = await connect(AUTH_HOST, token=TOKEN)
    script([{"tool_calls": [{"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}]},
            {"text": "Rome is warm."},
            {"tool_calls": [{"name": "get_weather", "arguments": "{\"city\": \"Bern\"}"}]},
            {"text": "I was not allowed to look."}])
    events = await collect(authed.send_message(request("Weather in Rome?")))
    _, states = answer_of(events)
    check(states[-1] == "TASK_STATE_INPUT_REQUIRED", f"waits for input: {states}")
    asked = events[-1].status_update.status.message
    check("get_weather" in asked.parts[0].text, f"says what waits: {asked}")
    tid = events[-1].status_update.task_id
    events = await collect(authed.send_message(request("approve", task_id=tid)))
    text, states = answer_of(events)
    check(states[-1] == "TASK_STATE_COMPLETED" and text == "Rome is warm.", f"approved: {states} {text!r}")
    tool_msgs = [m for m in model_requests()[-1]["messages"] if m.get("role") == "tool"]
    check("Rome" in tool_msgs[-1]["content"], f"the tool ran: {tool_msgs}")
    events = await collect(authed.send_message(request("Weather in Bern?")))
    tid = events[-1].status_update.task_id
    events = await collect(authed.send_message(request("deny not now", task_id=tid)))
    text, states = answer_of(events)
    check(states[-1] == "TASK_STATE_COMPLETED" and text == "I was not allowed to look.", f"denied: {states} {text!r}")
    tool_msgs = [m for m in model_requests()[-1]["messages"] if m.get("role") == "tool"]
    check("denied" in tool_msgs[-1]["content"], f"the model is told it was denied: {tool_msgs}")
    print("ok - an approval round trip through INPUT_REQUIRED (approved and denied)", flush=True)
    print("ok - done", flush=True)


asyncio.run(main())
