#!/usr/bin/env bash
# Builds the WELES demo guest: Debian's 6.1 kernel (IMA and the TPM drivers built in) and an
# initramfs root with OpenSSH's sshd, busybox, weles-guest and an IMA policy, plus QEMU 7.2 to run
# it. Everything comes from Debian packages (the kernel and QEMU through `apt-get download` +
# `dpkg -x`, because installing qemu-system-x86 conflicts with the qemu-utils of some images;
# sshd, busybox and the shared libraries from the installed packages).
#
#   scripts/guest-image.sh [--out DIR] [--guest-agent PATH]
#
#     --out DIR            where the image goes (default: .cache/guest)
#     --guest-agent PATH   the weles-guest binary to install (default: target/debug/weles-guest)
#
# Writes into DIR:
#   vmlinuz, initrd.img   the kernel and the root filesystem (gzip'd newc cpio)
#   rootfs/               the same tree, unpacked: `weles policy generate --rootfs` reads it
#   tenant, tenant.pub    the demo tenant's SSH key (root's authorized key in the guest; the demo
#                         also signs policies and API requests with it). Kept across rebuilds.
#   image.json            what `weles demo` needs: paths, QEMU, firmware, kernel command line
#
# Downloads are cached in .cache/vm. A rebuild takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib/setup.sh"
OUT=$ROOT/.cache/guest
AGENT=$ROOT/target/debug/weles-guest
while (($#)); do
  case $1 in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --guest-agent) AGENT=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "guest-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$AGENT" ] || { echo "guest-image.sh: no weles-guest at $AGENT (cargo build -p weles-guest)" >&2; exit 2; }

ensure_packages busybox-static openssh-server openssh-client cpio gzip
ensure_guest_parts

log "building the guest root in $OUT/rootfs"
rm -rf "$OUT/rootfs" "$OUT/initrd.img"
mkdir -p "$OUT"
R=$OUT/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/ssh,etc/ima,root,proc,sys,dev,run,tmp,var/empty}
chmod 700 "$R/root"

# Binaries and every shared library they load (the loader included).
install_elf() {
  local src=$1 dst=$2
  install -D -m 755 "$src" "$R$dst"
  ldd "$src" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    [ -e "$R$lib" ] || install -D -m 755 "$lib" "$R$lib"
  done
}
install -m 755 /bin/busybox "$R/bin/busybox"
install_elf /usr/sbin/sshd /usr/sbin/sshd
install_elf "$AGENT" /usr/local/bin/weles-guest
# A debug build carries ~30 MB of debug information the guest has no use for.
command -v strip >/dev/null && strip --strip-debug "$R/usr/local/bin/weles-guest"

# Kernel modules for virtio-pci, virtio-net and virtio-serial, in dependency order.
declare -A loaded=()
MODULES=()
add_module() {
  local rel dep
  rel=$(awk -F: -v m="/$1.ko" 'index($1, m) && substr($1, length($1) - length(m) + 1) == m {print $1; exit}' "$MODDIR/modules.dep")
  [ -n "$rel" ] || { echo "guest-image.sh: module $1 not in $MODDIR/modules.dep" >&2; exit 1; }
  [ -n "${loaded[$rel]:-}" ] && return
  for dep in $(awk -F: -v r="$rel" '$1 == r {print $2}' "$MODDIR/modules.dep"); do
    add_module "$(basename "$dep" .ko)"
  done
  loaded[$rel]=1
  MODULES+=("$rel")
  install -D -m 644 "$MODDIR/$rel" "$R/lib/modules/$KVER/$rel"
}
for m in virtio_pci virtio_net virtio_console; do add_module "$m"; done
printf '%s\n' "${MODULES[@]}" > "$R/etc/modules-order"

# Accounts: root logs in with the tenant's key; sshd's privilege separation user.
cat > "$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534::/run/sshd:/bin/false
EOF
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
printf 'root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n' > "$R/etc/shadow"
chmod 600 "$R/etc/shadow"
echo weles-demo > "$R/etc/hostname"

if [ ! -f "$OUT/tenant" ]; then
  ssh-keygen -q -t ed25519 -N '' -C weles-demo-tenant -f "$OUT/tenant"
fi
install -D -m 644 "$OUT/tenant.pub" "$R/etc/ssh/authorized_keys/root"

# sshd: the host key lives in the vTPM; weles-guest signs for sshd through HostKeyAgent, writes
# the key's public line for HostKey and the certificate the manager issues for HostCertificate.
cat > "$R/etc/ssh/sshd_config" <<'EOF'
# WELES demo guest. The host key is in the vTPM: every handshake signature needs the manager's
# live authorization, given only while this VM complies with its tenant's policy.
HostKey /run/weles/host-key.pub
HostCertificate /run/weles/host-cert.pub
HostKeyAgent /run/weles/agent.sock
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/sshd.pid
EOF

# The IMA policy: executables and executable mappings everywhere; files read by root, except
# the pseudo filesystems and the ramfs that holds runtime state (/run, /tmp). The root
# filesystem (tmpfs) is measured: the tenant's policy names every file of this image. The
# kernel's `ima_policy=tcb` would skip it (it does not measure tmpfs), hence our own policy.
cat > "$R/etc/ima/policy" <<'EOF'
dont_measure fsmagic=0x9fa0
dont_measure fsmagic=0x62656572
dont_measure fsmagic=0x73636673
dont_measure fsmagic=0x1373
dont_measure fsmagic=0x1cd1
measure func=BPRM_CHECK
measure func=FILE_MMAP mask=MAY_EXEC
dont_measure fsmagic=0x858458f6
measure func=FILE_CHECK mask=MAY_READ uid=0
EOF

# A small "service" the tenant cares about; the demo tampers with it.
cat > "$R/usr/local/bin/weles-hello" <<'EOF'
#!/bin/sh
echo "hello from $(hostname): kernel $(uname -r), IMA entries so far: $(cat /sys/kernel/security/ima/runtime_measurements_count)"
EOF
chmod 755 "$R/usr/local/bin/weles-hello"

cat > "$R/init" <<'EOF'
#!/bin/busybox sh
# WELES demo guest init: mounts, loads the IMA policy, brings up virtio, starts weles-guest
# and, once the manager certified the vTPM host key, sshd.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t securityfs securityfs /sys/kernel/security
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox cat /etc/ima/policy > /sys/kernel/security/ima/policy || echo "weles-init: IMA policy refused"
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin:/usr/local/bin
chmod 755 /   # the initramfs root is world-writable; sshd's StrictModes refuses that
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t ramfs ramfs /run && mount -t ramfs ramfs /tmp
mkdir -p -m 755 /run/sshd && mkdir -p -m 700 /run/weles
hostname "$(cat /etc/hostname)"
while read -r m; do insmod "/lib/modules/$(uname -r)/$m" || echo "weles-init: insmod $m failed"; done < /etc/modules-order
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  [ -f "$p/name" ] && ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
echo "weles-init: starting weles-guest"
weles-guest --agent-socket /run/weles/agent.sock --host-key /run/weles/host-key.pub \
  --host-certificate /run/weles/host-cert.pub \
  --on-certificate '[ -f /run/sshd.pid ] && kill -HUP "$(cat /run/sshd.pid)"; true' \
  2>/run/weles/agent.log &
i=0
while [ ! -s /run/weles/host-cert.pub ]; do
  sleep 1; i=$((i + 1))
  [ $((i % 30)) -eq 0 ] && echo "weles-init: still waiting for the host certificate ($i s)"
done
/usr/sbin/sshd -E /dev/console && echo "weles-init: sshd started"
while :; do sleep 3600; done
EOF
chmod 755 "$R/init"

(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1 > "$OUT/initrd.img")
install -m 644 "$KERNEL" "$OUT/vmlinuz"

cat > "$OUT/image.json" <<EOF
{
  "kernel": "$OUT/vmlinuz",
  "initrd": "$OUT/initrd.img",
  "rootfs": "$R",
  "tenant_key": "$OUT/tenant",
  "qemu": "$QEMU",
  "firmware": ["${QEMU_FIRMWARE[0]}", "${QEMU_FIRMWARE[1]}"],
  "append": "console=ttyS0 panic=-1 quiet ima_hash=sha256 ima_template=ima-ng",
  "kernel_version": "$KVER"
}
EOF
log "guest image ready: $OUT ($(du -sh "$OUT/initrd.img" | cut -f1) initrd, ${#MODULES[@]} modules)"
