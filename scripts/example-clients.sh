#!/usr/bin/env bash
# Runs the example clients against a real host serving the weather agent, with the fake model.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
[ -n "${SKIP_BUILD:-}" ] || ${CARGO:-cargo} build -q -j2 -p myagent-host -p weather_agent -p myagent-tests -p myagent-example-client
PY=$(scripts/python-env.sh)
cleanup() { kill "${HOST_PID:-}" "${LLM_PID:-}" "${DEMO_PID:-}" "${APPROVE_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT
"$BIN/fake-llm" --port 0 > /tmp/myagent-fake-llm.$$ &
LLM_PID=$!
for _ in $(seq 50); do grep -q listening /tmp/myagent-fake-llm.$$ 2>/dev/null && break; sleep 0.1; done
LLM_ADDR=$(sed -n 's/listening on //p' /tmp/myagent-fake-llm.$$)
"$BIN/myagent-host" serve "$BIN/libweather_agent.so" --port 0 --host 127.0.0.1 --no-watch --store memory \
  --base-url "http://$LLM_ADDR/v1" > /tmp/myagent-host.$$ 2>/dev/null &
HOST_PID=$!
for _ in $(seq 100); do grep -q "Serving on" /tmp/myagent-host.$$ 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' /tmp/myagent-host.$$)
URL="ws://127.0.0.1:$PORT"
check() { # name, output
  echo "--- $1"; echo "$2"
  grep -q "tool call: get_weather" <<< "$2" && grep -q "answer: .*Paris: " <<< "$2" \
    && grep -q "^usage: [0-9]* in / [0-9]* out tokens, 2 model call(s)" <<< "$2" \
    && grep -q "^reasoning: Let me look up the weather in Paris" <<< "$2" \
    || { echo "$1: expected the reasoning, a get_weather call, a usage line and an answer about Paris" >&2; exit 1; }
}
check "python (websockets)" "$("$PY" examples/clients/python_client.py "$URL" "What's the weather in Paris?")"
if [ -d examples/clients/node_modules/ws ]; then
  check "node (ws)" "$(node examples/clients/node_client.mjs "$URL" "What's the weather in Paris?")"
elif [ "${MYAGENT_REQUIRE_NODE_CLIENT:-0}" = 1 ]; then
  echo "node client: run npm ci in examples/clients" >&2; exit 1
else
  echo "--- node (ws): SKIPPED (run npm ci in examples/clients)"
fi
check "rust (tokio-tungstenite)" "$("$BIN/rust-client" "$URL" "What's the weather in Paris?")"
# The same agent over A2A, with the official Python client.
OUT=$("$PY" examples/clients/a2a_client.py "http://127.0.0.1:$PORT" "What's the weather in Paris?")
echo "--- python (a2a-sdk)"; echo "$OUT"
grep -q "tool call: get_weather" <<< "$OUT" && grep -q "answer: .*Paris: " <<< "$OUT" \
  && grep -q "state: TASK_STATE_COMPLETED" <<< "$OUT" && grep -q "^usage: [0-9]* in" <<< "$OUT" \
  || { echo "a2a client: expected a get_weather call, an answer about Paris, the final state and usage" >&2; exit 1; }
# And over AG-UI, with the official TypeScript client (@ag-ui/client's HttpAgent).
if [ -d examples/clients/node_modules/@ag-ui/client ]; then
  OUT=$(node examples/clients/agui_client.mjs "http://127.0.0.1:$PORT" "What's the weather in Paris?")
  echo "--- node (@ag-ui/client)"; echo "$OUT"
  grep -q "tool call: get_weather" <<< "$OUT" && grep -q "answer: .*Paris: " <<< "$OUT" \
    && grep -q "^usage: [0-9]* in" <<< "$OUT" \
    || { echo "agui client: expected a get_weather call, an answer about Paris and usage" >&2; exit 1; }
elif [ "${MYAGENT_REQUIRE_NODE_CLIENT:-0}" = 1 ]; then
  echo "agui client: run npm ci in examples/clients" >&2; exit 1
fi

# Tool approval: a host that requires approval of get_weather; each client approves with
# --approve (the same run as above) and denies with --deny (the tool does not run; the model is
# told, and its answer says so).
"$BIN/myagent-host" serve "$BIN/libweather_agent.so" --port 0 --host 127.0.0.1 --no-watch --store memory \
  --require-approval get_weather --base-url "http://$LLM_ADDR/v1" > /tmp/myagent-approve.$$ 2>/dev/null &
APPROVE_PID=$!
for _ in $(seq 100); do grep -q "Serving on" /tmp/myagent-approve.$$ 2>/dev/null && break; sleep 0.1; done
AURL="ws://127.0.0.1:$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' /tmp/myagent-approve.$$)"
denied() { # name, output
  echo "--- $1"; echo "$2"
  grep -q "approval: get_weather denied" <<< "$2" && grep -q "answer: .*denied this call to .get_weather." <<< "$2" \
    && ! grep -q "Paris: .*°C" <<< "$2" \
    || { echo "$1: expected the call denied, not run, and an answer saying so" >&2; exit 1; }
}
Q="What's the weather in Paris?"
check "python --approve" "$("$PY" examples/clients/python_client.py --approve "$AURL" "$Q")"
denied "python --deny" "$("$PY" examples/clients/python_client.py --deny "$AURL" "$Q")"
if [ -d examples/clients/node_modules/ws ]; then
  check "node --approve" "$(node examples/clients/node_client.mjs --approve "$AURL" "$Q")"
  denied "node --deny" "$(node examples/clients/node_client.mjs --deny "$AURL" "$Q")"
fi
if [ -d examples/clients/node_modules/@ag-ui/client ]; then
  HURL="http${AURL#ws}"
  OUT=$(node examples/clients/agui_client.mjs --approve "$HURL" "$Q")
  echo "--- agui --approve"; echo "$OUT"
  grep -q "approval: get_weather approved" <<< "$OUT" && grep -q "answer: .*Paris: " <<< "$OUT" \
    || { echo "agui --approve: expected the call approved, run, and an answer about Paris" >&2; exit 1; }
  denied "agui --deny" "$(node examples/clients/agui_client.mjs --deny "$HURL" "$Q")"
fi
check "rust --approve" "$("$BIN/rust-client" --approve "$AURL" "$Q")"
denied "rust --deny" "$("$BIN/rust-client" --deny "$AURL" "$Q" </dev/null)"

# What `make run` serves without a key (the demo recording): the document's own client, with its
# own default question, and the document's example questions in Chinese and English.
"$BIN/myagent-host" serve "$BIN/libweather_agent.so" --port 0 --host 127.0.0.1 --no-watch --store memory \
  --replay examples/recordings/weather-demo.jsonl > /tmp/myagent-demo.$$ 2>/dev/null &
DEMO_PID=$!
for _ in $(seq 100); do grep -q "Serving on" /tmp/myagent-demo.$$ 2>/dev/null && break; sleep 0.1; done
DEMO="ws://127.0.0.1:$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' /tmp/myagent-demo.$$)"
demo() { # expected city, then the client's arguments after the URL
  local city=$1; shift
  local out; out=$("$PY" examples/clients/python_client.py "$DEMO" "$@")
  echo "--- demo recording: ${*:-(no question: the client default)}"; echo "$out"
  grep -q "tool call: get_weather" <<< "$out" && grep -q "answer: .*$city" <<< "$out" \
    || { echo "demo recording: expected a get_weather call and an answer about $city" >&2; exit 1; }
}
demo 上海
demo 北京 查询北京天气
demo 上海 上海天气怎么样？
demo 北京 北京今天天气怎么样？
demo Beijing "What's the weather in Beijing?"
demo Shanghai "What's the weather like in Shanghai?"
demo Beijing "How is the weather in Beijing today?"
demo Paris "What's the weather in Paris?"
echo "example clients: ok"
rm -f /tmp/myagent-fake-llm.$$ /tmp/myagent-host.$$ /tmp/myagent-demo.$$ /tmp/myagent-approve.$$
