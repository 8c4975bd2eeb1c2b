"""Keylime's side of the IMA benchmark and of the parity test: verify one log with Keylime 7.14.3.

    python bench/keylime_verify.py --log ASCII_LOG --policy POLICY_JSON [--pcr10 BANK:HEX]
                                   [--ignore-tomtou] [--repeat N]

Loads the runtime policy the way Keylime's verifier does (json.loads + validate_runtime_policy),
then runs keylime.ima.ima.process_measurement_list on the ASCII lines. Prints one JSON object:
{"compliant", "failures": [event ids], "policy_load_s", "verify_s", "verify_best_s", "max_rss_kb"}.
Requires a venv with keylime installed (see scripts/keylime-venv.sh). No Keylime code is copied here.
"""
import argparse
import json
import resource
import sys
import time
import types

sys.modules.setdefault("gpg", types.ModuleType("gpg"))  # keylime.signing imports it; unused here

import logging  # noqa: E402

logging.disable(logging.CRITICAL)

from keylime import config  # noqa: E402
from keylime.common.algorithms import Hash  # noqa: E402
from keylime.ima import ima  # noqa: E402
from keylime.ima.file_signatures import ImaKeyring, ImaKeyrings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--pcr10")
    ap.add_argument("--ignore-tomtou", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tail", type=int, default=0, help="also time incremental verification of the last N lines")
    a = ap.parse_args()

    # Keylime reads ignore_tomtou_errors from verifier.conf; pin it so the result does not depend
    # on a config file. Note Keylime's condition: it *fails* ToMToU entries when this is True.
    orig = config.getboolean

    def getboolean(section, option, *args, **kw):
        if option == "ignore_tomtou_errors":
            return not a.ignore_tomtou
        return orig(section, option, *args, **kw)

    config.getboolean = getboolean

    t0 = time.perf_counter()
    with open(a.policy, "rb") as f:
        policy = json.loads(f.read())
    ima.validate_runtime_policy(policy)
    t_policy = time.perf_counter() - t0

    with open(a.log, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().split("\n")
    bank, pcr = ("sha1", None)
    if a.pcr10:
        bank, pcr = a.pcr10.split(":", 1)
    # Trusted IMA keys, as Keylime's verifier builds them (verification/tpm_engine.py).
    keyrings = None
    if policy.get("verification-keys"):
        keyrings = ImaKeyrings()
        keyrings.set_tenant_keyring(ImaKeyring.from_string(policy["verification-keys"]))
    times = []
    fail = None
    for _ in range(max(1, a.repeat)):
        t0 = time.perf_counter()
        _, fail = ima.process_measurement_list(
            None, lines, policy, pcrval=pcr, hash_alg=Hash(bank), ima_keyrings=keyrings
        )
        times.append(time.perf_counter() - t0)
    events = sorted(set(fail.get_event_ids())) if fail else []
    tail_s = None
    if a.tail:
        # Keylime's incremental path: verify the head with an AgentAttestState, then only the tail.
        from keylime.agentstates import AgentAttestState

        body = [ln for ln in lines if ln]
        head = body[: len(body) - a.tail]
        head_pcr = None
        if pcr:
            import hashlib

            value = b"\0" * hashlib.new(bank).digest_size
            for ln in head:
                parts = ln.split(" ", 4)
                d, path = parts[3], parts[4]
                alg, hexd = d.split(":", 1)
                dn = alg.encode() + b":\0" + bytes.fromhex(hexd)
                n = path.encode() + b"\0"
                td = len(dn).to_bytes(4, "little") + dn + len(n).to_bytes(4, "little") + n
                value = hashlib.new(bank, value + hashlib.new(bank, td).digest()).digest()
            head_pcr = value.hex()
        st = AgentAttestState("bench")
        ima.process_measurement_list(st, head, policy, pcrval=head_pcr, hash_alg=Hash(bank), ima_keyrings=keyrings)
        t0 = time.perf_counter()
        _, tail_fail = ima.process_measurement_list(
            st, body[st.get_next_ima_ml_entry():], policy, pcrval=pcr, hash_alg=Hash(bank), ima_keyrings=keyrings
        )
        tail_s = time.perf_counter() - t0
        if tail_fail:
            events.append("tail:" + ",".join(tail_fail.get_event_ids()))
    print(json.dumps({
        "compliant": not fail,
        "failures": events,
        "policy_load_s": round(t_policy, 4),
        "verify_s": round(times[0], 4),
        "verify_best_s": round(min(times), 4),
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "tail_s": None if tail_s is None else round(tail_s, 5),
    }))


if __name__ == "__main__":
    main()
