#!/bin/bash
# Where the host spends its time under the WebSocket stream load and under the same load over
# POST /agui (issue 28): `perf record -g` of a release host (`--store memory`) for 6 s of each,
# then the top symbols of both side by side in target/agui-profile/{ws,agui}.txt.
# Usage: scripts/agui-profile.sh   (after `cargo build --release -j2 -p myagent-host -p
#        weather_agent -p myagent-tests`; needs `perf`, and perf_event_paranoid allowing it)
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=target/agui-profile
mkdir -p "$OUT"
D=$(mktemp -d /tmp/agui-profile.XXXX)
cleanup() { kill "${H:-}" "${LLM:-}" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
. scripts/lib/serve.sh
start_fake_llm "$D" "$BIN"
start_host "$D" "$BIN" "$BIN/libweather_agent.so" --store memory
load() {
  if [ "$1" = ws ]; then
    "$BIN/myagent-loadgen" stream --url "ws://127.0.0.1:$HP" --sessions 100 --tokens 300 --token-ms 0 --ramp-ms 0 | grep -E "events/s" | head -1
  else
    "$BIN/myagent-loadgen" agui --url "http://127.0.0.1:$HP/agui" --runs 100 --tokens 300 --label agui | grep "events/s"
  fi
}
load ws > /dev/null; load agui > /dev/null   # warm-up
for kind in ws agui; do
  perf record -F 2000 -g -p "$H" -o "$D/$kind.data" -- sleep 6 > /dev/null 2>&1 & P=$!
  sleep 0.5
  for _ in 1 2 3 4 5 6 7 8; do load "$kind"; done
  wait "$P"
  perf report -i "$D/$kind.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v "^#" | grep "%" | head -60 > "$OUT/$kind.txt"
  echo "$kind: $OUT/$kind.txt"
done
