"""Benchmark of container sandboxes (the Docker provider) against VM sandboxes and against the
docker CLI, interleaved rounds (bench/harness.py: order rotated, ratio per round):

- create -> first command: a container sandbox against a VM sandbox (SandboxCore both; each
  destroyed untimed after its sample);
- exec round trip: ``SandboxCore.execute`` in a container against ``docker exec`` from the CLI
  (``docker -H SOCKET exec NAME true``) on the same container;
- then, container only: snapshot (``docker commit``) and rollback to a working command.

    .venv/bin/python bench/bench_containers.py [--runs 3] [--execs 20] [--json FILE]

Needs a Docker daemon (scripts/setup.sh starts a private one) with ``vmsandbox/tiny`` and the
tiny box for the VM side. Makes its own state directory and prefix and removes all it made.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import BenchEnv, machine_info  # noqa: E402
from harness import Sides, machine_state, report, spread_row, write_json  # noqa: E402

from vmsandbox.providers.docker import docker_host  # noqa: E402

CONTAINER = {"isolation_type": "container"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="create rounds and snapshot/rollback pairs (default 3)")
    ap.add_argument("--execs", type=int, default=20, help="exec rounds (default 20)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    before = machine_state("before")
    env = BenchEnv("bk", config={"safety": {"validation": {"enabled": False}}})
    core = env.core
    n = iter(range(10 ** 6))
    samples: dict[str, dict] = {}
    alone: dict[str, list[float]] = {"snapshot": [], "rollback": []}

    def create(spec: dict | None) -> float:
        t0 = time.perf_counter()
        sid = core.create_sandbox(f"s{next(n)}", spec)
        assert core.execute(sid, "true").exit_code == 0
        took = time.perf_counter() - t0
        core.destroy(sid)
        return took
    try:
        samples["create -> first command"] = Sides(args.runs).add("container", lambda: create(CONTAINER)) \
            .add("VM", lambda: create(None)).run()
        sid = core.create_sandbox("c", CONTAINER)
        cli = [shutil.which("docker") or "docker", "-H", docker_host(), "exec", core.get(sid).domain, "true"]
        samples["exec round trip"] = Sides(args.execs).add("SandboxCore.execute", lambda: core.execute(sid, "true")) \
            .add("docker exec CLI", lambda: subprocess.run(cli, check=True, capture_output=True)).run()
        for j in range(args.runs):
            t0 = time.perf_counter()
            snap = core.create_snapshot(sid, f"s{j}")
            alone["snapshot"].append(time.perf_counter() - t0)
            core.execute(sid, "echo drift > /tmp/drift")
            t0 = time.perf_counter()
            core.rollback(sid, snap)
            r = core.execute(sid, "test ! -e /tmp/drift")
            alone["rollback"].append(time.perf_counter() - t0)
            assert r.exit_code == 0
    finally:
        left = env.close()
    after = machine_state("after")
    results = [report("create -> first command", samples["create -> first command"], "container", "VM"),
               report("exec round trip", samples["exec round trip"], "SandboxCore.execute", "docker exec CLI")]
    print("\n| container alone | median | p95 | min-max | |\n|---|---|---|---|---|")
    rows = [spread_row("snapshot (docker commit)", alone["snapshot"]),
            spread_row("rollback -> first command", alone["rollback"])]
    write_json(args.json, machine=machine_info(), before=before, after=after, results=results, container_alone=rows,
               samples={**samples, **alone})
    if left:
        print(f"LEAKED domains: {left}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
