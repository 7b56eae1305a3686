#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECS seconds (default 30) from its seed corpus in
# fuzz/corpus/. Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz wants nightly flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. New inputs go to fuzz/work/ (not
# committed); a crash leaves its input in fuzz/artifacts/ and fails this script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-30}
export RUSTC_BOOTSTRAP=1
for target in client_message sse_stream; do
  mkdir -p "work/$target"
  echo "--- fuzzing $target for ${SECS}s"
  log="work/$target.log"
  if ! cargo fuzz run -j1 "$target" "work/$target" "corpus/$target" -- \
      -max_total_time="$SECS" -max_len=65536 -print_final_stats=1 > "$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target"
    exit 1
  fi
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
done
echo "fuzz: ok"
