#!/bin/bash
# Does serving several agents cost the event path? One release build, two hosts alternating —
# the weather agent alone, and the weather agent beside the business agent and the testkit —
# each with its own SQLite store, the same two stream loads (sessions of the default agent).
# Usage: scripts/agents-bench.sh [ROUNDS]   (after `cargo build --release -j2 -p myagent-host
#        -p weather_agent -p business_agent -p testkit_agent -p myagent-tests`)
set -u
B=${BIN_DIR:-target/release}
. "$(dirname "$0")/lib/stream-loads.sh"
mkdir -p /tmp/agents-bench-data
for r in $(seq ${1:-2}); do
  stream_loads one-agent $B/libweather_agent.so
  HOST_ENV="BUSINESS_AGENT_DATA=/tmp/agents-bench-data" stream_loads three-agents $B/libweather_agent.so $B/libbusiness_agent.so $B/libtestkit_agent.so
done
