"""Benchmark of snapshots, rollback and clones on the tiny box, beside libvirt's internal
snapshots of the same guest and a cold boot (medians of 5, one run).

    .venv/bin/python bench/bench_snapshots.py [--runs 5] [--json FILE]

Targets under TCG: disk-only snapshot < 50 ms, memory snapshot < 0.5 s, rollback to a working
command < 1.5 s, clone to a working command < 2 s, rollback >= 2x faster than libvirt's internal
snapshot revert of the same guest. The phases run one after another so that only the guests a
phase needs are running while it is timed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import (BenchEnv, DirectGuest, LIMITS, load_and_domains, machine_info, median,  # noqa: E402
                        ms, print_table, qemu_img, ssh_until_command, timed)

INTERNAL_SNAPSHOT = "<domainsnapshot><name>{}</name></domainsnapshot>"


def record_calls(obj: object, attr: str, into: list[float]) -> None:
    """Time every call of ``obj.attr`` (an instance attribute shadowing the method)."""
    fn: Callable = getattr(obj, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)
    setattr(obj, attr, wrapper)


def vmsandbox_phase(env: BenchEnv, runs: int, s: dict[str, list[float]]) -> dict:
    core = env.core
    provider_calls: list[float] = []
    sync_calls: list[float] = []
    record_calls(core.provider, "snapshot_machine", provider_calls)
    record_calls(core.snapshots, "_guest_sync", sync_calls)
    sid = core.create_sandbox("snap", {"box": "tiny", "resource_limits": LIMITS})
    assert core.execute(sid, "true").exit_code == 0
    memory_sizes = []
    for i in range(runs):
        core.snapshots.wait_background()
        t, disk_snap = timed(lambda: core.create_snapshot(sid, f"disk{i}", memory=False))
        s["disk_snapshot"].append(t)
        s["disk_snapshot_provider"].append(provider_calls[-1])
        s["disk_snapshot_guest_sync"].append(sync_calls[-1])
        t, mem_snap = timed(lambda: core.create_snapshot(sid, f"mem{i}", memory=True))
        s["memory_snapshot"].append(t)
        s["memory_snapshot_provider"].append(provider_calls[-1])
        memory_sizes.append(os.path.getsize(core.store.get_snapshot(mem_snap).memory_ref))
        # a change after the snapshot, which the rollback must undo (checked below, untimed)
        assert core.execute(sid, f"touch /tmp/after{i} /root/after{i}").exit_code == 0

        def rollback_to(snap: str) -> None:
            core.rollback(sid, snap)
            assert core.execute(sid, "true").exit_code == 0
        s["rollback_memory"].append(timed(lambda: rollback_to(mem_snap))[0])
        assert core.execute(sid, f"test ! -e /tmp/after{i} && test ! -e /root/after{i}").exit_code == 0
        s["retire_old_guest_background"].append(timed(core.snapshots.wait_background)[0])

        def clone() -> str:
            cid = core.create_sandbox(f"clone{i}", {"clone_from": mem_snap})
            assert core.execute(cid, "true").exit_code == 0
            return cid
        t, cid = timed(clone)
        s["clone_memory"].append(t)
        core.destroy(cid)

        s["rollback_disk_only"].append(timed(lambda: rollback_to(disk_snap))[0])
        core.snapshots.wait_background()
        core.delete_snapshot(sid, mem_snap)
        core.delete_snapshot(sid, disk_snap)
        print(f"run {i + 1}/{runs}: disk {ms(s['disk_snapshot'][-1])}, memory {ms(s['memory_snapshot'][-1])}, "
              f"rollback {ms(s['rollback_memory'][-1])}, clone {ms(s['clone_memory'][-1])}, "
              f"disk rollback {ms(s['rollback_disk_only'][-1])}", flush=True)
    depth = len(core.store.list_layers())
    core.destroy(sid)
    return {"memory_state_bytes_median": median(memory_sizes), "layers_at_end": depth}


def internal_phase(env: BenchEnv, runs: int, s: dict[str, list[float]]) -> None:
    """libvirt internal snapshots (memory + disk inside one standalone qcow2) of the same guest."""
    disk = env.state_dir / "direct" / "internal.qcow2"
    qemu_img("convert", "-O", "qcow2", str(env.box.image), str(disk))
    os.chmod(disk, 0o644)
    guest = DirectGuest(env, "internal", disk=disk)
    try:
        guest.boot().close()
        for i in range(runs):
            t, snap = timed(lambda: guest.dom.snapshotCreateXML(INTERNAL_SNAPSHOT.format(f"s{i}"), 0))
            s["internal_snapshot_create"].append(t)
            ssh_until_command(guest.port, env).close()

            def revert() -> None:
                guest.dom.revertToSnapshot(snap, 0)
                ssh_until_command(guest.port, env).close()
            s["internal_revert"].append(timed(revert)[0])
            snap.delete(0)
            print(f"internal {i + 1}/{runs}: create {ms(s['internal_snapshot_create'][-1])}, "
                  f"revert to command {ms(s['internal_revert'][-1])}", flush=True)
    finally:
        if guest.dom is not None:
            for snap in guest.dom.listAllSnapshots():
                snap.delete(0)
            guest.destroy()
        disk.unlink(missing_ok=True)


def cold_boot_phase(env: BenchEnv, runs: int, s: dict[str, list[float]]) -> None:
    """Rollback by cold boot, done directly: destroy, new overlay, define (same uuid), create, SSH."""
    guest = DirectGuest(env, "cold")
    try:
        guest.boot().close()
        for i in range(runs):
            t_destroy, _ = timed(guest.destroy)
            t_boot, client = timed(guest.boot)
            client.close()
            s["cold_boot_destroy"].append(t_destroy)
            s["cold_boot_without_destroy"].append(t_boot)
            s["cold_boot"].append(t_destroy + t_boot)
            print(f"cold boot {i + 1}/{runs}: {ms(t_destroy + t_boot)} (destroy {ms(t_destroy)})", flush=True)
    finally:
        if guest.dom is not None:
            guest.destroy()
        guest.disk.unlink(missing_ok=True)


TARGETS = {  # key: (limit in seconds, label)
    "disk_snapshot": (0.050, "< 50 ms"),
    "memory_snapshot": (0.5, "< 0.5 s"),
    "rollback_memory": (1.5, "< 1.5 s"),
    "clone_memory": (2.0, "< 2 s"),
}


def report(s: dict[str, list[float]], extra: dict) -> dict:
    m = {k: median(v) for k, v in s.items()}
    speedup = m["internal_revert"] / m["rollback_memory"]
    met = {k: m[k] < lim for k, (lim, _) in TARGETS.items()}
    met["rollback_vs_internal"] = speedup >= 2.0

    def row(label: str, key: str, note: str = "") -> tuple[str, str, str, str]:
        if key in TARGETS:
            note = f"{TARGETS[key][1]}: {'met' if met[key] else 'MISSED'}"
        return (label, ms(m[key]), f"n={len(s[key])}", note)
    rows = [("step", "median", "samples", "target"),
            row("disk-only snapshot (create_snapshot, memory=False)", "disk_snapshot"),
            row("  of which: guest `sync` over SSH", "disk_snapshot_guest_sync"),
            row("  of which: provider.snapshot_machine", "disk_snapshot_provider"),
            row("memory snapshot (create_snapshot, memory=True)", "memory_snapshot"),
            row("  of which: provider.snapshot_machine", "memory_snapshot_provider",
                f"state {extra['memory_state_bytes_median'] / (1 << 20):.0f} MiB"),
            row("rollback (memory) until a command runs", "rollback_memory"),
            row("  old guest retired in the background", "retire_old_guest_background", "off the path"),
            row("clone (memory) until a command runs", "clone_memory"),
            row("rollback (disk-only snapshot: boots) until a command runs", "rollback_disk_only"),
            row("libvirt internal snapshot create (running guest)", "internal_snapshot_create"),
            row("libvirt internal revert until a command runs", "internal_revert",
                f">= 2x slower than rollback: {speedup:.2f}x {'met' if met['rollback_vs_internal'] else 'MISSED'}"),
            row("cold boot: destroy+overlay+define+create+SSH", "cold_boot"),
            row("  of which: destroy", "cold_boot_destroy"),
            row("  without the destroy", "cold_boot_without_destroy")]
    print_table("medians", rows)
    return {"medians": m, "rollback_speedup_vs_internal": speedup, "targets_met": met, **extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions of every step (default 5)")
    ap.add_argument("--json", metavar="FILE", help="also write the samples and results as JSON")
    args = ap.parse_args()
    s: dict[str, list[float]] = {k: [] for k in (
        "disk_snapshot", "disk_snapshot_provider", "disk_snapshot_guest_sync", "memory_snapshot",
        "memory_snapshot_provider", "rollback_memory", "retire_old_guest_background", "clone_memory",
        "rollback_disk_only", "internal_snapshot_create", "internal_revert", "cold_boot", "cold_boot_destroy",
        "cold_boot_without_destroy")}
    load: dict[str, dict] = {"before": load_and_domains()}
    print(f"load before: {load['before']['loadavg']}, running domains: {load['before']['running_domains']}")
    env = BenchEnv("bs")
    try:
        extra = vmsandbox_phase(env, args.runs, s)
        load["after_vmsandbox"] = load_and_domains()
        internal_phase(env, args.runs, s)
        load["after_internal"] = load_and_domains()
        cold_boot_phase(env, args.runs, s)
    finally:
        left = env.close()
        if left:
            print(f"LEAKED domains: {left}", file=sys.stderr)
    load["after"] = load_and_domains()
    print(f"load after: {load['after']['loadavg']}, running domains: {load['after']['running_domains']}")
    results = report(s, extra)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "load": load, "results": results,
                                               "samples": s}, indent=2))
    return 0 if all(results["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
