"""The prepare-once, clone-per-job workflow on the debian box, timed step by step.

    .venv/bin/python bench/bench_debian.py [--accelerator auto|kvm|tcg] [--clones 3] [--boots 3] [--json FILE]

Steps: boot to SSH (median of ``--boots``, target < 15 s under TCG), ACPI stop, create the base
sandbox, provision it with ansible/guest-build-tools.yml and snapshot it "base", then start
``--clones`` clones of that snapshot at once, each compiling and running a C program, and check
that they do not see each other's files. Builds the debian box first when it is missing (timed).
Own state directory under /var/tmp, own domain prefix; removes everything it made.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import Spread, clocked as timed, machine_state, write_json  # noqa: E402

from vmsandbox import SandboxCore  # noqa: E402
from vmsandbox.boxes import BoxStore  # noqa: E402
from vmsandbox.exceptions import NotFoundError  # noqa: E402

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")
LIMITS = {"memory": "512M", "disk": "2G"}
JOB = ("cd /root && echo '#include <stdio.h>' > job.c && echo 'int main(void){puts(\"job {n}\");return 0;}' >> job.c"
       " && gcc -O2 -o job job.c && ./job && echo {n} > /root/whoami")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accelerator", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--clones", type=int, default=3)
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    results: dict = {"accelerator": args.accelerator, "before": machine_state("before")}

    store = BoxStore(Path(BOX_DIR))
    try:
        box = store.get("debian")
    except NotFoundError:
        box, results["box_build_s"] = timed(store.build, "debian", progress=lambda m: print(" ", m))
    results["box_image_mib"] = round(box.image.stat().st_size / 2**20, 1)

    state = tempfile.mkdtemp(prefix="vmsbx-bd-", dir="/var/tmp")
    os.chmod(state, 0o711)
    cfg = {"sandbox": {"state_directory": state, "box_directory": BOX_DIR, "accelerator": args.accelerator,
                       "domain_prefix": "bd" + uuid.uuid4().hex[:4] + "-", "boot_timeout_seconds": 120},
           "monitoring": {"enabled": False}}
    core = SandboxCore(config=cfg)
    failed = []
    try:
        boots = []
        for i in range(args.boots):
            sid, seconds = timed(core.create_sandbox, f"boot{i}", {"box": "debian", "resource_limits": LIMITS})
            boots.append(seconds)
            if i == 0:
                _, results["acpi_stop_s"] = timed(core.stop, sid, 60)
            core.destroy(sid)
        results["boot_to_ssh_s"] = boots
        results["boot_to_ssh_median_s"] = Spread.of(boots).median

        sid, results["create_base_s"] = timed(core.create_sandbox, "base", {"box": "debian", "resource_limits": LIMITS})
        res, results["provision_build_tools_s"] = timed(
            core.provision, sid, ROOT / "ansible" / "guest-build-tools.yml", snapshot="base", output=lambda _l: None)
        snap = res.snapshot

        clones, lock = {}, threading.Lock()

        def job(n: int) -> None:
            t0 = time.perf_counter()
            cid = core.create_sandbox(f"job{n}", {"clone_from": snap})
            t1 = time.perf_counter()
            r = core.execute(cid, JOB.replace("{n}", str(n)), timeout=600)
            t2 = time.perf_counter()
            with lock:
                clones[n] = {"id": cid, "clone_s": t1 - t0, "build_s": t2 - t1, "ok": r.succeeded,
                             "out": r.stdout.strip()}

        threads = [threading.Thread(target=job, args=(n,)) for n in range(args.clones)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results["clones_total_s"] = time.perf_counter() - t0
        for n, c in sorted(clones.items()):
            seen = core.execute(c["id"], "cat /root/whoami").stdout.strip()
            c["isolated"] = seen == str(n)
            if not (c["ok"] and c["isolated"] and c["out"] == f"job {n}"):
                failed.append(f"clone {n}: {c}")
        results["clones"] = {n: {k: v for k, v in c.items() if k != "id"} for n, c in clones.items()}
    finally:
        for info in core.store.list_sandboxes():
            try:
                core.destroy(info.id)
            except Exception as exc:       # report, keep cleaning
                print(f"destroy {info.name}: {exc}", file=sys.stderr)
        core.snapshots.wait_background()
        core.close()
        shutil.rmtree(state, ignore_errors=True)
    results["after"] = machine_state("after")
    print(json.dumps(results, indent=2, default=str))
    write_json(args.json, **results)
    if args.accelerator == "tcg" and results.get("boot_to_ssh_median_s", 99) >= 15:
        failed.append("boot to SSH under TCG is not under 15 s")
    for f in failed:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
