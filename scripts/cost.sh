#!/usr/bin/env bash
# CPU cost per delivered event, in instructions, measured with valgrind's callgrind: numbers that
# do not move with machine noise (perf stat counts cycles where the machine allows it; this one
# does not). Runs the release host under callgrind, streams SESSIONS × TOKENS unpaced chunks
# from fake-llm through it with the load generator, and prints instructions per delivered event
# and where they go (inclusive counts of the main stages; user space only — syscalls' kernel time
# is not counted).
#
#   scripts/cost.sh [SESSIONS] [TOKENS] [TOKEN_MS]   (default 20 × 500 unpaced; needs valgrind)
#   COST_TARGET=floor scripts/cost.sh ...            (the same for myagent-floor, for reference)
#   COST_STORE=sqlite scripts/cost.sh ...            (the host with the default store, a fresh
#                                                     SQLite file, instead of --store memory)
#   COST_CACHE=1 scripts/cost.sh 100 400             (also simulates the caches — 32 KiB L1i and
#                                                     L1d, 4 MiB LL — and prints their misses per
#                                                     event: what instruction counts miss)
# The build with symbols goes to its own target directory (COST_TARGET_DIR, default
# target/cost-build), so it does not replace the release build the other scripts use.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-20}
TOKENS=${2:-500}
TOKEN_MS=${3:-0} # 20 = paced at 50 tokens/s per session: one event per wake-up
command -v valgrind >/dev/null || { echo "cost: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# Symbols for the profile: the release build with line tables (same code, names kept).
BIN=${COST_TARGET_DIR:-target/cost-build}/release
[ -n "${SKIP_BUILD:-}" ] || CARGO_TARGET_DIR=${COST_TARGET_DIR:-target/cost-build} CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  ${CARGO:-cargo} build -q -j2 --release -p myagent-host -p weather_agent -p myagent-tests
OUT=target/cost
mkdir -p $OUT
rm -f $OUT/callgrind.*
cleanup() { kill "${HOST_PID:-}" "${LLM_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT
$BIN/fake-llm --port 0 > $OUT/llm.log &
LLM_PID=$!
for _ in $(seq 50); do grep -q listening $OUT/llm.log 2>/dev/null && break; sleep 0.1; done
LLM=$(sed -n 's/listening on //p' $OUT/llm.log)
# Two runs under callgrind: start-up and a warm-up only, then the same plus the measured stream.
# Their difference is the measured stream's cost (counters zeroed mid-run would misattribute
# the calls in progress).
profile() { # name, "measure" or ""
  # --store memory by default: the event path alone, comparable with earlier figures (the SQLite store's
  # writer thread is measured by the load generator, docs/performance.md).
  # --isolation in-process: valgrind cannot follow the host starting its plugin worker through
  # /proc/self/exe (and this stream calls no tool: the worker is idle either way).
  local store=memory
  [ "${COST_STORE:-memory}" = sqlite ] && { rm -f $OUT/s.db*; store=sqlite:$OUT/s.db; }
  local server=($BIN/myagent-host serve $BIN/libweather_agent.so --store $store --host 127.0.0.1 --port 0
    --no-watch --answer-holdback 0 --isolation in-process --base-url "http://$LLM/v1" --shutdown-timeout 5)
  [ "${COST_TARGET:-host}" = floor ] && server=($BIN/myagent-floor --port 0 --base-url "http://$LLM/v1")
  local cache=()
  [ -n "${COST_CACHE:-}" ] && cache=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=4194304,16,64)
  valgrind --tool=callgrind "${cache[@]}" --callgrind-out-file=$OUT/callgrind.$1 --dump-instr=no "${server[@]}" \
    > $OUT/host.log 2> $OUT/valgrind.log &
  HOST_PID=$!
  for _ in $(seq 600); do grep -q "Serving on" $OUT/host.log 2>/dev/null && break; sleep 0.1; done
  local port; port=$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' $OUT/host.log)
  $BIN/myagent-loadgen stream --url "ws://127.0.0.1:$port" --sessions 4 --tokens 100 \
    --token-ms 0 --ramp-ms 0 > /dev/null
  if [ "$2" = measure ]; then
    $BIN/myagent-loadgen --json $OUT/stream.json stream --url "ws://127.0.0.1:$port" \
      --sessions "$SESSIONS" --tokens "$TOKENS" --token-ms "$TOKEN_MS" --ramp-ms 0 | grep -E "final answers"
  fi
  kill -TERM $HOST_PID; wait $HOST_PID 2>/dev/null || true
  callgrind_annotate --auto=no --threshold=100 $OUT/callgrind.$1 > $OUT/self.$1.txt 2>/dev/null
  callgrind_annotate --auto=no --threshold=100 --inclusive=yes $OUT/callgrind.$1 > $OUT/inclusive.$1.txt 2>/dev/null
}
profile base ""
profile run measure
EVENTS=$(python3 -c "import json;print(json.load(open('$OUT/stream.json'))['events'])")
python3 - "$OUT" "$EVENTS" <<'PY'
import re, sys
out, events = sys.argv[1], max(int(sys.argv[2]), 1)
def rows(path):
    total, r = 0, []
    for line in open(path, errors="replace"):
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        # The other events' columns (with COST_CACHE: "N (x%)", "0" or "."), then the function.
        fn = re.sub(r"^(?:(?:[\d,]+\s+\(\s*[\d.]+%\)|[\d,]+|\.)\s+)*", "", m.group(2))
        if "PROGRAM TOTALS" in fn:
            total = n
        else:
            r.append((n, fn))
    return total, r
def diff(kind):
    t1, r1 = rows(f"{out}/{kind}.run.txt")
    t0, r0 = rows(f"{out}/{kind}.base.txt")
    base = {}
    for n, fn in r0:
        base[fn] = base.get(fn, 0) + n
    seen = {}
    for n, fn in r1:
        seen[fn] = seen.get(fn, 0) + n
    return t1 - t0, [(n - base.get(fn, 0), fn) for fn, n in seen.items()]
total, self_rows = diff("self")
_, incl_rows = diff("inclusive")
# Who executes the instructions (self cost, first match wins): a breakdown without overlap.
groups = [
    ("session store (store::, SQLite)", r"myagent_host::store::|sqlite3|rusqlite"),
    ("SSE parse (llm::sse, llm::wire, serde_json::de)", r"llm::sse|llm::wire|serde_json::de|serde_json::read|serde_json::value::de|<serde_json::value::Value as serde::de"),
    ("agent loop and event mapping (agent::, session::run)", r"myagent_host::agent::|session::run::"),
    ("event JSON encoding (serde_json::ser, ServerEvent::encode)", r"serde_json::ser|session::event|myagent_host::time::"),
    ("session log: seq, replay buffer, queue (session::log, outbox)", r"session::log|server::outbox|VecDeque"),
    ("WebSocket framing and writes (tungstenite)", r"tungstenite"),
    ("model HTTP client (hyper, reqwest, h2, http)", r"hyper|reqwest|\bh2::|http_body|httparse"),
    ("tokio runtime, timers, I/O driver, sync", r"tokio|parking_lot|mio::|futures_"),
    ("malloc/free/realloc", r"malloc|_int_free|\bfree\b|realloc|unlink_chunk|consolidate|cfree"),
    ("memcpy/memset/memcmp", r"memcpy|memmove|memset|memcmp|strlen"),
    ("locks (pthread)", r"pthread_"),
    ("OpenSSL (TLS library linked by reqwest; idle here)", r"libcrypto|libssl"),
]
sums = {g[0]: 0 for g in groups}
other = 0
for n, fn in self_rows:
    for name, pat in groups:
        if re.search(pat, fn):
            sums[name] += n
            break
    else:
        other += n
print(f"cost: {events} events delivered; host {total:,} instructions in the measured run = {total/events:,.0f} per event")
def totals(path):
    names = []
    for line in open(path, errors="replace"):
        if line.startswith("Events shown:"):
            names = line.split(":", 1)[1].split()
        if "PROGRAM TOTALS" in line:
            cells = re.sub(r"\(\s*[\d.]+%\)", "", line.split("PROGRAM TOTALS")[0]).split()
            return dict(zip(names, (int(c.replace(",", "")) if c != "." else 0 for c in cells)))
    return {}
run_t, base_t = totals(f"{out}/self.run.txt"), totals(f"{out}/self.base.txt")
if "I1mr" in run_t:
    per = {k: (run_t[k] - base_t.get(k, 0)) / events for k in run_t}
    print("cache misses per event (simulated):",
          f"L1i {per['I1mr']:,.0f}, L1d {per['D1mr'] + per['D1mw']:,.0f}, LL {per['ILmr'] + per['DLmr'] + per['DLmw']:,.0f}")
print(f"{'where (self cost, no overlap)':62} {'instr/event':>11} {'share':>6}")
for name, _ in groups:
    print(f"{name:62} {sums[name]/events:>11,.0f} {100*sums[name]/max(total,1):>5.1f}%")
print(f"{'other':62} {other/events:>11,.0f} {100*other/max(total,1):>5.1f}%")
# A few stages by their entry points (inclusive: each includes what it calls).
stages = [
    ("StreamParser::feed (parse + everything a token triggers)", r"llm::sse::StreamParser::feed"),
    ("Session::emit_event_locked (seq, encode, replay, queue)", r"session::log::Session::emit_event_locked"),
    ("ServerEvent::encode_into (one event's JSON)", r"ServerEvent>?::encode_into"),
]
print(f"{'entry point (inclusive)':62} {'instr/event':>11}")
for name, pat in stages:
    best = max((n for n, fn in incl_rows if re.search(pat, fn)), default=0)
    print(f"{name:62} {best/events:>11,.0f}")
PY
echo "cost: profiles in $OUT/{self,inclusive}.{base,run}.txt (callgrind_annotate; run minus base is the stream)"
