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
