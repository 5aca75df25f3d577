"""What the security measures cost: create and clone with and without a host-key rotation of
their own (``ssh.own_host_key``), interleaved rounds (bench/harness.py: order rotated, ratio per
round); the rotation itself (from the audit log); copy throughput in and out, how fast a capped
copy of /dev/zero stops, and the state-directory permission check.

    .venv/bin/python bench/bench_security.py [--runs 3] [--copy-mib 64] [--cap-mib 256] [--json FILE]

Target: the rotation itself < 0.5 s (median). Exits 1 when it is missed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import BOX_DIR, BenchEnv, machine_info  # noqa: E402
from harness import Sides, machine_state, ms, report, spread_row, write_json  # noqa: E402

from vmsandbox import SandboxCore, perms  # noqa: E402
from vmsandbox.exceptions import ResourceLimitError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="rounds, after one warm-up (default 3)")
    ap.add_argument("--copy-mib", type=int, default=64, help="size of the file copied in and out (default 64)")
    ap.add_argument("--cap-mib", type=int, default=256, help="cap of the /dev/zero copy (default 256)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    before = machine_state("before")
    env = BenchEnv("bk", config={"ssh": {"own_host_key": True}}, start_watchdog=False)
    (env.state_dir / "direct").rmdir()        # BenchEnv's directory for direct guests (0755): unused here
    # the side without rotation: a second core on the same state directory and prefix
    off = SandboxCore(config={"sandbox": {"state_directory": str(env.state_dir), "box_directory": BOX_DIR,
                                          "domain_prefix": env.prefix, "accelerator": "tcg", "boot_timeout_seconds": 90},
                              "monitoring": {"enabled": False}, "ssh": {"own_host_key": False}}, start_watchdog=False)
    cores = {"rotation on": env.core, "rotation off": off}
    clones: dict[str, list[float]] = {k: [] for k in cores}
    names: list[str] = []
    n = iter(range(10 ** 6))
    extra: dict = {}

    def lifecycle(side: str) -> float:
        core, k = cores[side], next(n)
        t0 = time.perf_counter()
        sid = core.create_sandbox(f"s{k}")
        created = time.perf_counter() - t0
        snap = core.create_snapshot(sid, "m")
        t0 = time.perf_counter()
        cid = core.create_sandbox(f"c{k}", {"clone_from": snap})
        clones[side].append(time.perf_counter() - t0)
        if side == "rotation on":
            names.extend((f"s{k}", f"c{k}"))
        core.destroy(cid)
        core.destroy(sid)
        return created
    try:
        sides = Sides(args.runs)
        for side in cores:
            sides.add(side, lambda side=side: lifecycle(side))
        creates = sides.run()
        clones = {k: v[sides.warmup:] for k, v in clones.items()}
        rotation = [r["detail"]["seconds"] for r in env.core.audit_log(limit=1000)
                    if r["operation"] == "host_key" and r["sandbox"] in names[2 * sides.warmup:]]
        sid = env.core.create_sandbox("copies")
        extra["copies"] = copies(env.core, sid, args.copy_mib, args.cap_mib)
        env.core.destroy(sid)
        t0 = time.perf_counter()
        problems = perms.check(env.state_dir)
        extra["perms_check_seconds"] = time.perf_counter() - t0
        extra["perms_problems"] = [str(p) for p in problems]
    finally:
        for info in off.store.list_sandboxes():
            off.destroy(info.id)
        off.close()
        left = env.close()
    after = machine_state("after")
    results = [report("create (to SSH ready)", creates, "rotation on", "rotation off"),
               report("clone of a memory snapshot", clones, "rotation on", "rotation off")]
    print("\n| | median | p95 | min-max | |\n|---|---|---|---|---|")
    rot = spread_row("host-key rotation itself (audit log)", rotation, 0.5)
    c = extra["copies"]
    print(f"\n{args.copy_mib} MiB up {c['up_mib_s']:.1f} MiB/s, down {c['down_mib_s']:.1f} MiB/s; "
          f"/dev/zero capped at {args.cap_mib} MiB "
          f"in {c['capped_seconds']:.2f} s; state permission check {ms(extra['perms_check_seconds'])}, "
          f"{len(extra['perms_problems'])} problems")
    write_json(args.json, machine=machine_info(), before=before, after=after, results=results, rotation=rot,
               samples={"create": creates, "clone": clones, "rotation": rotation}, extra=extra)
    if left:
        print(f"LEAKED domains: {left}", file=sys.stderr)
    return 0 if rot["met"] and not extra["perms_problems"] and not left else 1


def copies(core, sid: str, mib: int, cap_mib: int) -> dict:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        blob = Path(d) / "blob"
        blob.write_bytes(os.urandom(mib << 20))
        t = time.perf_counter()
        core.put_file(sid, blob, "/root/blob")
        up = time.perf_counter() - t
        t = time.perf_counter()
        core.get_file(sid, "/root/blob", Path(d) / "back")
        down = time.perf_counter() - t
        t = time.perf_counter()
        try:
            core.get_file(sid, "/dev/zero", Path(d) / "zero", max_size=cap_mib << 20)
        except ResourceLimitError:
            pass
        capped = time.perf_counter() - t
    return {"up_mib_s": mib / up, "down_mib_s": mib / down, "capped_seconds": capped}


if __name__ == "__main__":
    sys.exit(main())
