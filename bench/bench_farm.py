"""Benchmark of the test farm: 16 short jobs as a farm (linked clones of one memory snapshot)
with --parallel 2 and 4, against the naive loop (a fresh sandbox per job: create, run, destroy),
the same jobs, in rounds whose order rotates (bench/harness.py; one round by default: each side
takes one to two minutes), ratio of the wall times per round (farm / naive).

    .venv/bin/python bench/bench_farm.py [--jobs 16] [--rounds 1] [--json FILE]

Targets: the farm >= 3x faster than the naive loop in total wall time (base preparation
included: each farm run rebuilds its base), and per-job start (clone requested -> the job's
command started) <= 1.5 s (median).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_core import BenchEnv, LIMITS, machine_info  # noqa: E402
from harness import Sides, machine_state, report, spread_row, write_json  # noqa: E402

from vmsandbox.farm import Farm, loads_farm  # noqa: E402

#: a few seconds of shell work: some arithmetic in a loop, some waiting, some files
JOB = ("i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 2; "
       "mkdir -p /tmp/w && for f in 1 2 3 4 5; do echo $i > /tmp/w/$f; done; cat /tmp/w/* | wc -l")


def farm_text(jobs: int) -> str:
    return f"""name: bench
base: {{box: tiny, setup: "mkdir -p /work"}}
defaults: {{timeout: 120, cpu: "{LIMITS['cpu']}", memory: {LIMITS['memory']}, disk: {LIMITS['disk']}}}
matrix:
  - name: "job-{{N}}"
    run: "{JOB}"
    vars: {{N: {list(range(1, jobs + 1))}}}
"""


def naive(env: BenchEnv, jobs: int) -> dict:
    """The loop a user would write without the farm: a fresh sandbox per job."""
    core = env.core
    starts, t0 = [], time.monotonic()
    for n in range(jobs):
        c0 = time.monotonic()
        sid = core.create_sandbox(f"naive-{n}", {"box": "tiny", "resource_limits": LIMITS})
        called = time.monotonic()
        r = core.execute(sid, JOB, timeout=120)
        assert r.exit_code == 0 and r.stdout.strip() == "5", r
        starts.append(called - c0 + max(0.0, time.monotonic() - called - r.duration))
        core.destroy(sid)
    return {"wall": time.monotonic() - t0, "start_latency": starts}


def farm(env: BenchEnv, jobs: int, parallel: int, outdir: Path) -> dict:
    spec = loads_farm(farm_text(jobs), outdir, "bench.yaml")
    t0 = time.monotonic()
    res = Farm(spec).run(env.core, parallel=parallel, outdir=outdir, rebuild_base=True)
    wall = time.monotonic() - t0
    assert res.status == "passed", [(j["name"], j["status"], j["reason"]) for j in res.jobs]
    return {"wall": wall, "base": res.base["seconds"], "start_latency": [j["start_latency"] for j in res.jobs],
            "job_duration": [j["duration"] for j in res.jobs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of all three (default 1, no warm-up)")
    ap.add_argument("--json", dest="json_path", metavar="FILE")
    args = ap.parse_args()
    before = machine_state("before")
    env = BenchEnv("bf")
    runs: dict[str, list[dict]] = {"farm -p2": [], "naive loop": [], "farm -p4": []}

    def side(name: str) -> float:
        out = (naive(env, args.jobs) if name == "naive loop"
               else farm(env, args.jobs, int(name[-1]), env.state_dir / "farm-out"))
        runs[name].append(out)
        print(f"{name}: {out['wall']:.1f} s", flush=True)
        return out["wall"]
    try:
        sides = Sides(args.rounds, warmup=0)
        for name in runs:
            sides.add(name, lambda name=name: side(name))
        walls = sides.run()
    finally:
        left = env.close()
    after = machine_state("after")
    if left:
        print(f"error: domains left behind: {left}", file=sys.stderr)
        return 1
    print(f"\n{args.jobs} short jobs; each farm run rebuilds its base (in its wall time)")
    results = [report(f"wall time, {name} against the naive loop (target ratio <= 0.33: >= 3x faster)", walls, name,
                      "naive loop", target=0.33) for name in ("farm -p2", "farm -p4")]
    print("\n| per-job start (clone or create -> command started) | median | p95 | min-max | |\n|---|---|---|---|---|")
    starts = [spread_row(name, [x for r in rs for x in r["start_latency"]], None if name == "naive loop" else 1.5)
              for name, rs in runs.items()]
    print("farm base preparation: " + ", ".join(f"{name} {r['base']:.1f} s" for name, rs in runs.items()
                                                 for r in rs if "base" in r))
    ok = all(r["met"] for r in results) and all(s["met"] is not False for s in starts)
    print(f"\ntargets: >= 3x faster than the naive loop, start latency median <= 1.5 s: {'met' if ok else 'MISSED'}")
    write_json(args.json_path, machine=machine_info(), before=before, after=after, jobs=args.jobs, results=results,
               start_latency=starts, runs=runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
