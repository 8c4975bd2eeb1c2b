#!/usr/bin/env bash
# Offline verification: build `weles` and verify real guest IMA logs (Debian 6.1 kernel under QEMU
# with a vTPM, captured by scripts/capture-ima-fixtures.sh) against a tenant policy, printing the
# verdict. (The main demo, a live VM, is scripts/quickstart.sh.)
#
#   bash scripts/ima-verify-demo.sh    (Debian 12, as root)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib/setup.sh

ensure_rust
ensure_packages python3
log "building weles (release)"
cargo build --release --locked -p weles-cli
W=target/release/weles
LOGDIR=testdata/ima/ima-sig-sha256
pcr() { echo "$1:$(grep "^$1:10 " "$LOGDIR/pcrs.txt" | cut -d' ' -f2)"; }

step() { printf '\n\033[1m--- %s\033[0m\n$ %s\n' "$1" "${*:2}"; }
run() { "$@" || true; }

step "The guest's measurement list: what its kernel measured, in order" "$W ima show --log $LOGDIR/binary_runtime_measurements"
run "$W" ima show --log "$LOGDIR/binary_runtime_measurements"

step "The tenant's policy: allowed files, and two trusted IMA signing keys" "$W policy check testdata/demo/policy.toml"
run "$W" policy check testdata/demo/policy.toml

step "The tenant signed it with an ordinary SSH key (ssh-keygen -Y verify -n weles-policy agrees)" \
  "$W policy verify --signer testdata/demo/tenant.pub testdata/demo/policy.toml"
run "$W" policy verify --signer testdata/demo/tenant.pub testdata/demo/policy.toml

step "Verify the log against the policy and the vTPM's PCR 10 (both banks)" \
  "$W ima verify --log $LOGDIR/binary_runtime_measurements --policy testdata/demo/policy.toml --signer testdata/demo/tenant.pub --pcr10 $(pcr sha1) --pcr10 $(pcr sha256)"
run "$W" ima verify --log "$LOGDIR/binary_runtime_measurements" --policy testdata/demo/policy.toml --signer testdata/demo/tenant.pub --pcr10 "$(pcr sha1)" --pcr10 "$(pcr sha256)"
echo "(exit code 1: not compliant. The guest read /etc/weles.conf while a writer held it open:"
echo " IMA logged a violation entry, and the policy does not tolerate them.)"

step "The same VM judged by a policy that tolerates violation entries" \
  "$W ima verify ... --policy testdata/demo/policy-tolerant.toml"
run "$W" ima verify --log "$LOGDIR/binary_runtime_measurements" --policy testdata/demo/policy-tolerant.toml --pcr10 "$(pcr sha1)" --pcr10 "$(pcr sha256)"

step "A forged log: one file's digest changed, template hash kept" "$W ima verify --log forged.bin ... --json"
forged=$(mktemp)
trap 'rm -f "$forged"' EXIT
cp "$LOGDIR/binary_runtime_measurements" "$forged"
# Flip one byte of /bin/busybox's file digest, leaving its template hash as it was.
python3 - "$forged" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
pos = 0
while pos < len(b):
    name_len = struct.unpack_from("<I", b, pos + 24)[0]
    data_at = pos + 28 + name_len + 4
    data_len = struct.unpack_from("<I", b, data_at - 4)[0]
    if b"/bin/busybox\0" in b[data_at:data_at + data_len]:
        b[data_at + 4 + len(b"sha256:\0")] ^= 1
        break
    pos = data_at + data_len
open(sys.argv[1], "wb").write(b)
PY
run "$W" ima verify --log "$forged" --policy testdata/demo/policy-tolerant.toml --pcr10 "$(pcr sha256)" --json
echo
log "done. Try: $W --help, $W ima verify --help, $W policy --help"
