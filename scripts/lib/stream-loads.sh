# Sourced by the benchmark scripts: `stream_loads LABEL [SERVE ARGS...]` starts fake-llm and a
# release host from $B (plugins and extra options in SERVE ARGS) with its own SQLite store, runs
# the two stream loads against it (unpaced 300 x 1,000; paced 200 x 250 @ 20 ms), prints the
# OTLP span counters, and stops both. $HOST_ENV is passed to the host's environment.
. "$(dirname "${BASH_SOURCE[0]}")/serve.sh"
stream_loads() {
  label=$1; shift
  D=$(mktemp -d /tmp/bench.XXXX); chmod 700 $D
  start_fake_llm $D $B
  start_host $D $B "$@" --store sqlite:$D/s.db --max-connections 19500 --llm-first-token-timeout 60 --llm-idle-timeout 60
  echo "== $label unpaced 300x1000"
  $B/myagent-loadgen stream --url ws://127.0.0.1:$HP --sessions 300 --tokens 1000 --token-ms 0 --ramp-ms 200 2>&1 | grep -iE "events/s|error" | head -3
  echo "== $label paced 200x250@20ms"
  $B/myagent-loadgen stream --url ws://127.0.0.1:$HP --sessions 200 --tokens 250 --token-ms 20 --ramp-ms 200 2>&1 | grep -iE "host-added|error" | head -3
  curl -s http://127.0.0.1:$HP/metrics | grep -E "^myagent_otel_spans" | tr '\n' ' '; echo
  kill $H $LLM; wait $H $LLM 2>/dev/null; rm -rf $D
}
