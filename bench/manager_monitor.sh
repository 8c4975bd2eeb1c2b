#!/usr/bin/env bash
# welesd's monitor: detection latency and VMs per core (docs/performance.md, "Manager").
#
#   bash bench/manager_monitor.sh [VMS] [SECONDS]
#
# 1. capacity: one core (taskset -c 0) does the manager's per-entry work for VMS VMs round
#    robin — decode the vTPM's extend frame, verify the guest's log bytes (template hash,
#    sha1+sha256 replay, 1,000-path policy), compare with the PCR.
# 2. load: VMS VMs each extending 100 entries/s in real time on that one core; every 50 ms a VM
#    runs an unlisted file; violation-to-notice latency from the moment the entry was due.
# 3. live: real weles-vtpm and weles-guest processes (guest polling every 10 ms, then 1 ms),
#    200 boots of a real 9-entry log each followed by an unlisted file; log write → notice.
# Prints one JSON line per run. Needs util-linux (taskset).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VMS=${1:-1000}
SECONDS_LOAD=${2:-10}
cargo build -q --release -p weles-manager -p weles-vtpm -p weles-guest --examples --bins
B=target/release/examples/bench_monitor
echo "# $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores, $(date -u +%F)"
taskset -c 0 "$B" capacity "$VMS" 300
taskset -c 0 "$B" load "$VMS" 100 "$SECONDS_LOAD"
taskset -c 0 "$B" load $((VMS * 2)) 100 "$SECONDS_LOAD"
"$B" live 200 10
"$B" live 200 1
