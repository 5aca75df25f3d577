"""Benchmark of the distributed farm's engine: N worker processes on the test double provider
(no guests; fake clones) behind the real Celery + Redis path, S slots each, J jobs of 0.1 s.

    /path/to/python bench/bench_farm_distributed.py [--workers 1,4,16] [--slots 4] [--jobs 2000] [--json FILE]

For each worker count: wall time from submit to the last outcome, throughput, and the per-job
overhead the engine adds (wall x slots in use / jobs - the job's own 0.1 s), i.e. what a slot
spends per job on the broker, the payload check, the clone record, the events and the outputs'
blob. Targets: <= 50 ms per job; throughput linear in workers up to 16 (>= 0.8 x linear).
Starts its own redis-server on 127.0.0.1 (a free port) and stops it and every worker on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import machine_state, process_cpu as cpu_of, write_json  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402
from vmsandbox.farm import Farm, loads_farm  # noqa: E402
from vmsandbox.farm.distributed import list_workers, run_distributed  # noqa: E402
from vmsandbox.testing import fake_core  # noqa: E402

JOB_SECONDS = 0.1


def one(url: str, redis_pid: int, workers: int, slots: int, jobs: int, tmp: Path) -> dict:
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for i in range(workers):
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "farm_fake_worker.py"), url,
                                           f"b{workers}-{i}", str(slots), str(tmp / f"w{workers}-{i}")],
                                          stdout=subprocess.DEVNULL, stderr=open(tmp / f"w{workers}-{i}.log", "w"),
                                          env=env, start_new_session=True))
        deadline = time.monotonic() + 120
        while len([w for w in list_workers(url) if w["name"].startswith(f"b{workers}-")]) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not come up")
            time.sleep(0.5)
        time.sleep(2)                  # every Celery consumer connected
        entries = "".join(f"  - {{name: 'j{k}-{{N}}', run: 'sleep {JOB_SECONDS}', "
                          f"vars: {{N: {list(range(k * 1000, min(jobs, (k + 1) * 1000)))}}}}}\n"
                          for k in range((jobs + 999) // 1000))   # a matrix entry expands to <= 1000 jobs
        spec = loads_farm("name: bench\nbase: {box: tiny}\ndefaults: {timeout: 60, keep_failed: false}\n"
                          "matrix:\n" + entries, base_dir=tmp)
        core = fake_core(tmp / f"sub{workers}")
        cpu0 = ([cpu_of(p.pid) for p in procs], cpu_of(redis_pid), time.process_time())
        t0 = time.monotonic()
        res = run_distributed(Farm(spec), core, url, outdir=tmp / "out")
        wall = time.monotonic() - t0
        cpu = {"workers": sum(cpu_of(p.pid) for p in procs) - sum(cpu0[0]), "broker": cpu_of(redis_pid) - cpu0[1],
               "submitter": time.process_time() - cpu0[2]}
        core.close()
        c = res.counts()
        used = min(workers * slots, jobs)
        per_worker = {}
        for j in res.jobs:
            per_worker[j.get("worker")] = per_worker.get(j.get("worker"), 0) + 1
        return {"workers": workers, "slots": slots, "jobs": jobs, "passed": c["passed"], "wall": round(wall, 2),
                "throughput": round(jobs / wall, 1), "overhead_ms": round((wall * used / jobs - JOB_SECONDS) * 1000, 1),
                "spread": sorted(per_worker.values()),
                "cpu_ms_per_job": {k: round(v * 1000 / jobs, 1) for k, v in cpu.items()}}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,4,16")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--json")
    a = ap.parse_args()
    before = machine_state("before")
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-", dir="/var/tmp"))
    rows = []
    try:
        srv = RedisServer()
        url = srv.start()
        try:
            for n in [int(x) for x in a.workers.split(",")]:
                rows.append(one(url, srv.proc.pid, n, a.slots, a.jobs, tmp))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    after = machine_state("after")
    print(f"\n{os.cpu_count()} cores")
    print(f"{'workers':>7} {'slots':>5} {'jobs':>5} {'wall s':>7} {'jobs/s':>7} {'x linear':>8} {'overhead ms/job':>15}"
          f"  CPU ms/job: workers broker submitter")
    ok = True
    for r in rows:
        ideal = base["throughput"] / base["workers"] * r["workers"]
        r["linearity"] = round(r["throughput"] / ideal, 2)
        print(f"{r['workers']:>7} {r['slots']:>5} {r['jobs']:>5} {r['wall']:>7} {r['throughput']:>7} "
              f"{r['linearity']:>8} {r['overhead_ms']:>15}  {r['cpu_ms_per_job']['workers']:>16} "
              f"{r['cpu_ms_per_job']['broker']:>6} {r['cpu_ms_per_job']['submitter']:>9}")
        ok &= r["passed"] == r["jobs"] and r["overhead_ms"] <= 50 and r["linearity"] >= 0.8
    write_json(a.json, before=before, after=after, rows=rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
