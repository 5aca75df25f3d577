"""What the security measures cost: create and clone with and without a host-key rotation of
their own (interleaved), the rotation itself (from the audit log), copy throughput in and out,
how fast a capped copy of /dev/zero stops, and the state-directory permission check.

    .venv/bin/python bench/bench_security.py [--runs 3]

Target: the rotation adds < 0.5 s to a create or clone (median). Exits 1 when it is missed.
"""
from __future__ import annotations

import argparse
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

from vmsandbox import SandboxCore, perms  # noqa: E402
from vmsandbox.exceptions import ResourceLimitError  # noqa: E402

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="vmsbx-bench-sec-", dir="/var/tmp")
    prefix = "bk" + uuid.uuid4().hex[:4] + "-"
    base = {"sandbox": {"state_directory": state, "box_directory": BOX_DIR, "domain_prefix": prefix,
                        "boot_timeout_seconds": 90}, "monitoring": {"enabled": False}}
    cores = {on: SandboxCore(config={**base, "ssh": {"own_host_key": on}}, start_watchdog=False) for on in (True, False)}
    times: dict[str, list[float]] = {k: [] for k in ("create on", "create off", "clone on", "clone off", "rotation")}
    print(f"load {os.getloadavg()[0]:.2f}")
    try:
        for i in range(args.runs):
            for on in (True, False):
                core = cores[on]
                t = time.monotonic()
                sid = core.create_sandbox(f"s{i}-{int(on)}")
                times[f"create {'on' if on else 'off'}"].append(time.monotonic() - t)
                snap = core.create_snapshot(sid, "m")
                t = time.monotonic()
                cid = core.create_sandbox(f"c{i}-{int(on)}", {"clone_from": snap})
                times[f"clone {'on' if on else 'off'}"].append(time.monotonic() - t)
                if on:
                    times["rotation"] += [r["detail"]["seconds"] for r in core.audit_log(limit=20)
                                          if r["operation"] == "host_key" and r["sandbox"] in (f"s{i}-1", f"c{i}-1")]
                if i == 0 and on:
                    copies(core, sid)
                core.destroy(cid)
                core.destroy(sid)
        t = time.monotonic()
        problems = perms.check(Path(state))
        check_ms = (time.monotonic() - t) * 1000
    finally:
        for c in cores.values():
            for info in c.store.list_sandboxes():
                c.destroy(info.id)
            c.close()
        shutil.rmtree(state, ignore_errors=True)
        left = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                              text=True).stdout.split()
        assert not [d for d in left if d.startswith(prefix)], left
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| step | median (s) | samples |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"state permission check: {check_ms:.1f} ms, {len(problems)} problems")
    print(f"rotation adds {med['create on'] - med['create off']:+.2f} s to create, "
          f"{med['clone on'] - med['clone off']:+.2f} s to clone; rotation itself {med['rotation']:.2f} s")
    return 0 if med["rotation"] < 0.5 and not problems else 1


def copies(core, sid: str) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        blob = Path(d) / "blob"
        blob.write_bytes(os.urandom(64 << 20))
        t = time.monotonic()
        core.put_file(sid, blob, "/root/blob")
        up = time.monotonic() - t
        t = time.monotonic()
        core.get_file(sid, "/root/blob", Path(d) / "back")
        down = time.monotonic() - t
        t = time.monotonic()
        try:
            core.get_file(sid, "/dev/zero", Path(d) / "zero", max_size=256 << 20)
        except ResourceLimitError:
            pass
        capped = time.monotonic() - t
    print(f"64 MiB up {64 / up:.0f} MiB/s, down {64 / down:.0f} MiB/s; /dev/zero capped at 256 MiB in {capped:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
