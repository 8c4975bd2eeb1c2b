#!/usr/bin/env bash
# Installs what the tests need and runs all of them: format, lints, unit/integration/property
# tests, fuzz-corpus replay, interop with the real ssh-keygen and openssl, and verdict parity with
# Keylime 7.14.3 (installed from PyPI into .cache/keylime-venv).
#
#   bash scripts/test.sh          (Debian 12, as root; README Quickstart, and what CI runs)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib/setup.sh

ensure_rust
ensure_packages openssh-client openssl coreutils python3
start=$SECONDS

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (workspace)"
cargo test --workspace --locked
log "Keylime verdict parity"
WELES_KEYLIME_PYTHON=$(keylime_python) cargo test --locked -p weles-cli --test keylime_parity -- --ignored
log "all tests passed in $((SECONDS - start)) s"
