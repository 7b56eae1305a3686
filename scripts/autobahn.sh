#!/usr/bin/env bash
# WebSocket protocol conformance: the Autobahn|Testsuite fuzzing client against the host's real
# WebSocket stack (`--conformance-echo` serves an echo on /_echo with the same limits).
# Autobahn|Testsuite runs on Python 2.7 only: where no python2.7 exists this says so and exits 0.
# Expected: every case OK, NON-STRICT or INFORMATIONAL. Excluded: 12.* and 13.* (compression,
# not implemented) and 9.* (performance: 1-16 MiB messages, above the host's 1 MiB frame limit).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
[ -n "${SKIP_BUILD:-}" ] || ${CARGO:-cargo} build -q -j2 -p myagent-host -p weather_agent
PY27=""
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python python2.7 /usr/bin/python2.7; do
  if "$candidate" -c 'import sys; assert sys.version_info[0] == 2' 2>/dev/null; then PY27=$candidate; break; fi
done
if [ -z "$PY27" ]; then
  echo "SKIPPED autobahn: no python2.7 here (Autobahn|Testsuite needs it)"
  exit 0
fi
WORK=target/autobahn
mkdir -p "$WORK"
if [ ! -x "$WORK/py27/bin/wstest" ]; then
  "$PY27" -m pip install --quiet --disable-pip-version-check --target "$WORK/py27" autobahntestsuite 2>&1 | grep -v DEPRECATION || true
fi
cleanup() { kill "${HOST_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT
"$BIN/myagent-host" serve "$BIN/libweather_agent.so" --host 127.0.0.1 --port 0 --no-watch --store memory \
  --conformance-echo --replay examples/recordings/weather-demo.jsonl > "$WORK/host.log" 2>&1 &
HOST_PID=$!
for _ in $(seq 100); do grep -q "Serving on" "$WORK/host.log" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*Serving on ws:\/\/[^:]*:\([0-9]*\).*/\1/p' "$WORK/host.log")
rm -rf "$WORK/reports"
cat > "$WORK/spec.json" <<JSON
{
  "outdir": "reports",
  "servers": [{"agent": "myagent-host", "url": "ws://127.0.0.1:$PORT/_echo"}],
  "cases": ["*"],
  "exclude-cases": ["9.*", "12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON
# site.addsitedir (not PYTHONPATH) so that zope's namespace-package .pth files are processed.
(cd "$WORK" && "$PY27" -c 'import site, sys; site.addsitedir("py27"); sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run; sys.exit(run())' -m fuzzingclient -s spec.json > wstest.log 2>&1) \
  || { tail -30 "$WORK/wstest.log"; echo "wstest failed to run"; exit 1; }
python3 - "$WORK/reports/index.json" <<'PY'
import json, sys, collections
cases = json.load(open(sys.argv[1]))["myagent-host"]
counts = collections.Counter(c["behavior"] for c in cases.values())
close_counts = collections.Counter(c["behaviorClose"] for c in cases.values())
bad = {k: c["behavior"] for k, c in cases.items() if c["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL")}
bad.update({k: "close " + c["behaviorClose"] for k, c in cases.items() if c["behaviorClose"] not in ("OK", "INFORMATIONAL")})
print("autobahn: %d cases; behavior %s; close %s" % (len(cases), dict(counts), dict(close_counts)))
if bad:
    print("autobahn: FAILED cases:", ", ".join("%s=%s" % kv for kv in sorted(bad.items())))
    sys.exit(1)
print("autobahn: ok (report: target/autobahn/reports/index.html)")
PY
