"""Generate a synthetic ima-ng measurement list and a matching Keylime runtime policy.

    python3 bench/gen_ima.py N OUT_DIR [--bank sha256]

Writes OUT_DIR/ascii (ascii_runtime_measurements), OUT_DIR/binary (binary_runtime_measurements,
little-endian), OUT_DIR/policy.json (Keylime runtime policy v1 listing every path) and
OUT_DIR/pcr10 (`BANK:HEX`, the final PCR 10 of BANK). Entry i is
`/usr/lib/x86_64-linux-gnu/lib{i:07d}.so` with sha256(path) as its stand-in file digest, the same
shape as Keylime's baseline script, so both verifiers read byte-identical inputs.
"""
import hashlib
import json
import os
import struct
import sys


def template_data(digest: bytes, path: str) -> bytes:
    d = b"sha256:\0" + digest
    n = path.encode() + b"\0"
    return struct.pack("<I", len(d)) + d + struct.pack("<I", len(n)) + n


def main() -> None:
    n = int(sys.argv[1])
    out = sys.argv[2]
    bank = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--bank" else "sha256"
    os.makedirs(out, exist_ok=True)
    pcr = b"\0" * hashlib.new(bank).digest_size
    digests = {}
    with open(f"{out}/ascii", "w") as asc, open(f"{out}/binary", "wb") as binf:
        for i in range(n):
            path = "boot_aggregate" if i == 0 else f"/usr/lib/x86_64-linux-gnu/lib{i:07d}.so"
            fd = hashlib.sha256(path.encode()).digest()
            td = template_data(fd, path)
            th = hashlib.sha1(td).digest()
            pcr = hashlib.new(bank, pcr + hashlib.new(bank, td).digest()).digest()
            asc.write(f"10 {th.hex()} ima-ng sha256:{fd.hex()} {path}\n")
            name = b"ima-ng"
            binf.write(struct.pack("<I", 10) + th + struct.pack("<I", len(name)) + name + struct.pack("<I", len(td)) + td)
            digests.setdefault(path, []).append(fd.hex())
    policy = {
        "meta": {"version": 1, "generator": 0},
        "release": 0,
        "digests": digests,
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }
    with open(f"{out}/policy.json", "w") as f:
        json.dump(policy, f)
    with open(f"{out}/pcr10", "w") as f:
        f.write(f"{bank}:{pcr.hex()}\n")


if __name__ == "__main__":
    main()
