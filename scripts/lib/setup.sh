# Shared setup for scripts/*.sh on Debian 12 (as root). Source it; it defines functions only.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# ensure_packages PKG...: installs the Debian packages that are missing.
ensure_packages() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# ensure_rust: the toolchain pinned in rust-toolchain.toml (1.95.0) with rustfmt and clippy.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v rustup >/dev/null 2>&1; then
    ensure_packages curl ca-certificates build-essential
    log "installing Rust 1.95.0 with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  rustup toolchain list | grep -q '^1\.95\.0' || rustup toolchain install 1.95.0 --profile minimal -c rustfmt,clippy
  ensure_packages build-essential pkg-config
}

# keylime_python: prints the python of a venv with Keylime 7.14.3 (the peer for parity tests and
# benchmarks), creating it under .cache/ on first use.
keylime_python() {
  local venv="$ROOT/.cache/keylime-venv"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import keylime' 2>/dev/null; then
    command -v python3 >/dev/null 2>&1 || ensure_packages python3
    python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || ensure_packages python3-venv
    log "installing Keylime 7.14.3 from PyPI into $venv" >&2
    python3 -m venv "$venv" >&2
    # The wheel declares no dependencies; these are Keylime's requirements for the IMA path.
    "$venv/bin/pip" install -q keylime==7.14.3 cryptography tornado pyyaml requests "sqlalchemy>=2.0.39" \
      alembic packaging psutil lark pyasn1 pyasn1-modules jinja2 jsonschema >&2
  fi
  echo "$venv/bin/python"
}

# ensure_guest_parts: QEMU 7.2, SeaBIOS and Debian's 6.1 kernel, unpacked from their Debian
# packages (`apt-get download` + `dpkg -x`: installing qemu-system-x86 conflicts with the
# qemu-utils of some images) into $ROOT/.cache/vm/root, plus the libraries QEMU loads. Sets QEMU,
# QEMU_FIRMWARE (two -L directories), KERNEL, KVER and MODDIR.
ensure_guest_parts() {
  local cache="$ROOT/.cache/vm"
  KVER=6.1.0-56-amd64
  ensure_packages libaio1 libbpf1 libcapstone4 libdaxctl1 libfdt1 libfuse3-3 libglib2.0-0 \
    libgnutls30 libibverbs1 libjpeg62-turbo libndctl6 libnuma1 libpmem1 libpng16-16 libpixman-1-0 \
    librdmacm1 libsasl2-2 libseccomp2 libslirp0 liburing2 libvdeplug2 libzstd1
  if [ ! -x "$cache/root/usr/bin/qemu-system-x86_64" ] || [ ! -f "$cache/root/boot/vmlinuz-$KVER" ]; then
    log "fetching QEMU 7.2, SeaBIOS and linux-image-$KVER from Debian into $cache"
    mkdir -p "$cache/debs" "$cache/root"
    apt-get update -qq
    (cd "$cache/debs" && apt-get download -q qemu-system-x86 qemu-system-common qemu-system-data \
        seabios "linux-image-$KVER" >/dev/null)
    local f
    for f in "$cache"/debs/*.deb; do dpkg -x "$f" "$cache/root"; done
  fi
  if [ ! -f "$cache/root/lib/modules/$KVER/modules.dep" ]; then
    # The package leaves modules.dep to depmod at install time.
    ensure_packages kmod
    /sbin/depmod -b "$cache/root" "$KVER"
  fi
  QEMU=$cache/root/usr/bin/qemu-system-x86_64
  QEMU_FIRMWARE=("$cache/root/usr/share/qemu" "$cache/root/usr/share/seabios")
  KERNEL=$cache/root/boot/vmlinuz-$KVER
  MODDIR=$cache/root/lib/modules/$KVER
  local out
  if ! out=$("$QEMU" --version 2>&1); then
    echo "QEMU at $QEMU does not run: $out" >&2
    return 1
  fi
}
