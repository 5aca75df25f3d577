"""Before/after benchmark of a code change on the sandbox hot paths, interleaved in one run:
create to first command, exec round trip, memory snapshot, rollback to first command, destroy.

Each round runs one short worker process per tree (``--before`` a checkout of the older code,
``--after`` this one), alternating which goes first; the report gives each pair's ratio
(after/before) with the median and min-max, since boot times here fall in two modes.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/bench_seam.py --before /tmp/before --rounds 5 [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, statistics, sys, tempfile, time
from vmsandbox import SandboxCore
state = tempfile.mkdtemp(prefix="vmsbx-bench-", dir="/var/tmp"); os.chmod(state, 0o711)
cfg = {"sandbox": {"state_directory": state, "box_directory": sys.argv[1], "domain_prefix": "vbs" + sys.argv[2] + "-"},
       "monitoring": {"enabled": False}, "rollback": {"retention_days": 0}}
core = SandboxCore(config=cfg)
out = {}
t = time.perf_counter(); sid = core.create_sandbox("b"); core.execute(sid, "true")
out["create_to_first_command"] = time.perf_counter() - t
runs = []
for _ in range(30):
    t = time.perf_counter(); core.execute(sid, "true"); runs.append(time.perf_counter() - t)
out["exec_round_trip"] = statistics.median(runs)
t = time.perf_counter(); snap = core.create_snapshot(sid, "s"); out["memory_snapshot"] = time.perf_counter() - t
t = time.perf_counter(); core.create_snapshot(sid, "d", memory=False); out["disk_snapshot"] = time.perf_counter() - t
core.execute(sid, "echo x > /root/x")
t = time.perf_counter(); core.rollback(sid, snap); core.execute(sid, "true")
out["rollback_to_first_command"] = time.perf_counter() - t
core.snapshots.wait_background()
t = time.perf_counter(); core.destroy(sid); out["destroy"] = time.perf_counter() - t
core.close()
import shutil; shutil.rmtree(state, ignore_errors=True)
print(json.dumps(out))
"""


def run(tree: Path, box_dir: str, tag: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", WORKER, box_dir, tag], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout of the code to compare against")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--box-dir", default=os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pairs: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        order = [("before", args.before), ("after", ROOT)]
        if r % 2:
            order.reverse()
        got = {side: run(tree, args.box_dir, f"{side[0]}{r}") for side, tree in order}
        for k in got["after"]:
            pairs.setdefault(k, []).append((got["before"][k], got["after"][k]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    report = {}
    print(f"{'what':28} {'before':>10} {'after':>10} {'ratio median':>13} {'ratio min-max':>15}")
    for k, ps in pairs.items():
        ratios = [a / b for b, a in ps]
        report[k] = {"before_median": statistics.median(b for b, _ in ps), "after_median": statistics.median(a for _, a in ps),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        unit, f = ("ms", 1000) if report[k]["before_median"] < 1 else ("s", 1)
        print(f"{k:28} {report[k]['before_median'] * f:>8.1f}{unit:>2} {report[k]['after_median'] * f:>8.1f}{unit:>2} "
              f"{report[k]['ratio_median']:>13.2f} {report[k]['ratio_min']:>7.2f}-{report[k]['ratio_max']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
