"""Before/after benchmark of a code change on the sandbox hot paths, interleaved in one run:
create to first command, exec round trip, memory snapshot, rollback to first command, destroy.

Each round runs one short worker process per tree (``--before`` a checkout of the older code,
"after" this one), in rounds whose order rotates (bench/harness.py); the report gives each
round's ratio (after/before) with the median and min-max, since boot times here fall in two modes.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/bench_seam.py --before /tmp/before --rounds 5 [--warmup 0] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import Sides, machine_state, report, write_json  # noqa: E402

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
    ap.add_argument("--warmup", type=int, default=0, help="rounds run first and not recorded (default 0)")
    ap.add_argument("--box-dir", default=os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes"))
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    before = machine_state("before")
    got: dict[str, list[dict]] = {"after": [], "before": []}
    n = iter(range(10 ** 6))

    def side(name: str, tree: Path) -> float:
        out = run(tree, args.box_dir, f"{name[0]}{next(n)}{uuid.uuid4().hex[:3]}")
        got[name].append(out)
        return out["create_to_first_command"]
    Sides(args.rounds, warmup=args.warmup, on_round=lambda i, _r: print(f"round {i + 1}/{args.rounds} done",
                                                                         file=sys.stderr)) \
        .add("after", lambda: side("after", ROOT)).add("before", lambda: side("before", args.before)).run()
    after = machine_state("after")
    results = []
    for k in got["after"][0]:
        samples = {name: [w[k] for w in got[name][args.warmup:]] for name in got}
        results.append(report(k, samples, "after", "before"))
    write_json(args.json, before=before, after=after, results=results, workers=got)


if __name__ == "__main__":
    main()
