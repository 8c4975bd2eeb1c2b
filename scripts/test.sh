#!/usr/bin/env bash
# Installs what the tests need and runs all of them: format, lints, unit/integration/property
# tests, fuzz-corpus replay, interop with the real ssh-keygen, openssl and tpm2-tools, verdict
# parity with Keylime 7.14.3 (installed from PyPI into .cache/keylime-venv), a QEMU guest
# (Debian's kernel, fetched into .cache/vm) whose TPM is weles-vtpm, and `weles demo` end to end
# on the guest image of scripts/guest-image.sh.
#
#   bash scripts/test.sh          (Debian 12, as root; README Quickstart, and what CI runs)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib/setup.sh

ensure_rust
# libtpms-dev: weles-vtpm links libtpms. tpm2-tools + the swtpm TCTI: interop tests. swtpm: the
# host TPM of the monotonic-counter and host-attestation tests (swtpm-tools: swtpm_setup and its
# local CA make its EK certificates). openssh-server: the SSH login tests start their own sshd.
ensure_packages openssh-client openssh-server openssl coreutils python3 libtpms-dev tpm2-tools libtss2-tcti-swtpm0 swtpm swtpm-tools
start=$SECONDS

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build (every binary: the manager's tests run weles-vtpm, weles-guest and weles)"
cargo build --workspace --bins --locked
log "cargo test (workspace)"
cargo test --workspace --locked
log "Keylime verdict parity; Keylime's EK check on manufactured vTPMs"
kl_python=$(keylime_python)
WELES_KEYLIME_PYTHON=$kl_python cargo test --locked -p weles-cli --test keylime_parity -- --ignored
WELES_KEYLIME_PYTHON=$kl_python cargo test --locked -p weles-vtpm --test manufacture -- --ignored
log "QEMU guest with weles-vtpm as its TPM"
cargo test --locked -p weles-vtpm --test qemu_guest -- --ignored
log "weles demo end to end: welesd, a QEMU VM with IMA, stock ssh; Ctrl-C; --keep"
bash scripts/guest-image.sh --guest-agent target/debug/weles-guest
# One guest at a time: three TCG guests at once on two cores would test the machine, not WELES.
cargo test --locked -p weles-cli --test demo -- --ignored --test-threads=1
log "all tests passed in $((SECONDS - start)) s"
