#!/bin/bash
# Back to back: two builds (directories of release binaries: myagent-host, fake-llm,
# libweather_agent.so), alternating, each with its own SQLite store, the same two stream loads.
# Usage: scripts/back-to-back.sh OLD_DIR NEW_DIR [ROUNDS]   (myagent-loadgen from NEW_DIR)
run() {
  bin=$1; label=$2
  D=$(mktemp -d /tmp/ab.XXXX); chmod 700 $D
  $bin/fake-llm --port 0 > $D/llm.log 2>&1 & LLM=$!
  for i in $(seq 50); do grep -q "listening on" $D/llm.log && break; sleep 0.1; done
  LP=$(grep -o "127.0.0.1:[0-9]*" $D/llm.log | head -1 | cut -d: -f2)
  RUST_LOG=warn $bin/myagent-host serve $bin/libweather_agent.so --host 127.0.0.1 --port 0 --base-url http://127.0.0.1:$LP/v1 --model fake-model --store sqlite:$D/s.db --no-watch --max-connections 19500 --resume-window 5 --llm-first-token-timeout 60 --llm-idle-timeout 60 --state-dir $D/state > $D/host.log 2>&1 & H=$!
  for i in $(seq 100); do grep -q "Serving on" $D/host.log && break; sleep 0.1; done
  HP=$(grep -o "ws://127.0.0.1:[0-9]*" $D/host.log | head -1 | cut -d: -f3)
  echo "== $label unpaced 300x1000"
  "$NEW"/myagent-loadgen stream --url ws://127.0.0.1:$HP --sessions 300 --tokens 1000 --token-ms 0 --ramp-ms 200 2>&1 | grep -iE "events/s|ev/s|final|error" | head -5
  echo "== $label paced 200x250@20ms"
  "$NEW"/myagent-loadgen stream --url ws://127.0.0.1:$HP --sessions 200 --tokens 250 --token-ms 20 --ramp-ms 200 2>&1 | grep -iE "events/s|ev/s|final|p50|error" | head -5
  kill $H $LLM; wait $H $LLM 2>/dev/null; rm -rf $D
}
OLD=${1:?old build dir}; NEW=${2:?new build dir}
for r in $(seq ${3:-2}); do run "$OLD" old; run "$NEW" new; done
