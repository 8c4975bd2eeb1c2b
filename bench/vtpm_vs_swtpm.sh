#!/usr/bin/env bash
# vTPM command latency: weles-vtpm vs swtpm (same libtpms engine), side by side in one run.
#
#   bash bench/vtpm_vs_swtpm.sh [ROUNDS]
#
# Each round starts, side by side and with the same swtpm arguments: swtpm 0.7.1 (Debian),
# weles-vtpm, and weles-vtpm with an event listener attached (every PCR change is reported to
# it). examples/bench_tpm then sends identical raw TPM 2.0 frames to all three, interleaved
# (one command to each in turn), and prints one JSON line per TPM (median and p99, in
# microseconds). Needs util-linux (taskset) and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
cargo build -q --release -p weles-vtpm --examples --bins
WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'cleanup; rm -rf "$WORK"' EXIT

start() { # name command port [extra args]
  local name=$1 cmd=$2 port=$3; shift 3
  rm -rf "$WORK/$name"; mkdir -p "$WORK/$name"
  # Pinned: the TPMs on CPU 1, the client on CPU 0 (unpinned, the scheduler's placement makes
  # extends take ~20 or ~55 us at random, for swtpm and weles-vtpm alike).
  taskset -c 1 "$cmd" socket --tpm2 --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
    --tpmstate dir="$WORK/$name" "$@" > "$WORK/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$((port + 1))) 2>/dev/null && break; sleep 0.05; done
}

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(swtpm --version | head -1)"
for round in $(seq "$ROUNDS"); do
  start swtpm swtpm 24321
  start weles target/release/weles-vtpm 24331
  start weles-events target/release/weles-vtpm 24341 --events type=tcp,port=24343,bindaddr=127.0.0.1
  taskset -c 1 python3 -c '
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = json.dumps({"op": "subscribe", "after": 0}).encode()
s.sendall(struct.pack(">I", len(body)) + body)
while s.recv(65536):
    pass' 24343 &
  pids+=($!)
  sleep 0.2
  taskset -c 0 target/release/examples/bench_tpm 24321:swtpm 24331:weles-vtpm 24341:weles-vtpm+events
  cleanup
done
