#!/usr/bin/env bash
# The AG-UI benchmark (docs/performance.md): the same load — RUNS runs at once, TOKENS chunks
# each, unpaced — over our WebSocket, over our POST /agui, and over a Python AG-UI server of
# the kind users pick today (benches/agui_pydantic_server.py: a pydantic-ai agent behind
# AGUIAdapter, under uvicorn), all on the same fake model; ROUNDS rounds back to back.
# Usage: scripts/agui-bench.sh   (RUNS=100 TOKENS=300 ROUNDS=2; SKIP_BUILD=1 to reuse target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-100}; TOKENS=${TOKENS:-300}; ROUNDS=${ROUNDS:-2}
[ -n "${SKIP_BUILD:-}" ] || cargo build -q --release -j2 -p myagent-host -p weather_agent -p myagent-tests
PYB=target/py-bench
if ! "$PYB/bin/python" -c "import pydantic_ai, uvicorn" 2>/dev/null; then
  python3 -m venv "$PYB"
  "$PYB/bin/pip" install --quiet --disable-pip-version-check "pydantic-ai-slim[openai,ag-ui]==2.68.0" "uvicorn==0.54.0"
fi
D=$(mktemp -d /tmp/agui-bench.XXXX)
cleanup() { kill "${H:-}" "${LLM:-}" "${PY:-}" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
. scripts/lib/serve.sh
start_fake_llm "$D" "$BIN"
start_host "$D" "$BIN" "$BIN/libweather_agent.so" --store memory
PYPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PYB/bin/python" benches/agui_pydantic_server.py --port "$PYPORT" --base-url "$LLM_URL" > "$D/py.log" 2>&1 & PY=$!
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PYPORT") 2>/dev/null && break; sleep 0.1; done
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  "$BIN/myagent-loadgen" stream --url "ws://127.0.0.1:$HP" --sessions "$RUNS" --tokens "$TOKENS" --token-ms 0 --ramp-ms 0 \
    | grep -iE "events/s|first token|error" | head -4
  "$BIN/myagent-loadgen" agui --url "http://127.0.0.1:$HP/agui" --runs "$RUNS" --tokens "$TOKENS" --label "myagent-host /agui"
  "$BIN/myagent-loadgen" agui --url "http://127.0.0.1:$PYPORT/agui" --runs "$RUNS" --tokens "$TOKENS" --label "pydantic-ai AGUIAdapter"
done
