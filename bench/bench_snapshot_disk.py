"""Benchmark of a disk-only snapshot of a running tiny-box guest: vmsandbox (guest flush +
libvirt switch + bookkeeping) beside the libvirt call alone on a comparable guest, and beside
the same two steps done by hand (paramiko ``sync``, then the libvirt call), interleaved.

    .venv/bin/python bench/bench_snapshot_disk.py [--runs 20] [--json FILE]

Sides, each round in rotated order (bench/harness.py):
- vmsandbox: ``core.create_snapshot(sid, name, memory=False)`` on a sandbox (its parts, from the
  snapshot's audit record: ``flush_ms`` the guest ``sync``, ``switch_ms`` the provider call);
  its background work (the spare overlay for the next snapshot) is waited for, untimed, before
  each sample, as the time between two commands allows in real use;
- libvirt call alone: ``snapshotCreateXML`` external, ``DISK_ONLY|ATOMIC|NO_METADATA``, libvirt
  creating the overlay, on a guest booted directly (libvirt-python + paramiko, no vmsandbox);
- by hand: ``sync`` over an open paramiko connection, then that libvirt call, on the same guest;
- the libvirt call alone with the overlay made ahead (qemu-img, untimed) and ``REUSE_EXT``.
Target: vmsandbox total <= 50 ms (median), with the guest's data flushed.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import libvirt  # noqa: E402

from bench_core import LIMITS, BenchEnv, DirectGuest, load_and_domains, qemu_img, raw_exec  # noqa: E402
from harness import Sides, report, spread_row, write_json  # noqa: E402

FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
         | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)


def raw_snapshot(guest: DirectGuest, made_ahead: bool = False) -> float:
    """The libvirt call, timed alone; ``made_ahead``: the overlay is made first with qemu-img
    (untimed) and passed with REUSE_EXT, as vmsandbox's spare overlays are."""
    path = guest.env.state_dir / "direct" / f"S{uuid.uuid4().hex[:12]}.qcow2"
    flags = FLAGS
    if made_ahead:
        current = re.search(r"<source file='([^']+)'", guest.dom.XMLDesc()).group(1)
        qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", current, str(path))
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
    xml = (f"<domainsnapshot><disks><disk name='vda' snapshot='external'><driver type='qcow2'/>"
           f"<source file={quoteattr(str(path))}/></disk></disks></domainsnapshot>")
    t0 = time.perf_counter()
    guest.dom.snapshotCreateXML(xml, flags)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    env = BenchEnv("sd")
    before = load_and_domains()
    try:
        core = env.core
        sid = core.create_sandbox("disk", {"box": "tiny", "resource_limits": LIMITS})
        assert core.execute(sid, "true").exit_code == 0
        guest = DirectGuest(env, "direct")
        client = guest.boot()
        n = [0]

        def ours() -> float:
            core.snapshots.wait_background()             # untimed: the spare is made between commands
            n[0] += 1
            t0 = time.perf_counter()
            core.create_snapshot(sid, f"d{n[0]}", memory=False)
            return time.perf_counter() - t0

        def by_hand() -> None:
            assert raw_exec(client, "sync") == 0
            raw_snapshot(guest)

        sides = Sides(runs=args.runs).add("vmsandbox", ours).add("libvirt call alone", lambda: raw_snapshot(guest))
        sides.add("sync + libvirt call by hand", by_hand)
        sides.add("libvirt call alone, overlay made ahead", lambda: raw_snapshot(guest, made_ahead=True))
        samples = sides.run()
        audit = [a["detail"] for a in core.audit_log("disk", limit=10_000) if a["operation"] == "snapshot"]
        audit = audit[-args.runs:]                       # the warm-up round's is dropped
        parts = {"flush": [d["flush_ms"] / 1000 for d in audit], "switch": [d["switch_ms"] / 1000 for d in audit]}
        after = load_and_domains()
        print(f"load average before {before['loadavg']}, after {after['loadavg']}; "
              f"running domains before/after: {len(before['running_domains'])}/{len(after['running_domains'])}")
        results = [report("disk-only snapshot: vmsandbox vs the libvirt call alone", samples, "vmsandbox",
                          "libvirt call alone"),
                   report("disk-only snapshot: vmsandbox vs sync + libvirt call by hand", samples, "vmsandbox",
                          "sync + libvirt call by hand"),
                   report("the libvirt call: overlay made ahead (REUSE_EXT) vs made by libvirt", samples,
                          "libvirt call alone, overlay made ahead", "libvirt call alone")]
        print("\n| vmsandbox part | median | p95 | min-max | |\n|---|---|---|---|---|")
        rows = [spread_row("total (`create_snapshot`)", samples["vmsandbox"], target=0.050),
                spread_row("guest flush (`sync` over SSH)", parts["flush"]),
                spread_row("libvirt switch (`snapshot_machine`)", parts["switch"]),
                spread_row("bookkeeping and waits (total - flush - switch)",
                           [t - f - s for t, f, s in zip(samples["vmsandbox"], parts["flush"], parts["switch"])])]
        reused = sum(1 for d in audit if d.get("reused"))
        print(f"\nspare overlay used (REUSE_EXT) in {reused} of {len(audit)} vmsandbox snapshots")
        write_json(args.json, results=results, parts=rows, reused=reused, load_before=before, load_after=after,
                   samples=samples)
        guest.destroy()
    finally:
        left = env.close()
    if left:
        print(f"leaked domains: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
