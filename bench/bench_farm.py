"""Benchmark of the test farm: 16 short jobs as a farm (linked clones of one memory snapshot)
with --parallel 2 and 4, against the naive loop (a fresh sandbox per job: create, run, destroy),
the same jobs, one run on the same machine.

    .venv/bin/python bench/bench_farm.py [--jobs 16] [--json FILE]

Targets: the farm >= 3x faster than the naive loop in total wall time (base preparation
included: each farm run rebuilds its base), and per-job start (clone requested -> the job's
command started) <= 1.5 s (median).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_core import BenchEnv, LIMITS, load_and_domains, machine_info, median, print_table  # noqa: E402

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    before = load_and_domains()
    env = BenchEnv("bf")
    out: dict = {"machine": machine_info(), "load_before": before, "jobs": args.jobs}
    try:
        outdir = env.state_dir / "farm-out"
        # the naive loop between the two farm runs, so a change of load hits both sides
        out["farm_p2"] = farm(env, args.jobs, 2, outdir)
        out["naive"] = naive(env, args.jobs)
        out["farm_p4"] = farm(env, args.jobs, 4, outdir)
    finally:
        left = env.close()
        out["load_after"] = load_and_domains()
    if left:
        print(f"error: domains left behind: {left}", file=sys.stderr)
        return 1
    nv = out["naive"]["wall"]
    rows = [("run", "wall (s)", "speed-up", "start latency median / max (s)")]
    rows.append(("naive loop (create, run, destroy)", f"{nv:.1f}", "1.0x",
                 f"{median(out['naive']['start_latency']):.2f} / {max(out['naive']['start_latency']):.2f}"))
    ok = True
    for key, label in (("farm_p2", "farm --parallel 2"), ("farm_p4", "farm --parallel 4")):
        f = out[key]
        speed = nv / f["wall"]
        lat = f["start_latency"]
        rows.append((f"{label} (base {f['base']:.1f} s incl.)", f"{f['wall']:.1f}", f"{speed:.1f}x",
                     f"{median(lat):.2f} / {max(lat):.2f}"))
        ok &= speed >= 3 and median(lat) <= 1.5
    print_table(f"{args.jobs} short jobs, one run (load before {before['loadavg'][0]:.2f}, "
                f"after {out['load_after']['loadavg'][0]:.2f})", rows)
    print(f"\ntargets: >= 3x faster than the naive loop, start latency median <= 1.5 s: {'met' if ok else 'MISSED'}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
