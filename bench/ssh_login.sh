#!/usr/bin/env bash
# SSH login time, side by side in one run: Debian's sshd with a plain host key file vs sshd whose
# host key is the VM's in its vTPM, each signature authorized by welesd (docs/performance.md,
# "SSH login"). Interleaved logins with stock ssh, then 20 concurrent WELES logins.
#
#   bash bench/ssh_login.sh [LOGINS]        (default 200 each; needs openssh-server, root)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export WELES_BENCH_LOGINS=${1:-200}
cargo build -q --release --workspace --bins
echo "# $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores, $(date -u +%F), $(ssh -V 2>&1)"
cargo test -q --release -p weles-manager --test tenant_flow bench_ssh_login_plain_vs_weles \
  -- --ignored --nocapture 2>&1 | grep '^{"bench"'
