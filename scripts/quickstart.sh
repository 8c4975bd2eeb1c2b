#!/usr/bin/env bash
# The main job: `weles demo` — welesd, a QEMU VM with Linux IMA, its vTPM and guest agent, a
# signed policy, a stock ssh login, a tampered binary, the violation, the refused login.
#
#   bash scripts/quickstart.sh [weles demo options, e.g. --keep]    (Debian 12, as root)
#
# Installs what it needs (Rust 1.95, libtpms, OpenSSH; QEMU 7.2 and Debian's kernel are fetched
# into .cache/ with apt-get download), builds the workspace, builds the guest image
# (scripts/guest-image.sh) and runs the demo. About a minute after the first build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib/setup.sh

ensure_rust
ensure_packages openssh-client openssh-server libtpms-dev
log "building welesd, weles-vtpm, weles-guest and weles"
cargo build --locked --workspace --bins
bash scripts/guest-image.sh --guest-agent target/debug/weles-guest
log "running: target/debug/weles demo $*"
exec target/debug/weles demo "$@"
