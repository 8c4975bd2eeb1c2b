#!/usr/bin/env bash
# Records a real UEFI measured-boot event log and the PCRs it produced, for the host
# attestation tests (testdata/host/). Not run by CI: its output is checked in.
#
#   scripts/capture-uefi-event-log.sh [OUT_DIR]     (default: testdata/host)
#
# Boots Debian's OVMF (UEFI firmware, package `ovmf`) under QEMU TCG with a fresh swtpm as its
# TPM 2.0, the guest image's kernel (scripts/guest-image.sh) and a one-file initramfs that
# prints the kernel's copy of the firmware's event log
# (/sys/kernel/security/tpm0/binary_bios_measurements, base64) and the TPM's own sha256
# PCRs 0-9 (/sys/class/tpm/tpm0/pcr-sha256/N, read from the TPM by the kernel), then powers
# off. About 15 s on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/testdata/host}")
IMAGE=$ROOT/.cache/guest
VM=$ROOT/.cache/vm/root
[ -f "$IMAGE/vmlinuz" ] || { echo "no guest image: run scripts/guest-image.sh first" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'pkill -F "$WORK/swtpm.pid" 2>/dev/null || true; rm -rf "$WORK"' EXIT

(cd "$WORK" && apt-get download ovmf >/dev/null 2>&1 && dpkg -x ovmf_*.deb ovmf)
mkdir -p "$WORK/initramfs/bin" "$WORK/tpm"
cp "$IMAGE/rootfs/bin/busybox" "$WORK/initramfs/bin/"
cat > "$WORK/initramfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t securityfs securityfs /sys/kernel/security
echo WELES-EVENT-LOG-BEGIN
/bin/busybox base64 /sys/kernel/security/tpm0/binary_bios_measurements
echo WELES-EVENT-LOG-END
for i in 0 1 2 3 4 5 6 7 8 9; do echo "WELES-PCR $i $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$i)"; done
/bin/busybox poweroff -f
INIT
chmod +x "$WORK/initramfs/init"
(cd "$WORK/initramfs" && find . | cpio -o -H newc 2>/dev/null | gzip > "$WORK/initrd.gz")
cp "$WORK/ovmf/usr/share/OVMF/OVMF_VARS_4M.fd" "$WORK/vars.fd"

swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" --ctrl type=unixio,path="$WORK/ctrl.sock" \
    --flags startup-none --terminate -d --pid file="$WORK/swtpm.pid"
timeout 300 "$VM/usr/bin/qemu-system-x86_64" -machine q35 -accel tcg -m 512 -nographic -no-reboot \
    -L "$VM/usr/share/qemu" \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$WORK/ovmf/usr/share/OVMF/OVMF_CODE_4M.fd" \
    -drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd" \
    -chardev socket,id=chrtpm,path="$WORK/ctrl.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
    -device tpm-crb,tpmdev=tpm0 \
    -kernel "$IMAGE/vmlinuz" -initrd "$WORK/initrd.gz" -append "console=ttyS0 panic=-1 quiet" \
    > "$WORK/serial.log" 2>&1

mkdir -p "$OUT"
awk '/WELES-EVENT-LOG-END/{f=0} f{print} /WELES-EVENT-LOG-BEGIN/{f=1}' "$WORK/serial.log" \
    | tr -d '\r' | base64 -d > "$OUT/uefi-event-log.bin"
grep -a "WELES-PCR" "$WORK/serial.log" | tr -d '\r' | awk '{print $2, tolower($3)}' \
    > "$OUT/uefi-pcrs-sha256.txt"
[ -s "$OUT/uefi-event-log.bin" ] || { echo "no event log in the guest's output" >&2; exit 1; }
echo "wrote $OUT/uefi-event-log.bin ($(stat -c %s "$OUT/uefi-event-log.bin") bytes) and $OUT/uefi-pcrs-sha256.txt"
