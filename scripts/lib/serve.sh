# Sourced by the benchmark scripts: the fake model and a release host on free loopback ports.
#   start_fake_llm DIR BIN          → $LLM (pid), $LLM_URL (its /v1 base URL)
#   start_host DIR BIN SERVE-ARGS…  → $H (pid), $HP (port); the host talks to $LLM_URL, logs to
#                                     DIR/host.log, keeps its state in DIR/state — its plugin
#                                     copies and, unless SERVE-ARGS name a --store, its sessions
#                                     (never ~/.local/state) ($HOST_ENV is passed to its
#                                     environment)
start_fake_llm() {
  "$2/fake-llm" --port 0 > "$1/llm.log" 2>&1 & LLM=$!
  for _ in $(seq 50); do grep -q "listening on" "$1/llm.log" && break; sleep 0.1; done
  LLM_URL="http://$(sed -n 's/listening on //p' "$1/llm.log")/v1"
}
start_host() {
  local dir=$1 bin=$2; shift 2
  env ${HOST_ENV:-} RUST_LOG=warn XDG_STATE_HOME="$dir/state" "$bin/myagent-host" serve "$@" --host 127.0.0.1 --port 0 --base-url "$LLM_URL" \
    --model fake-model --no-watch --resume-window 5 --state-dir "$dir/state" > "$dir/host.log" 2>&1 & H=$!
  for _ in $(seq 100); do grep -q "Serving on" "$dir/host.log" && break; sleep 0.1; done
  HP=$(grep -o "ws://127.0.0.1:[0-9]*" "$dir/host.log" | head -1 | cut -d: -f3)
}
