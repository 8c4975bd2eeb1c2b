#!/usr/bin/env bash
# Regenerates the real IMA fixtures in testdata/ima/ by booting Debian's 6.1 kernel under QEMU
# (TCG) with a swtpm vTPM (banks sha1+sha256) and IMA on, in several configurations.
#
#   scripts/capture-ima-fixtures.sh [OUT_DIR]     (default: testdata/ima)
#   VTPM=target/debug/weles-vtpm DEVICE=tpm-crb CONFIGS=ima-ng-sha256 scripts/capture-ima-fixtures.sh OUT
#       the same with weles-vtpm as the guest's TPM instead of swtpm (an unmanufactured TPM).
#
# Needs root on Debian 12. It installs swtpm, busybox-static, ima-evm-utils and gcc, and takes
# QEMU 7.2 and the kernel from Debian with `apt-get download` + `dpkg -x` into .cache/ (installing
# qemu-system-x86 conflicts with the qemu-utils of some images). Each boot takes ~10 s.
#
# Per configuration it writes: binary_runtime_measurements, ascii_runtime_measurements,
# pcrs.txt (lines `BANK:INDEX HEX` read by the guest from sysfs after the last measurement it
# cares about), cmdline.txt and, for signed configurations, the signing certificates in keys/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/testdata/ima}
WORK=$(mktemp -d)
trap 'pkill -F "$WORK/swtpm.pid" 2>/dev/null || true; rm -rf "$WORK"' EXIT

. "$ROOT/scripts/lib/setup.sh"
log() { printf '[capture] %s\n' "$*" >&2; }

ensure_packages swtpm swtpm-tools busybox-static cpio ima-evm-utils gcc libc6-dev openssl
ensure_guest_parts

# --- signing keys (test only; private keys never leave $WORK) -------------------------------
mkdir -p "$WORK/keys"
openssl genrsa -out "$WORK/keys/rsa.pem" 2048 2>/dev/null
openssl req -new -x509 -key "$WORK/keys/rsa.pem" -out "$WORK/keys/ima-rsa.crt" -subj /CN=weles-ima-rsa -days 36500 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/keys/ec.pem"
openssl req -new -x509 -key "$WORK/keys/ec.pem" -out "$WORK/keys/ima-ec.crt" -subj /CN=weles-ima-ec -days 36500 2>/dev/null

# --- initramfs ----------------------------------------------------------------------------------
IRD=$WORK/initrd
mkdir -p "$IRD"/{bin,proc,sys,dev,etc,tmp,signed,unsigned}
cp /bin/busybox "$IRD/bin/busybox"
cat > "$WORK/setima.c" <<'C'
/* setima FILE SIGFILE: copy an evmctl --sigfile signature into FILE's security.ima xattr. */
#include <stdio.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
  unsigned char buf[8192]; size_t n; FILE *f;
  if (argc != 3 || !(f = fopen(argv[2], "rb"))) return 2;
  n = fread(buf, 1, sizeof buf, f); fclose(f);
  if (setxattr(argv[1], "security.ima", buf, n, 0)) { perror("setxattr"); return 1; }
  return 0;
}
C
gcc -static -O2 -o "$IRD/bin/setima" "$WORK/setima.c"

printf '#!/bin/sh\necho signed-by-rsa\n' > "$IRD/signed/hello-rsa.sh"
printf '#!/bin/sh\necho signed-by-ec\n' > "$IRD/signed/hello-ec.sh"
printf 'tenant configuration, signed\n' > "$IRD/signed/app.conf"
printf '#!/bin/sh\necho unsigned\n' > "$IRD/unsigned/hello.sh"
chmod +x "$IRD"/signed/*.sh "$IRD"/unsigned/*.sh
evmctl ima_sign -a sha256 --key "$WORK/keys/rsa.pem" --sigfile "$IRD/signed/hello-rsa.sh" >/dev/null
evmctl ima_sign -a sha256 --key "$WORK/keys/ec.pem" --sigfile "$IRD/signed/hello-ec.sh" >/dev/null
evmctl ima_sign -a sha256 --key "$WORK/keys/ec.pem" --sigfile "$IRD/signed/app.conf" >/dev/null
# The sigfiles live outside the measured tree so reading them is not an entry of interest.
mkdir -p "$IRD/sigs" && mv "$IRD"/signed/*.sig "$IRD/sigs/"

cat > "$IRD/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t securityfs securityfs /sys/kernel/security; mount -t devtmpfs dev /dev
for s in /sigs/*.sig; do f=/signed/$(basename "$s" .sig); /bin/setima "$f" "$s" || echo "setima $f failed"; done
# proc, sysfs and securityfs are not measured, so reading PCRs and the log adds no entries.
printf 'dont_measure fsmagic=0x9fa0\ndont_measure fsmagic=0x62656572\ndont_measure fsmagic=0x73636673\nmeasure func=BPRM_CHECK\nmeasure func=FILE_MMAP mask=MAY_EXEC\nmeasure func=FILE_CHECK mask=MAY_READ uid=0\n' > /sys/kernel/security/ima/policy
/signed/hello-rsa.sh; /signed/hello-ec.sh; cat /signed/app.conf > /dev/null
/unsigned/hello.sh
echo 'echo hello-from-script' > /tmp/s.sh; chmod +x /tmp/s.sh; /tmp/s.sh
echo secret > /etc/weles.conf; cat /etc/weles.conf > /dev/null
( exec 3>>/etc/weles.conf; cat /etc/weles.conf > /dev/null )   # open_writers violation
echo "=== PCRS-BEGIN"
for b in sha1 sha256; do for i in 0 1 2 3 4 5 6 7 8 9 10; do echo "$b:$i $(cat /sys/class/tpm/tpm0/pcr-$b/$i)"; done; done
echo "=== PCRS-END"
echo "=== BINARY-BEGIN"; base64 /sys/kernel/security/ima/binary_runtime_measurements; echo "=== BINARY-END"
echo "=== ASCII-BEGIN"; base64 /sys/kernel/security/ima/ascii_runtime_measurements; echo "=== ASCII-END"
poweroff -f
INIT
chmod +x "$IRD/init"
(cd "$IRD" && find . | cpio -o -H newc 2>/dev/null | gzip -9 > "$WORK/initrd.cpio.gz")

section() { sed -n "/=== $1-BEGIN/,/=== $1-END/p" "$2" | grep -v '^===' | tr -d '\r'; }

capture() {
  local name=$1 cmdline=$2 dir=$OUT/$1
  log "booting: $name ($cmdline)"
  rm -rf "$WORK/vtpm"; mkdir -p "$WORK/vtpm"
  if [ -n "${VTPM:-}" ]; then
    "$VTPM" socket --tpm2 --tpmstate dir="$WORK/vtpm/state" --ctrl type=unixio,path="$WORK/vtpm/sock" \
      --log file="$WORK/vtpm/log" --pid file="$WORK/swtpm.pid" --daemon
    for _ in $(seq 50); do [ -S "$WORK/vtpm/sock" ] && break; sleep 0.1; done
  else
    swtpm_setup --tpm2 --tpmstate "$WORK/vtpm" --create-ek-cert --pcr-banks sha1,sha256 --overwrite \
      --config /dev/null >/dev/null 2>&1 || swtpm_setup --tpm2 --tpmstate "$WORK/vtpm" --pcr-banks sha1,sha256 --overwrite >/dev/null
    swtpm socket --tpm2 --tpmstate dir="$WORK/vtpm" --ctrl type=unixio,path="$WORK/vtpm/sock" \
      --pid file="$WORK/swtpm.pid" --daemon
  fi
  local t0=$SECONDS
  timeout 180 "$QEMU" -L "${QEMU_FIRMWARE[0]}" -L "${QEMU_FIRMWARE[1]}" -accel tcg -cpu max \
    -m 1024 -smp 1 -nographic -no-reboot -nic none \
    -chardev socket,id=chrtpm,path="$WORK/vtpm/sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
    -device "${DEVICE:-tpm-tis}",tpmdev=tpm0 -kernel "$KERNEL" -initrd "$WORK/initrd.cpio.gz" \
    -append "console=ttyS0 panic=-1 $cmdline" > "$WORK/console.log" 2>&1 || true
  log "  guest ran $((SECONDS - t0)) s"
  pkill -F "$WORK/swtpm.pid" 2>/dev/null || true
  mkdir -p "$dir"
  section BINARY "$WORK/console.log" | base64 -d > "$dir/binary_runtime_measurements"
  section ASCII "$WORK/console.log" | base64 -d > "$dir/ascii_runtime_measurements"
  section PCRS "$WORK/console.log" > "$dir/pcrs.txt"
  echo "$cmdline" > "$dir/cmdline.txt"
  [ -f "$WORK/vtpm/log" ] && cp "$WORK/vtpm/log" "$dir/vtpm.log"
  if [ ! -s "$dir/binary_runtime_measurements" ] || [ ! -s "$dir/pcrs.txt" ]; then
    log "  capture failed; console tail:"; tail -30 "$WORK/console.log" >&2; return 1
  fi
  case $cmdline in *sig*) mkdir -p "$dir/keys" && cp "$WORK"/keys/*.crt "$dir/keys/";; esac
  log "  $(wc -l < "$dir/ascii_runtime_measurements") entries, $(stat -c %s "$dir/binary_runtime_measurements") bytes"
}

declare -A CMDLINES=(
  [ima-ng-sha256]="ima_hash=sha256 ima_template=ima-ng"
  [ima-sig-sha256]="ima_hash=sha256 ima_template=ima-sig"
  [ima-sigv2-sha256]="ima_hash=sha256 ima_template=ima-sigv2"
  [ima-legacy-sha1]="ima_hash=sha1 ima_template=ima"
)
for c in ${CONFIGS:-ima-ng-sha256 ima-sig-sha256 ima-sigv2-sha256 ima-legacy-sha1}; do
  capture "$c" "${CMDLINES[$c]}"
done
{
  echo "Captured $(date -u +%Y-%m-%d) by scripts/capture-ima-fixtures.sh"
  echo "kernel: linux-image-$KVER (Debian), QEMU: $("$QEMU" --version | head -1), TCG"
  if [ -n "${VTPM:-}" ]; then echo "vTPM: weles-vtpm ($VTPM), libtpms default banks"; else echo "vTPM: $(swtpm --version | head -1), banks sha1+sha256"; fi
} > "$OUT/PROVENANCE.txt"
log "done: $OUT"
