"""Benchmark of warm standbys on the tiny box (TCG), both sides interleaved by bench/harness.py:

- rollback to a memory snapshot that has a standby -> first command, against the same rollback
  without a standby (a restore of the same image), on two sandboxes of one core;
- create from a warm pool -> first command, against a clone of a snapshot without a pool;
- memory cost: RSS of a standby's QEMU process (paused), beside a running sandbox's.

    .venv/bin/python bench/bench_standby.py [--runs 10] [--json FILE]

Targets (issue 17): rollback with a standby -> first command <= 0.4 s; create from a warm pool ->
first command <= 0.4 s (medians). Each step first waits for the background work of the previous
one (retiring the old guest, making the next standby), untimed, so the sides never overlap it;
that background cost is reported separately (what a standby costs to make).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import BenchEnv, load_and_domains, machine_info  # noqa: E402
from harness import Sides, report, spread_row, write_json  # noqa: E402

LIMITS = {"cpu": "1", "memory": "256M", "disk": "1G"}


def qemu_rss(domain: str) -> int:
    """Resident bytes of the QEMU process running ``domain`` (found by its ``guest=`` argument)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(f"guest={domain},".encode()) or a == f"guest={domain}".encode() for a in cmd):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise LookupError(f"no QEMU process for {domain}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"machine: {machine_info()}\nat start: {load_and_domains()}")
    env = BenchEnv("standby")
    core = env.core
    out: dict = {}
    try:
        cfg = {"box": "tiny", "resource_limits": LIMITS}
        warm, cold = core.create_sandbox("warm", cfg), core.create_sandbox("cold", cfg)
        for sid in (warm, cold):
            core.execute(sid, "echo base > /root/f; sync")
        core.create_snapshot(warm, "base", standby=True)
        core.create_snapshot(cold, "base", standby=False)
        core.snapshots.wait_background()

        def rollback(sid: str) -> float:
            core.snapshots.wait_background()            # the previous round's retire and refill, untimed
            core.execute(sid, "echo changed > /root/f")
            t0 = time.perf_counter()
            core.rollback(sid, "base")
            r = core.execute(sid, "cat /root/f")
            took = time.perf_counter() - t0
            assert r.stdout.strip() == "base", r
            return took

        def swapped() -> int:
            return len([a for a in core.audit_log("warm", 1000)
                        if a["operation"] == "rollback" and a["detail"].get("standby")])
        swaps_before = swapped()
        sides = Sides(runs=args.runs)
        sides.add("with standby", lambda: rollback(warm)).add("restore (no standby)", lambda: rollback(cold))
        s = sides.run()
        swaps = swapped() - swaps_before
        out["rollback"] = report("rollback -> first command", s, "with standby", "restore (no standby)")
        print("\n| absolute | median | p95 | min-max | n |\n|---|---|---|---|---|")
        out["rollback_target"] = spread_row("rollback with a standby -> first command", s["with standby"], 0.4)
        print(f"(rollbacks that swapped to a standby: {swaps} of {args.runs + 1})")

        core.snapshots.wait_background()
        pooled, plain = core.create_sandbox("pooled", cfg), core.create_sandbox("plain", cfg)
        for sid in (pooled, plain):
            core.execute(sid, "echo base > /root/f; sync")
        pool_snap = core.create_snapshot(pooled, "base", standby=False)
        plain_snap = core.create_snapshot(plain, "base", standby=False)
        core.set_pool(pool_snap, 1)
        core.snapshots.wait_background()
        n = {"i": 0}

        def clone(snap: str) -> float:
            core.snapshots.wait_background()            # refill of the pool, untimed
            n["i"] += 1
            t0 = time.perf_counter()
            cid = core.create_sandbox(f"c{n['i']}", {"clone_from": snap})
            r = core.execute(cid, "cat /root/f")
            took = time.perf_counter() - t0
            assert r.stdout.strip() == "base", r
            core.destroy(cid)
            return took

        sides = Sides(runs=args.runs)
        sides.add("from warm pool", lambda: clone(pool_snap)).add("clone (no pool)", lambda: clone(plain_snap))
        s = sides.run()
        out["clone"] = report("create from a snapshot -> first command", s, "from warm pool", "clone (no pool)")
        print("\n| absolute | median | p95 | min-max | n |\n|---|---|---|---|---|")
        out["clone_target"] = spread_row("create from a warm pool -> first command", s["from warm pool"], 0.4)
        pool_clones = [a for a in core.audit_log(None, 5000) if a["operation"] == "clone" and a["detail"].get("pool")]
        print(f"(clones that took a pooled standby: {len(pool_clones)} of {args.runs + 1})")

        core.snapshots.wait_background()
        made = [a["detail"]["seconds"] for a in core.audit_log(None, 5000)
                if a["operation"] == "standby" and a["outcome"] == "ready"]
        stbs = core.store.list_standbys()
        rss = [qemu_rss(x.domain) for x in stbs]
        running = [qemu_rss(core.get(x).domain) for x in (warm, cold)]
        out["memory"] = {"standby_rss_bytes": rss, "running_rss_bytes": running, "guest_memory": LIMITS["memory"],
                         "make_seconds": made}
        print(f"\nmemory: standby QEMU RSS {', '.join(f'{r / 2**20:.0f} MiB' for r in rss)} "
              f"(guest {LIMITS['memory']}); running sandboxes {', '.join(f'{r / 2**20:.0f} MiB' for r in running)}")
        print(f"making a standby (background): median {statistics.median(made):.2f} s, "
              f"min-max {min(made):.2f}-{max(made):.2f} s, n={len(made)}")
        print(f"at end: {load_and_domains()}")
        write_json(args.json, results=out, load_end=load_and_domains())
    finally:
        left = env.close()
        if left:
            print(f"LEAKED domains: {left}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
