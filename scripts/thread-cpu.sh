#!/usr/bin/env bash
# The host's CPU time per thread over one unpaced token stream: starts fake-llm and a fresh host
# (release builds, free ports), streams SESSIONS × TOKENS chunks through it with the load
# generator, and prints the CPU ticks (1/100 s, from /proc; user and kernel time apart) each kind
# of thread used — the tokio workers, the session store's writer — with the stream's rate and the
# bytes the writer passed to write(2) and read(2). For comparing builds: run two builds
# alternately, several times each (this machine's speed moves between runs).
#
#   scripts/thread-cpu.sh [SESSIONS] [TOKENS]      (default 300 × 1000)
#   BIN=/path/to/release STORE=memory scripts/thread-cpu.sh   (another build; --store memory)
#   SKIP_BUILD=1 scripts/thread-cpu.sh              (target/release as it is)
#   TARGET=floor scripts/thread-cpu.sh              (myagent-floor instead: alternate with the
#                                                    host to compare their CPU and page faults)
# STORE: sqlite (default, a fresh file under a temporary directory), shm (the same file on
# /dev/shm: no disk), or any --store value.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-300}
TOKENS=${2:-1000}
BIN=${BIN:-target/release}
STORE=${STORE:-sqlite}
if [ -z "${SKIP_BUILD:-}" ] && [ "$BIN" = target/release ]; then
  ${CARGO:-cargo} build -q -j2 --release -p myagent-host -p weather_agent -p myagent-tests
fi
DIR=$(mktemp -d)
cleanup() { kill "${HOST_PID:-}" "${LLM_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
wait_for() { # file, pattern
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "thread-cpu: no \"$2\" in $1" >&2; cat "$1" >&2; exit 1
}
"$BIN/fake-llm" --port 0 > "$DIR/llm.log" 2>&1 &
LLM_PID=$!
wait_for "$DIR/llm.log" "listening on"
LLM=$(sed -n 's/.*listening on //p' "$DIR/llm.log" | head -1)
case "$STORE" in
  sqlite) STORE_ARG="sqlite:$DIR/s.db" ;;
  shm) SHM=$(mktemp -d -p /dev/shm); STORE_ARG="sqlite:$SHM/s.db"; trap 'cleanup; rm -rf "$SHM"' EXIT ;;
  *) STORE_ARG=$STORE ;;
esac
if [ "${TARGET:-host}" = floor ]; then
  "$BIN/myagent-floor" --port 0 --base-url "http://$LLM/v1" > "$DIR/host.log" 2>&1 &
else
  "$BIN/myagent-host" serve "$BIN/libweather_agent.so" --host 127.0.0.1 --port 0 \
    --base-url "http://$LLM/v1" --model fake-model --state-dir "$DIR" --store "$STORE_ARG" \
    --max-connections 19500 --no-watch --resume-window 5 --llm-first-token-timeout 60 \
    --llm-idle-timeout 60 --max-stored-sessions-per-ip 0 --answer-holdback 0 > "$DIR/host.log" 2>&1 &
fi
HOST_PID=$!
wait_for "$DIR/host.log" "Serving on"
PORT=$(sed -n 's/.*Serving on ws:\/\/[^ ]*:\([0-9]*\).*/\1/p' "$DIR/host.log" | head -1)
ticks() { # tid -> "utime stime" (fields 14, 15 of stat; the name may hold spaces)
  sed 's/.*) //' "/proc/$HOST_PID/task/$1/stat" | awk '{print $12, $13}'
}
faults() { # the process's minor + major page faults (fields 10, 12 of stat)
  sed 's/.*) //' "/proc/$HOST_PID/stat" | awk '{print $8 + $10}'
}
declare -A before_u before_s
for t in /proc/$HOST_PID/task/*; do
  read -r u s < <(ticks "${t##*/}")
  before_u[${t##*/}]=$u
  before_s[${t##*/}]=$s
done
faults_before=$(faults)
"$BIN/myagent-loadgen" stream --url "ws://127.0.0.1:$PORT" --sessions "$SESSIONS" \
  --tokens "$TOKENS" --token-ms 0 --ramp-ms 200 > "$DIR/stream.log" 2>&1
declare -A per_u per_s
total_u=0
total_s=0
io=""
for t in /proc/$HOST_PID/task/*; do
  tid=${t##*/}
  name=$(cat "$t/comm")
  read -r u s < <(ticks "$tid")
  u=$(( u - ${before_u[$tid]:-0} ))
  s=$(( s - ${before_s[$tid]:-0} ))
  per_u[$name]=$(( ${per_u[$name]:-0} + u ))
  per_s[$name]=$(( ${per_s[$name]:-0} + s ))
  total_u=$(( total_u + u ))
  total_s=$(( total_s + s ))
  if [ "$name" = session-store ]; then
    io=$(awk '/^wchar/ {w=$2} /^rchar/ {r=$2} END {printf " store writer: wrote %.0f MB, read %.0f MB", w/1e6, r/1e6}' "$t/io")
  fi
done
rate=$(grep -o '[0-9.]* events/s' "$DIR/stream.log" | head -1)
grep -q " 0 errors" "$DIR/stream.log" || { echo "thread-cpu: the stream had errors:" >&2; cat "$DIR/stream.log" >&2; exit 1; }
line="${TARGET:-host} ticks $(( total_u + total_s )) (user $total_u, kernel $total_s; $rate), page faults $(( $(faults) - faults_before ))"
for n in "${!per_u[@]}"; do
  used=$(( per_u[$n] + per_s[$n] ))
  [ "$used" -gt 0 ] && line="$line; $n $used (user ${per_u[$n]}, kernel ${per_s[$n]})"
done
echo "$line;$io"
