"""Memory rollback (no standby) on the tiny box: against a like-for-like raw restore, and back to back.

1. ``compare``: vmsandbox ``rollback`` -> first command vs a raw restore of the SAME memory image
   with libvirt-python: a copy of the snapshot's save image rewritten for a new name, uuid, port and
   overlay (untimed), then ``restoreFlags`` and paramiko until ``true`` runs (timed). Interleaved
   rounds (bench/harness.py), order rotated, ratio per round. Each side's previous guest is gone
   before the next sample (vmsandbox's background retirement is waited for, untimed), so the two
   sides never slow each other; part 2 measures that effect on its own.
2. ``back-to-back``: 20 rollbacks of one sandbox in a row, each to its first command, the
   previous guest's retirement left running in the background as a user would see it; median,
   p95, max and p95/median (target <= 1.3x). With ``--before TREE`` every round runs this code and
   the code in TREE (a checkout, e.g. ``git worktree add /tmp/before main``) in turn, order
   alternated, each in its own process; ``--busy`` starts a CPU burner in the guest before each
   rollback (the runaway a rollback is often for).
3. ``--only retire-ab`` (not in the default run): in one chain, rollbacks started at once (the
   previous guest's retirement in flight) interleaved with rollbacks started after waiting for
   it, ratio per round: whether the retirement slows the next operation.

Parts 1 and 2 count libvirt calls per rollback (every ``virConnect``/``virDomain`` method but the
local ``isAlive``/``connect``), on the caller's thread and in the background.

    .venv/bin/python bench/bench_rollback.py [--runs 15] [--chain 20] [--rounds 2] [--before TREE] [--busy]
                                             [--only compare|back-to-back|retire-ab] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Sides, Spread, ms, report, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")

# Runs inside a worker process with PYTHONPATH set to the tree under test (this one or --before).
COUNTER = r'''
import collections, functools, threading
import libvirt

LOCAL = {"isAlive", "connect", "c_pointer"}          # answered by the client library, no RPC


class RpcCounter:
    """Counts libvirt calls, split by thread: the caller's ("hot") and the others ("background")."""

    def __init__(self):
        self.calls = collections.Counter()
        self.main = threading.main_thread()
        for cls in (libvirt.virConnect, libvirt.virDomain):
            for name in dir(cls):
                fn = getattr(cls, name)
                if name.startswith("_") or name in LOCAL or not callable(fn):
                    continue
                setattr(cls, name, self._wrap(fn, f"{cls.__name__[3:]}.{name}"))

    def _wrap(self, fn, label):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            where = "hot" if threading.current_thread() is self.main else "background"
            self.calls[(where, label)] += 1
            return fn(*args, **kwargs)
        return counted

    def take(self):
        out = {}
        for (where, label), n in sorted(self.calls.items()):
            out.setdefault(where, {})[label] = n
        self.calls.clear()
        return out
'''

CHAIN_WORKER = COUNTER + r'''
import collections, json, os, shutil, sys, tempfile, time
counter = RpcCounter()
from vmsandbox import SandboxCore
box_dir, tag, chain, busy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
state = tempfile.mkdtemp(prefix="vmsbx-bench-", dir="/var/tmp"); os.chmod(state, 0o711)
cfg = {"sandbox": {"state_directory": state, "box_directory": box_dir, "domain_prefix": "vbr" + tag + "-"},
       "monitoring": {"enabled": False}, "rollback": {"retention_days": 0}}
core = SandboxCore(config=cfg)
sid = None
try:
    sid = core.create_sandbox("b2b")
    snap = core.create_snapshot(sid, "s", memory=True)
    core.snapshots.wait_background()
    times, hot, background = [], {}, collections.Counter()
    counter.take()
    for i in range(chain + 1):                      # the first one warms up, not recorded
        if busy:
            core.execute(sid, "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &")
        t = time.perf_counter()
        core.rollback(sid, snap)
        assert core.execute(sid, "true").exit_code == 0
        took = time.perf_counter() - t
        calls = counter.take()
        background.update(calls.get("background", {}))
        if i:
            times.append(took)
            hot = calls.get("hot", {})
    core.snapshots.wait_background()
    background.update(counter.take().get("background", {}))
    per = {k: round(v / (chain + 1), 2) for k, v in sorted(background.items())}   # every rollback retires one guest
    print(json.dumps({"times": times, "rpcs_hot": hot, "rpcs_background": per, "load": os.getloadavg()[0]}))
finally:
    core.snapshots.wait_background()
    if sid:
        core.destroy(sid)
    core.close()
    shutil.rmtree(state, ignore_errors=True)
'''


def run_chain(tree: Path, tag: str, chain: int, busy: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", CHAIN_WORKER, BOX_DIR, tag, str(chain), "1" if busy else "0"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def back_to_back(args) -> dict:
    trees = [("after", ROOT)] + ([("before", args.before)] if args.before else [])
    got: dict[str, list[float]] = {name: [] for name, _ in trees}
    rpcs, loads = {}, []
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        for name, tree in order:
            out = run_chain(tree, f"{name[0]}{r}{uuid.uuid4().hex[:3]}", args.chain, args.busy)
            got[name] += out["times"]
            rpcs[name] = {"hot": out["rpcs_hot"], "background": out["rpcs_background"]}
            loads.append(out["load"])
            print(f"round {r + 1}/{args.rounds} {name}: median {ms(Spread.of(out['times']).median)}", file=sys.stderr)
    title = f"{args.chain} back-to-back rollbacks -> first command{' (busy guest)' if args.busy else ''}"
    print(f"\n{title}, {args.rounds} round(s), load {min(loads):.2f}-{max(loads):.2f}")
    print("| code | median | p95 | max | p95/median |\n|---|---|---|---|---|")
    out = {"title": title, "load": [min(loads), max(loads)], "rpcs": rpcs}
    for name, xs in got.items():
        s = Spread.of(xs)
        verdict = "met" if s.p95 <= 1.3 * s.median else "MISSED"
        print(f"| {name} | {ms(s.median)} | {ms(s.p95)} | {ms(s.max)} | {s.p95 / s.median:.2f}x ({verdict}, target 1.3x) |")
        out[name] = {**Spread.of(xs).__dict__, "p95_over_median": s.p95 / s.median, "samples": xs}
    if args.before:
        out["pairs"] = report("  after vs before, pair by pair (i-th rollback of a round)", got, "after", "before")
    for name, calls in rpcs.items():
        print(f"libvirt calls per rollback ({name}): caller {calls['hot']}; background (mean) {calls['background']}")
    return out


# -- part 1: vmsandbox vs a raw restore of the same image ---------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def paramiko_until_command(port: int, user: str, key: str, host_key: str, deadline: float) -> None:
    """Connect (banner timeout 1 s, retried) until ``true`` runs; the host key is pinned."""
    import base64
    import paramiko
    kind, blob = host_key.split()[:2]
    while True:
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{port}", kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect("127.0.0.1", port, user, key_filename=key, banner_timeout=1, timeout=2, auth_timeout=2,
                           look_for_keys=False, allow_agent=False)
            _, out, _ = client.exec_command("true")
            if out.channel.recv_exit_status() == 0:
                return
        except (paramiko.SSHException, OSError, EOFError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            client.close()


def compare(args) -> dict:
    exec(compile(COUNTER, "counter", "exec"), globals())
    counter = RpcCounter()  # noqa: F821 (defined by COUNTER)
    import libvirt
    from vmsandbox import SandboxCore
    from vmsandbox.providers.libvirt import savefile
    state = tempfile.mkdtemp(prefix="vmsbx-bench-", dir="/var/tmp")
    os.chmod(state, 0o711)
    prefix = "vbr" + uuid.uuid4().hex[:4] + "-"
    core = SandboxCore(config={"sandbox": {"state_directory": state, "box_directory": BOX_DIR, "domain_prefix": prefix},
                               "monitoring": {"enabled": False}, "rollback": {"retention_days": 0}})
    conn = libvirt.open(core.config.provider_settings("libvirt").uri)
    sid = None
    try:
        sid = core.create_sandbox("cmp")
        snap_id = core.create_snapshot(sid, "s", memory=True)
        core.snapshots.wait_background()
        info, snap = core.get(sid), core.store.get_snapshot(snap_id)
        box = core.boxes.get(info.box)
        base = core.store.get_layer(snap.layer).ref
        n = [0]
        rpcs: list[dict] = []

        def ours() -> float:
            counter.take()
            t = time.perf_counter()
            core.rollback(sid, snap_id)
            assert core.execute(sid, "true").exit_code == 0
            took = time.perf_counter() - t
            rpcs.append(counter.take())
            core.snapshots.wait_background()          # untimed: the old guest is gone before the next sample
            return took

        def raw() -> float:
            n[0] += 1
            name, port = f"{prefix}raw{n[0]}", free_port()
            image, overlay = Path(state) / f"raw{n[0]}.save", Path(state) / f"raw{n[0]}.qcow2"
            shutil.copyfile(snap.memory_ref, image)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", str(overlay)], check=True)
            spec = core.lifecycle.spec(core.store.get_sandbox(sid), name=name, uuid=str(uuid.uuid4()), ssh_port=port, layer=str(overlay),
                                       console_log=Path(state) / f"raw{n[0]}.log")
            savefile.write_xml(image, savefile.adapt_xml(savefile.read_xml(image), spec))
            try:
                t = time.perf_counter()
                conn.restoreFlags(str(image), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
                paramiko_until_command(port, box.ssh_user, str(box.ssh_key), info.host_key, time.monotonic() + 60)
                return time.perf_counter() - t
            finally:
                try:
                    conn.lookupByName(name).destroy()
                except libvirt.libvirtError:
                    pass
                image.unlink(missing_ok=True)
                overlay.unlink(missing_ok=True)

        sides = Sides(runs=args.runs, warmup=1)
        sides.add("vmsandbox", ours).add("raw restoreFlags + paramiko", raw)
        samples = sides.run()
        load = os.getloadavg()[0]
        out = report(f"memory rollback -> first command vs raw restore of the same image (load {load:.2f})",
                     samples, "vmsandbox", "raw restoreFlags + paramiko")
        print(f"libvirt calls per vmsandbox rollback: {rpcs[-1]}")
        out.update(load=load, rpcs=rpcs[-1])
        return out
    finally:
        core.snapshots.wait_background()
        if sid:
            core.destroy(sid)
        core.close()
        conn.close()
        shutil.rmtree(state, ignore_errors=True)


def retire_ab(args) -> dict:
    """Does the previous guest's retirement slow the next rollback? Interleaved in one chain: a
    rollback started at once (the previous retirement in flight) vs one started after waiting for
    it (untimed)."""
    from vmsandbox import SandboxCore
    state = tempfile.mkdtemp(prefix="vmsbx-bench-", dir="/var/tmp")
    os.chmod(state, 0o711)
    core = SandboxCore(config={"sandbox": {"state_directory": state, "box_directory": BOX_DIR,
                                           "domain_prefix": "vbr" + uuid.uuid4().hex[:4] + "-"},
                               "monitoring": {"enabled": False}, "rollback": {"retention_days": 0}})
    sid = None
    try:
        sid = core.create_sandbox("ab")
        snap = core.create_snapshot(sid, "s", memory=True)

        def rollback() -> float:
            t = time.perf_counter()
            core.rollback(sid, snap)
            assert core.execute(sid, "true").exit_code == 0
            return time.perf_counter() - t

        def waited() -> float:
            core.snapshots.wait_background()
            return rollback()
        samples = Sides(runs=args.runs, warmup=1).add("retirement in flight", rollback).add("retirement waited for", waited).run()
        load = os.getloadavg()[0]
        out = report(f"rollback -> first command with the previous guest's retirement in flight or not (load {load:.2f})",
                     samples, "retirement in flight", "retirement waited for")
        out["load"] = load
        return out
    finally:
        core.snapshots.wait_background()
        if sid:
            core.destroy(sid)
        core.close()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="interleaved rounds of part 1")
    ap.add_argument("--chain", type=int, default=20, help="rollbacks in a row in part 2")
    ap.add_argument("--rounds", type=int, default=2, help="chains per code version in part 2")
    ap.add_argument("--before", type=Path, help="checkout of the code to compare part 2 against")
    ap.add_argument("--busy", action="store_true", help="a CPU burner runs in the guest before each rollback")
    ap.add_argument("--only", choices=("compare", "back-to-back", "retire-ab"))
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {}
    if args.only == "retire-ab":
        results["retire_ab"] = retire_ab(args)
    if args.only in (None, "compare"):
        results["compare"] = compare(args)
    if args.only in (None, "back-to-back"):
        results["back_to_back"] = back_to_back(args)
    write_json(args.json, **results)
    after = results.get("back_to_back", {}).get("after")
    if after and after["p95_over_median"] > 1.3:
        sys.exit(1)


if __name__ == "__main__":
    main()
