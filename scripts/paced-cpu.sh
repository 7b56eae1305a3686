#!/usr/bin/env bash
# The server's CPU time over one paced token stream (each session's model sends 50 tokens/s):
# starts fake-llm and a fresh host (or the floor) on free ports, streams SESSIONS × 250 tokens
# every 20 ms with the load generator (1 s ramp, answer hold-back 0, SQLite store), and prints
# the server's user and kernel ticks (1/100 s, from /proc), fake-llm's, and the stream's
# host-added latency. For comparing builds or the host with the floor: alternate runs (this
# machine's speed moves between them).
#
#   scripts/paced-cpu.sh [SESSIONS]              (default 300)
#   TARGET=floor scripts/paced-cpu.sh            (myagent-floor instead)
#   BIN=/path/to/release scripts/paced-cpu.sh    (another build)
#   SKIP_BUILD=1 scripts/paced-cpu.sh            (target/release as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-300}
BIN=${BIN:-target/release}
TARGET=${TARGET:-host}
if [ -z "${SKIP_BUILD:-}" ] && [ "$BIN" = target/release ]; then
  cargo build -q -j2 --release -p myagent-host -p weather_agent -p myagent-tests
fi
DIR=$(mktemp -d)
cleanup() { kill "${SERVER:-}" "${LLM:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; exit 1; }
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
"$BIN/fake-llm" --port 0 > "$DIR/llm.log" 2>&1 & LLM=$!
wait_for "$DIR/llm.log" "listening on"
MODEL=$(sed -n 's/.*listening on //p' "$DIR/llm.log" | head -1)
if [ "$TARGET" = floor ]; then
  "$BIN/myagent-floor" --port 0 --base-url "http://$MODEL/v1" > "$DIR/server.log" 2>&1 & SERVER=$!
else
  "$BIN/myagent-host" serve "$BIN/libweather_agent.so" --host 127.0.0.1 --port 0 --no-watch \
    --answer-holdback 0 --base-url "http://$MODEL/v1" --state-dir "$DIR" --store "sqlite:$DIR/s.db" \
    --max-stored-sessions-per-ip 0 > "$DIR/server.log" 2>&1 & SERVER=$!
fi
wait_for "$DIR/server.log" "Serving on"
PORT=$(sed -n 's/.*Serving on ws:\/\/[^ ]*:\([0-9]*\).*/\1/p' "$DIR/server.log" | head -1)
read -r U0 S0 < <(ticks $SERVER)
"$BIN/myagent-loadgen" stream --url "ws://127.0.0.1:$PORT" --sessions "$SESSIONS" --tokens 250 \
  --token-ms 20 --ramp-ms 1000 > "$DIR/stream.log" 2>&1
read -r U1 S1 < <(ticks $SERVER)
read -r FU FS < <(ticks $LLM)
grep -E "final answers|latency per" "$DIR/stream.log" | sed 's/^stream: //'
echo "$TARGET ticks: user $((U1 - U0)), kernel $((S1 - S0)); fake-llm: user $FU, kernel $FS"
