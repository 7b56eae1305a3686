#!/usr/bin/env bash
# Runs the example clients against a real host serving the weather agent, with the fake model.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
cleanup() { kill "${HOST_PID:-}" "${LLM_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT
"$BIN/fake-llm" --port 0 > /tmp/myagent-fake-llm.$$ &
LLM_PID=$!
for _ in $(seq 50); do grep -q listening /tmp/myagent-fake-llm.$$ 2>/dev/null && break; sleep 0.1; done
LLM_ADDR=$(sed -n 's/listening on //p' /tmp/myagent-fake-llm.$$)
"$BIN/myagent-host" serve "$BIN/libweather_agent.so" --port 0 --host 127.0.0.1 --no-watch \
  --base-url "http://$LLM_ADDR/v1" > /tmp/myagent-host.$$ 2>/dev/null &
HOST_PID=$!
for _ in $(seq 100); do grep -q "Serving on" /tmp/myagent-host.$$ 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' /tmp/myagent-host.$$)
out=$(python3 examples/clients/python_client.py "ws://127.0.0.1:$PORT" "What's the weather in Paris?")
echo "$out"
echo "$out" | grep -q "tool call: get_weather" && echo "$out" | grep -q "answer: .*Paris: "
echo "example clients: ok"
rm -f /tmp/myagent-fake-llm.$$ /tmp/myagent-host.$$
