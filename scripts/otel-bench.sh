#!/bin/bash
# What OpenTelemetry export costs the event path: one release build, three hosts alternating —
# export off, export to a dead collector (a refused port), export to a live OTLP receiver
# (`otlp-sink`, the tests' receiver) — each with its own SQLite store, the same two stream loads.
# Usage: scripts/otel-bench.sh [ROUNDS]   (after `cargo build --release -p myagent-host
#        -p weather_agent -p myagent-tests`)
set -u
B=${BIN_DIR:-target/release}
. "$(dirname "$0")/lib/stream-loads.sh"
$B/otlp-sink > /tmp/otel-bench-sink.log 2>&1 & SINK=$!
for i in $(seq 50); do grep -q "listening on" /tmp/otel-bench-sink.log && break; sleep 0.1; done
SP=$(grep -o "127.0.0.1:[0-9]*" /tmp/otel-bench-sink.log | head -1 | cut -d: -f2)
for r in $(seq ${1:-2}); do
  stream_loads off $B/libweather_agent.so
  stream_loads dead-collector $B/libweather_agent.so --otlp-endpoint http://127.0.0.1:1
  stream_loads live-collector $B/libweather_agent.so --otlp-endpoint http://127.0.0.1:$SP
done
kill $SINK; tail -1 /tmp/otel-bench-sink.log
