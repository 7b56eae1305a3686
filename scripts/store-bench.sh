#!/usr/bin/env bash
# The session store's cost on the event path: the same stream against a release host with
# `--store memory`, `--store sqlite:PATH` and `--store redis://…` (a redis-server of its own on
# a free port, if installed), one after the other, ROUNDS times; prints events/s, host-added
# latency and the host's CPU time (and its store writer thread's).
#
#   scripts/store-bench.sh [SESSIONS] [TOKENS] [TOKEN_MS] [ROUNDS]
#   (default 200 × 250 at 20 ms = 50 tokens/s; 300 1000 0 for the unpaced stream)
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-200}; TOKENS=${2:-250}; TOKEN_MS=${3:-20}; ROUNDS=${4:-2}
${CARGO:-cargo} build -q -j2 --release -p myagent-host -p weather_agent -p myagent-tests
DIR=$(mktemp -d)
cleanup() { kill "${HOST:-}" "${LLM:-}" "${REDIS:-}" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
REDIS_URL=""
if command -v redis-server >/dev/null; then
  RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no > "$DIR/redis.log" 2>&1 &
  REDIS=$!
  REDIS_URL="redis://127.0.0.1:$RPORT"
  sleep 0.5
else
  echo "redis-server not found (apt-get install redis-server): the redis rows are skipped"
fi
target/release/fake-llm --port 0 > "$DIR/llm.log" &
LLM=$!
for _ in $(seq 50); do grep -q listening "$DIR/llm.log" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/listening on //p' "$DIR/llm.log")
ticks() { awk '{print $14 + $15}' "$1"; }
run() { # store
  rm -f "$DIR"/s.db*
  target/release/myagent-host serve target/release/libweather_agent.so --host 127.0.0.1 --port 0 \
    --no-watch --answer-holdback 0 --base-url "http://$ADDR/v1" --store "$1" --state-dir "$DIR" > "$DIR/host.log" 2>&1 &
  HOST=$!
  for _ in $(seq 100); do grep -q "Serving on" "$DIR/host.log" && break; sleep 0.1; done
  local port; port=$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' "$DIR/host.log")
  local t0; t0=$(ticks /proc/$HOST/stat)
  target/release/myagent-loadgen stream --url "ws://127.0.0.1:$port" --sessions "$SESSIONS" \
    --tokens "$TOKENS" --token-ms "$TOKEN_MS" --ramp-ms 200 | grep -E "final answers|latency per|agent.ready"
  local writer=0
  for t in /proc/$HOST/task/*; do [ "$(cat "$t/comm")" = session-store ] && writer=$(ticks "$t/stat"); done
  echo "  --store ${1%%:*}: host CPU $(( $(ticks /proc/$HOST/stat) - t0 )) ticks (store writer thread $writer)"
  kill $HOST; wait $HOST 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  run memory
  run "sqlite:$DIR/s.db"
  [ -z "$REDIS_URL" ] || run "$REDIS_URL"
done
