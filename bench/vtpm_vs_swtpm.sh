#!/usr/bin/env bash
# vTPM command latency: weles-vtpm vs swtpm (same libtpms engine), side by side in one run.
#
#   bash bench/vtpm_vs_swtpm.sh [ROUNDS]
#
# For each round, starts alone and measures in turn: swtpm 0.7.1 (Debian), weles-vtpm with the
# same swtpm arguments, and weles-vtpm with an event listener attached (every PCR change is
# reported to it). examples/bench_tpm sends identical raw TPM 2.0 frames to each and prints one
# JSON line (median and p99 in microseconds). Needs util-linux (taskset) and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
cargo build -q --release -p weles-vtpm --examples --bins
WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'cleanup; rm -rf "$WORK"' EXIT

run() { # label command port [extra args]
  local label=$1 cmd=$2 port=$3; shift 3
  rm -rf "$WORK/state"; mkdir -p "$WORK/state"
  # Pinned: TPM on CPU 1, client on CPU 0, every run alike (unpinned, the scheduler's placement
  # makes extends take ~20 or ~55 us at random, for swtpm and weles-vtpm alike).
  taskset -c 1 "$cmd" socket --tpm2 --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
    --tpmstate dir="$WORK/state" "$@" > "$WORK/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$((port + 1))) 2>/dev/null && break; sleep 0.05; done
  if [ "$label" = "weles-vtpm+events" ]; then
    taskset -c 1 python3 -c '
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = json.dumps({"op": "subscribe", "after": 0}).encode()
s.sendall(struct.pack(">I", len(body)) + body)
while s.recv(65536):
    pass' $((port + 2)) &
    pids+=($!)
    sleep 0.2
  fi
  taskset -c 0 target/release/examples/bench_tpm "$port" "$label"
  cleanup
}

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(swtpm --version | head -1)"
for round in $(seq "$ROUNDS"); do
  run swtpm swtpm 24321
  run weles-vtpm target/release/weles-vtpm 24331
  run weles-vtpm+events target/release/weles-vtpm 24341 --events type=tcp,port=24343,bindaddr=127.0.0.1
done
