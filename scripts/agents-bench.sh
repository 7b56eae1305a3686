#!/bin/bash
# Does serving several agents cost the event path? One release build, two hosts alternating —
# the weather agent alone, and the weather agent beside the business agent and the testkit —
# each with its own SQLite store, the same two stream loads (sessions of the default agent).
# Usage: scripts/agents-bench.sh [ROUNDS]   (after `cargo build --release -j2 -p myagent-host
#        -p weather_agent -p business_agent -p testkit_agent -p myagent-tests`)
set -u
B=${BIN_DIR:-target/release}
run() {
  label=$1; shift
  D=$(mktemp -d /tmp/agents-bench.XXXX); chmod 700 $D
  $B/fake-llm --port 0 > $D/llm.log 2>&1 & LLM=$!
  for i in $(seq 50); do grep -q "listening on" $D/llm.log && break; sleep 0.1; done
  LP=$(grep -o "127.0.0.1:[0-9]*" $D/llm.log | head -1 | cut -d: -f2)
  RUST_LOG=warn BUSINESS_AGENT_DATA=$D $B/myagent-host serve "$@" --host 127.0.0.1 --port 0 --base-url http://127.0.0.1:$LP/v1 --model fake-model --store sqlite:$D/s.db --no-watch --max-connections 19500 --resume-window 5 --llm-first-token-timeout 60 --llm-idle-timeout 60 --state-dir $D/state > $D/host.log 2>&1 & H=$!
  for i in $(seq 100); do grep -q "Serving on" $D/host.log && break; sleep 0.1; done
  HP=$(grep -o "ws://127.0.0.1:[0-9]*" $D/host.log | head -1 | cut -d: -f3)
  echo "== $label unpaced 300x1000"
  $B/myagent-loadgen stream --url ws://127.0.0.1:$HP --sessions 300 --tokens 1000 --token-ms 0 --ramp-ms 200 2>&1 | grep -iE "events/s|error" | head -3
  echo "== $label paced 200x250@20ms"
  $B/myagent-loadgen stream --url ws://127.0.0.1:$HP --sessions 200 --tokens 250 --token-ms 20 --ramp-ms 200 2>&1 | grep -iE "host-added|error" | head -3
  kill $H $LLM; wait $H $LLM 2>/dev/null; rm -rf $D
}
for r in $(seq ${1:-2}); do
  run one-agent $B/libweather_agent.so
  run three-agents $B/libweather_agent.so $B/libbusiness_agent.so $B/libtestkit_agent.so
done
