"""IMA verification benchmark: `weles ima verify` vs Keylime 7.14.3, side by side, one run.

    python3 bench/ima_vs_keylime.py --keylime-python .cache/keylime-venv/bin/python \
        [--sizes 10000,100000,1000000] [--out docs/bench-ima.json]

For each size N it generates an ima-ng log (sha256 file digests, PCR 10 sha256 bank) and a
matching Keylime runtime policy with N paths (bench/gen_ima.py), then measures on the same files:

- WELES: the whole `weles ima verify` process (start, policy load, parse, verify), ASCII and binary
  log, best and median of 5 runs, and its peak RSS;
- Keylime: policy load (json + schema validation) and `process_measurement_list`, in process, as
  its verifier runs them, and the peak RSS of that process;
- the SHA-256 floor: one core hashing exactly the bytes verification must hash;
- verification alone on one core, policy preloaded (examples/bench_verify), against that floor;
- incremental verification of a 1,000-entry tail after N-1,000 entries (both sides).

Prints a Markdown table and writes the raw numbers as JSON.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WELES = os.path.join(ROOT, "target", "release", "weles")
EXAMPLES = os.path.join(ROOT, "target", "release", "examples")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def timed(cmd, repeat):
    """Wall times of `repeat` runs of cmd and the peak RSS (KiB) of the last, via wait4."""
    times, rss = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        times.append(time.perf_counter() - t0)
        rss = usage.ru_maxrss
        code = os.waitstatus_to_exitcode(status)
        if code not in (0,):
            sys.exit(f"{cmd} exited {code}: {p.stderr.read().decode()}")
    return times, rss


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = open("/proc/cpuinfo").read()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "sha_ni": " sha_ni" in flags,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def bench(n, kl_python, workdir):
    d = os.path.join(workdir, f"n{n}")
    run([sys.executable, os.path.join(ROOT, "bench", "gen_ima.py"), str(n), d])
    policy = os.path.join(d, "policy.json")
    pcr = open(os.path.join(d, "pcr10")).read().strip()
    r = {"entries": n, "policy_bytes": os.path.getsize(policy)}
    for fmt in ("ascii", "binary"):
        log = os.path.join(d, fmt)
        r[f"{fmt}_log_bytes"] = os.path.getsize(log)
        times, rss = timed([WELES, "ima", "verify", "--log", log, "--policy", policy, "--pcr10", pcr], 10)
        r[f"weles_{fmt}_best_s"] = min(times)
        r[f"weles_{fmt}_median_s"] = statistics.median(times)
        r[f"weles_{fmt}_rss_kb"] = rss
    # Policy load alone: the whole `weles policy check` process on the same JSON.
    times, _ = timed([WELES, "policy", "check", policy], 10)
    r["weles_policy_check_s"] = min(times)
    floor = json.loads(run([os.path.join(EXAMPLES, "sha_floor"), os.path.join(d, "binary")]).stdout)
    r["sha256_floor_s"] = floor["floor_s"]
    r["bytes_hashed"] = floor["bytes_hashed"]
    tail = min(1000, n // 10)
    inc = json.loads(run([os.path.join(EXAMPLES, "bench_verify"), os.path.join(d, "binary"), policy, pcr, str(tail)]).stdout)
    r["weles_verify_one_core_s"] = inc["verify_one_core_s"]
    r["tail_entries"] = tail
    r["weles_tail_ms"] = inc["tail_best_of_20_ms"]
    kl = json.loads(
        run(
            [kl_python, os.path.join(ROOT, "bench", "keylime_verify.py"), "--log", os.path.join(d, "ascii"),
             "--policy", policy, "--pcr10", pcr, "--repeat", "3" if n <= 100000 else "1", "--tail", str(tail)]
        ).stdout
    )
    if not kl["compliant"]:
        sys.exit(f"Keylime found the benchmark log non-compliant: {kl}")
    r["keylime_policy_load_s"] = kl["policy_load_s"]
    r["keylime_verify_best_s"] = kl["verify_best_s"]
    r["keylime_total_s"] = kl["policy_load_s"] + kl["verify_best_s"]
    r["keylime_rss_kb"] = kl["max_rss_kb"]
    r["keylime_tail_ms"] = kl["tail_s"] * 1e3
    return r


def table(results):
    rows = [
        "| entries | Keylime policy load + verify | WELES policy load (`policy check` process) | WELES ASCII, end to end (best / median) | ratio (best / median) | WELES binary (best / median) | ratio (best / median) | verification on 1 core vs SHA-256 floor | peak RSS WELES / (policy+log) | Keylime RSS | 1k tail after N−1k: WELES / Keylime |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r["entries"]
        k = r["keylime_total_s"]
        a_best, a_med = r["weles_ascii_best_s"], r["weles_ascii_median_s"]
        b_best, b_med = r["weles_binary_best_s"], r["weles_binary_median_s"]
        one = r["weles_verify_one_core_s"]
        mem = r["weles_ascii_rss_kb"] * 1024 / (r["policy_bytes"] + r["ascii_log_bytes"])
        rows.append(
            f"| {n:,} | {r['keylime_policy_load_s']:.3f} s + {r['keylime_verify_best_s']:.3f} s = {k:.3f} s "
            f"| {r['weles_policy_check_s'] * 1e3:.1f} ms ({r['keylime_policy_load_s'] / r['weles_policy_check_s']:.0f}×) "
            f"| {a_best * 1e3:.1f} / {a_med * 1e3:.1f} ms | **{k / a_best:.0f}×** / {k / a_med:.0f}× "
            f"| {b_best * 1e3:.1f} / {b_med * 1e3:.1f} ms | **{k / b_best:.0f}×** / {k / b_med:.0f}× "
            f"| {one * 1e3:.1f} ms ({one / n * 1e6:.2f} µs/entry) vs {r['sha256_floor_s'] * 1e3:.1f} ms: **{one / r['sha256_floor_s']:.2f}×** "
            f"| {r['weles_ascii_rss_kb'] / 1024:.0f} MiB ({mem:.2f}×) "
            f"| {r['keylime_rss_kb'] / 1024:.0f} MiB | {r['weles_tail_ms']:.2f} ms / {r['keylime_tail_ms']:.1f} ms |"
        )
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keylime-python", required=True)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "bench-ima"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for exe in (WELES, os.path.join(EXAMPLES, "sha_floor"), os.path.join(EXAMPLES, "bench_verify")):
        if not os.path.exists(exe):
            sys.exit(f"missing {exe}: cargo build --release -p weles-cli --examples -p weles-ima")
    os.makedirs(a.workdir, exist_ok=True)
    results = []
    for n in [int(x) for x in a.sizes.split(",")]:
        print(f"benchmarking {n:,} entries ...", file=sys.stderr, flush=True)
        results.append(bench(n, a.keylime_python, a.workdir))
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": results}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out["machine"]))
    print(table(results))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    main()
