"""Benchmark of memory snapshots, rollback and clones on the tiny box, each beside a direct
libvirt counterpart on a guest of the same box, interleaved rounds (bench/harness.py: order
rotated, ratio per round):

- memory snapshot (``create_snapshot(sid, name)``) against a libvirt internal snapshot
  (``snapshotCreateXML``, memory and disk inside one standalone qcow2) of a running guest;
- rollback to the memory snapshot -> first command against ``revertToSnapshot`` of the internal
  snapshot -> first command (target: rollback >= 2x faster, i.e. ratio <= 0.5);
- clone of the memory snapshot -> first command against a cold boot done directly (new overlay,
  define, create, SSH until a command runs);
- rollback to a disk-only snapshot (a boot) -> first command against the direct cold boot of a
  guest that replaces a running one (destroy included).

    .venv/bin/python bench/bench_snapshots.py [--runs 5] [--json FILE]

A rollback compared with a raw restore of the same memory image is ``bench_rollback.py``'s; the
disk-only snapshot itself is ``bench_snapshot_disk.py``'s. Absolute targets under TCG (medians):
memory snapshot < 0.5 s, rollback < 1.5 s, clone < 2 s. Before each timed rollback the previous
one's background work is waited for (untimed), and the guest is changed (checked undone after).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import BenchEnv, DirectGuest, LIMITS, machine_info, qemu_img, remove_domain, ssh_until_command  # noqa: E402
from harness import Sides, machine_state, timed, report, spread_row, write_json  # noqa: E402

INTERNAL_SNAPSHOT = "<domainsnapshot><name>{}</name></domainsnapshot>"


def run(env: BenchEnv, runs: int) -> tuple[dict, dict]:
    core = env.core
    out: dict[str, dict] = {}
    extra: dict[str, list[float]] = {"memory_state_mib": [], "direct_destroy": []}
    n = iter(range(10 ** 6))
    sid = core.create_sandbox("snap", {"box": "tiny", "resource_limits": LIMITS})
    assert core.execute(sid, "true").exit_code == 0

    disk = env.state_dir / "direct" / "internal.qcow2"           # libvirt internal snapshots need a standalone image
    qemu_img("convert", "-O", "qcow2", str(env.box.image), str(disk))
    os.chmod(disk, 0o644)
    internal = DirectGuest(env, "internal", disk=disk)
    internal.boot().close()
    try:
        # 1. memory snapshot against an internal snapshot of a running guest (each deleted untimed)
        def memory_snapshot() -> float:
            core.snapshots.wait_background()
            t0 = time.perf_counter()
            snap = core.create_snapshot(sid, f"m{next(n)}", memory=True)
            took = time.perf_counter() - t0
            extra["memory_state_mib"].append(os.path.getsize(core.store.get_snapshot(snap).memory_ref) / (1 << 20))
            core.delete_snapshot(sid, snap)
            return took

        def internal_snapshot() -> float:
            t0 = time.perf_counter()
            snap = internal.dom.snapshotCreateXML(INTERNAL_SNAPSHOT.format(f"i{next(n)}"), 0)
            took = time.perf_counter() - t0
            snap.delete(0)
            return took
        out["memory snapshot vs internal snapshot"] = Sides(runs).add("vmsandbox", memory_snapshot) \
            .add("libvirt internal", internal_snapshot).run()

        # 2. rollback -> first command against internal revert -> first command
        mem = core.create_snapshot(sid, "base", memory=True)
        base = internal.dom.snapshotCreateXML(INTERNAL_SNAPSHOT.format("base"), 0)

        def rollback(to: str) -> float:
            core.snapshots.wait_background()
            k = next(n)
            assert core.execute(sid, f"touch /tmp/after{k} /root/after{k}").exit_code == 0
            t0 = time.perf_counter()
            core.rollback(sid, to)
            assert core.execute(sid, "true").exit_code == 0
            took = time.perf_counter() - t0
            assert core.execute(sid, f"test ! -e /tmp/after{k} && test ! -e /root/after{k}").exit_code == 0
            return took

        def revert() -> float:
            t0 = time.perf_counter()
            internal.dom.revertToSnapshot(base, 0)
            ssh_until_command(internal.port, env).close()
            return time.perf_counter() - t0
        out["rollback vs internal revert"] = Sides(runs).add("vmsandbox", lambda: rollback(mem)) \
            .add("libvirt internal", revert).run()
        base.delete(0)
        internal.destroy()

        # 3. clone -> first command against a cold boot done directly (both torn down untimed)
        def clone() -> float:
            core.snapshots.wait_background()
            t0 = time.perf_counter()
            cid = core.create_sandbox(f"clone{next(n)}", {"clone_from": mem})
            assert core.execute(cid, "true").exit_code == 0
            took = time.perf_counter() - t0
            core.destroy(cid)
            return took

        def cold_boot() -> float:
            guest = DirectGuest(env, f"cold{next(n)}")
            try:
                return timed(lambda: guest.boot().close())
            finally:
                if guest.dom is not None:
                    guest.destroy()
                guest.disk.unlink(missing_ok=True)
        out["clone vs cold boot"] = Sides(runs).add("vmsandbox", clone).add("direct", cold_boot).run()

        # 4. rollback to a disk-only snapshot (boots) against a cold boot replacing a running guest
        disk_snap = core.create_snapshot(sid, "disk", memory=False)
        current = [DirectGuest(env, f"cold{next(n)}")]
        current[0].boot().close()

        def replace() -> float:
            old, new = current[0], DirectGuest(env, f"cold{next(n)}")
            current[0] = new
            destroy = timed(old.destroy)
            extra["direct_destroy"].append(destroy)
            return destroy + timed(lambda: new.boot().close())
        out["rollback to disk-only snapshot vs cold boot"] = Sides(runs).add("vmsandbox", lambda: rollback(disk_snap)) \
            .add("direct", replace).run()
        current[0].destroy()
        core.snapshots.wait_background()
        extra["layers_at_end"] = [float(len(core.store.list_layers()))]
        core.destroy(sid)
    finally:
        if internal.dom is not None:
            remove_domain(internal.dom)
        disk.unlink(missing_ok=True)
    return out, extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="rounds per comparison, after one warm-up (default 5)")
    ap.add_argument("--json", metavar="FILE", help="also write the samples and results as JSON")
    args = ap.parse_args()
    before = machine_state("before")
    env = BenchEnv("bs")
    try:
        samples, extra = run(env, args.runs)
    finally:
        left = env.close()
        if left:
            print(f"LEAKED domains: {left}", file=sys.stderr)
    after = machine_state("after")
    targets = {"memory snapshot vs internal snapshot": None, "rollback vs internal revert": 0.5,
               "clone vs cold boot": None, "rollback to disk-only snapshot vs cold boot": None}
    results = [report(title, s, "vmsandbox", next(k for k in s if k != "vmsandbox"), target=targets[title])
               for title, s in samples.items()]
    print("\n| absolute (vmsandbox side) | median | p95 | min-max | |\n|---|---|---|---|---|")
    absolute = [spread_row("memory snapshot", samples["memory snapshot vs internal snapshot"]["vmsandbox"], 0.5),
                spread_row("rollback (memory) -> first command", samples["rollback vs internal revert"]["vmsandbox"], 1.5),
                spread_row("clone -> first command", samples["clone vs cold boot"]["vmsandbox"], 2.0),
                spread_row("direct destroy (of the cold boot's predecessor)", extra["direct_destroy"][1:])]
    mib = sorted(extra["memory_state_mib"])
    print(f"memory state per snapshot: {mib[len(mib) // 2]:.0f} MiB; layers at the end: {extra['layers_at_end'][0]:.0f}")
    write_json(args.json, machine=machine_info(), before=before, after=after, results=results, absolute=absolute,
               samples=samples, extra=extra)
    ok = all(r["met"] is not False for r in results + absolute) and not left
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
