"""The Python AG-UI server the AG-UI benchmark compares ours with: what users pick today — a
pydantic-ai agent behind its AG-UI adapter (`AGUIAdapter.dispatch_request`), under uvicorn,
on the same OpenAI-compatible fake model as our host. Run by scripts/agui-bench.sh:

    python benches/agui_pydantic_server.py --port 8123 --base-url http://127.0.0.1:PORT/v1
"""
import argparse

import uvicorn
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8123)
parser.add_argument("--base-url", required=True)
args = parser.parse_args()

model = OpenAIChatModel("fake-model", provider=OpenAIProvider(base_url=args.base_url, api_key="unused"))
agent = Agent(model, instructions="You are a helpful assistant.")


async def run(request: Request):
    return await AGUIAdapter.dispatch_request(request, agent=agent)


app = Starlette(routes=[Route("/agui", run, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
