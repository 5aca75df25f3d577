"""Benchmark of container sandboxes (the Docker provider) against VM sandboxes and against the
docker CLI, in one run on the same machine:

- create -> first command: a container sandbox against a VM sandbox (SandboxCore both);
- exec round trip: ``SandboxCore.execute`` in a container against ``docker exec`` from the CLI
  (``docker -H SOCKET exec NAME true``) on the same container;
- snapshot (``docker commit``) and rollback to a working command, for a container.

    .venv/bin/python bench/bench_containers.py [--runs 3] [--execs 20] [--json FILE]

Needs a Docker daemon (scripts/setup.sh starts a private one) with ``vmsandbox/tiny`` and the
tiny box for the VM side. Makes its own state directory and prefix and removes all it made.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmsandbox import SandboxCore  # noqa: E402
from vmsandbox.providers.docker import docker_host  # noqa: E402

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")
CONTAINER = {"isolation_type": "container"}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--execs", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="vmsbx-benchc-", dir="/var/tmp")
    os.chmod(state, 0o711)
    prefix = "bk" + uuid.uuid4().hex[:4] + "-"
    core = SandboxCore(config={"sandbox": {"state_directory": state, "box_directory": BOX_DIR, "domain_prefix": prefix},
                               "monitoring": {"enabled": False}, "safety": {"validation": {"enabled": False}}})
    samples: dict[str, list[float]] = {k: [] for k in ("container_create", "vm_create", "core_exec", "cli_exec",
                                                         "container_snapshot", "container_rollback")}
    load_before = os.getloadavg()
    try:
        for i in range(args.runs):                       # alternate, so both see the same machine
            t, sid = timed(lambda: core.create_sandbox(f"c{i}", CONTAINER))
            t2, _ = timed(lambda: core.execute(sid, "true"))
            samples["container_create"].append(t + t2)
            t, vid = timed(lambda: core.create_sandbox(f"v{i}"))
            t2, _ = timed(lambda: core.execute(vid, "true"))
            samples["vm_create"].append(t + t2)
            core.destroy(vid)
        sid = core.get("c0").id
        name = core.get(sid).domain
        cli = [shutil.which("docker") or "docker", "-H", docker_host(), "exec", name, "true"]
        for _ in range(args.execs):
            samples["core_exec"].append(timed(lambda: core.execute(sid, "true"))[0])
            samples["cli_exec"].append(timed(lambda: subprocess.run(cli, check=True, capture_output=True))[0])
        for j in range(args.runs):
            t, snap = timed(lambda: core.create_snapshot(sid, f"s{j}"))
            samples["container_snapshot"].append(t)
            core.execute(sid, "echo drift > /tmp/drift")
            t, _ = timed(lambda: core.rollback(sid, snap))
            t2, r = timed(lambda: core.execute(sid, "test ! -e /tmp/drift"))
            assert r.exit_code == 0
            samples["container_rollback"].append(t + t2)
    finally:
        for info in core.store.list_sandboxes():
            core.destroy(info.id)
        core.close()
        shutil.rmtree(state, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    rows = [("container create -> first command", med["container_create"]),
            ("VM create -> first command", med["vm_create"]),
            ("exec round trip, SandboxCore.execute (container)", med["core_exec"]),
            ("exec round trip, docker exec CLI", med["cli_exec"]),
            ("container snapshot (docker commit)", med["container_snapshot"]),
            ("container rollback -> first command", med["container_rollback"])]
    print(f"load {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; runs {args.runs}, execs {args.execs}")
    for label, v in rows:
        print(f"{label:52s} {v * 1000:9.1f} ms")
    print(f"VM / container create: {med['vm_create'] / med['container_create']:.1f}x; "
          f"SandboxCore.execute / docker exec CLI: {med['core_exec'] / med['cli_exec']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "medians": med, "load": load_before}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
