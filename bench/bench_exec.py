"""Exec on an open sandbox, against paramiko running the bare command on the same guest.

Sides, interleaved (bench/harness.py), each on its own open connection to ONE guest:
``core.execute(sid, "true")`` (policy, audit, locks, store and the SSH session),
``SSHSession.execute("true")`` (the session alone, the sandbox's exec mode) and paramiko's
``exec_command("true")`` (TCP_NODELAY, as vmsandbox sets it). With ``--modes`` every exec mode the
guest supports also runs as a side (``setsid`` is what every dropbear command paid before the
exec modes), so before and after are measured in the same rounds. Then the timeout kill: a
``sleep 300`` with children under ``timeout=0.5``: how long past the deadline until the result
(the kill channel and the end of the command), and whether anything survived.

    .venv/bin/python bench/bench_exec.py [--box tiny|debian] [--runs 60] [--modes] [--kills 10] [--guest-loops] [--json FILE]

``--guest-loops`` first times, inside the guest, what each way of starting a command costs there
(loops of 300, clocked with /proc/uptime): a fork, the login shell (`sh -c true`), the setsid
wrapper's extra execs, and a cgroup move.

Target: core.execute <= 1.15x bare paramiko (median of the per-round ratios).
"""
from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import paramiko  # noqa: E402

from harness import Sides, report, spread_row, write_json  # noqa: E402
from vmsandbox import SandboxCore  # noqa: E402
from vmsandbox.ssh import SSHSession  # noqa: E402

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")
LIMITS = {"tiny": {"cpu": "1", "memory": "256M", "disk": "1G"}, "debian": {"memory": "512M", "disk": "2G"}}
TARGET = 1.15


def paramiko_client(port: int, box, host_key: str) -> paramiko.SSHClient:
    """A plain paramiko client on the guest's port: pinned host key, TCP_NODELAY."""
    key_type, blob = host_key.split()[:2]
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type,
                               paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect("127.0.0.1", port, username=box.ssh_user, pkey=paramiko.PKey.from_path(box.ssh_key),
                   sock=sock, allow_agent=False, look_for_keys=False)
    return client


def bare(client: paramiko.SSHClient, command: str = "true", eof: bool = False) -> int:
    """paramiko's exec_command as a user of paramiko writes it: run, read to EOF, exit status
    (``eof``: also close the command's stdin, as SSHSession does)."""
    _, stdout, _ = client.exec_command(command)
    if eof:
        stdout.channel.shutdown_write()
    stdout.read()
    return stdout.channel.recv_exit_status()


def guest_sleepers(session: SSHSession) -> int:
    r = session.execute("ps -o args | grep -c '^sleep 30[0-9]'", timeout=20)
    return int(r.stdout.strip() or 0)


GUEST_LOOPS = {
    "loop overhead": ":",
    "fork: `(true)`": "(true)",
    "fork+exec: `sh -c true`": "sh -c true",
    "`setsid sh -c true`": "setsid sh -c true",
    "cgroup move there and back": "echo $$ >/sys/fs/cgroup/vmsandbox/0/cgroup.procs; echo $$ >/sys/fs/cgroup/cgroup.procs",
}


def guest_loops(session: SSHSession, n: int = 300) -> dict:
    """Milliseconds per iteration of each ``GUEST_LOOPS`` body, run in the guest."""
    out = {}
    for name, body in GUEST_LOOPS.items():
        if "cgroup" in name and session.exec_mode != "cgroup":
            continue
        r = session.execute(f"read a _ </proc/uptime; i=0; while [ $i -lt {n} ]; do {body}; i=$((i+1)); done; "
                            "read b _ </proc/uptime; echo $a $b", timeout=300)
        try:
            a, b = map(float, r.stdout.split())
        except ValueError:
            continue
        out[name] = (b - a) * 1000 / n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--box", default="tiny")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--modes", action="store_true", help="also time each exec mode the guest supports")
    ap.add_argument("--guest-loops", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="vmsbx-bench-exec-", dir="/var/tmp"))
    os.chmod(state, 0o711)
    prefix = "be" + uuid.uuid4().hex[:4] + "-"
    core = SandboxCore(config={"sandbox": {"state_directory": str(state), "box_directory": BOX_DIR,
                                           "domain_prefix": prefix, "boot_timeout_seconds": 180},
                               "monitoring": {"enabled": False}})
    results: dict = {}
    failed = False
    try:
        print(f"load average before: {os.getloadavg()}")
        sid = core.create_sandbox("bench-exec", {"box": args.box, "resource_limits": LIMITS.get(args.box, {})})
        info = core.store.get_sandbox(sid)
        box = core.boxes.get(info.box)
        mode = core.session(info).exec_mode
        info = core.store.get_sandbox(sid)          # with the host key the guest made for itself
        print(f"box {args.box}, exec mode {mode}")

        def session(exec_mode: str | None) -> SSHSession:
            s = SSHSession("127.0.0.1", info.ssh_port, box.ssh_user, box.ssh_key, info.host_key or box.host_key,
                           exec_mode=exec_mode)
            s.wait_ready(30)
            return s

        own = session(mode)
        if args.guest_loops:
            loops = guest_loops(own)
            print(f"\n## in the guest: ms per iteration (load average {os.getloadavg()[0]:.2f})\n| what | ms |\n|---|---|")
            for name, v in loops.items():
                print(f"| {name} | {v:.2f} |")
            results["guest_loops"] = loops
        client = paramiko_client(info.ssh_port, box, info.host_key or box.host_key)
        sides = Sides(runs=args.runs, warmup=3)
        sides.add("core.execute", lambda: core.execute(sid, "true"))
        sides.add("SSHSession.execute", lambda: own.execute("true"))
        sides.add("paramiko", lambda: bare(client))
        # the same command line SSHSession sends, run by paramiko: splits the guest's share from the host's
        wrapped = own._command_wrapper().command("true")
        sides.add("paramiko + wrapper", lambda: bare(client, wrapped))
        sides.add("paramiko + wrapper + EOF", lambda: bare(client, wrapped, eof=True))
        others = {}
        if args.modes:
            wanted = ["setsid", "fork"] + (["cgroup"] if mode == "cgroup" else [])
            for m in wanted:
                if m != mode:
                    others[m] = session(m)
                    sides.add(f"mode {m}", lambda s=others[m]: s.execute("true"))
        samples = sides.run()
        load = os.getloadavg()
        print(f"\n## exec `true` on one {args.box} guest, exec mode {mode} (load average {load[0]:.2f})")
        results["core"] = report("core.execute vs paramiko", samples, "core.execute", "paramiko", target=TARGET)
        results["session"] = report("SSHSession.execute vs paramiko", samples, "SSHSession.execute", "paramiko")
        results["wrapper"] = report("paramiko running the wrapper's command line vs bare", samples,
                                    "paramiko + wrapper", "paramiko")
        results["eof"] = report("closing stdin (EOF): paramiko running the wrapper's line, with vs without", samples,
                                "paramiko + wrapper + EOF", "paramiko + wrapper")
        results["session_vs_wrapper"] = report("SSHSession.execute vs paramiko running the same command line",
                                               samples, "SSHSession.execute", "paramiko + wrapper")
        results["core_vs_session"] = report("core.execute vs SSHSession.execute", samples, "core.execute",
                                            "SSHSession.execute")
        for m in others:
            results[f"mode_{m}"] = report(f"SSHSession.execute, mode {m} vs paramiko", samples, f"mode {m}", "paramiko")
            results[f"mode_{m}_vs_{mode}"] = report(f"mode {mode} vs mode {m}", samples, "SSHSession.execute",
                                                    f"mode {m}")
        failed |= not results["core"]["met"]

        # the kill: seconds past the deadline until execute returns, and survivors
        late, survivors = [], 0
        script = "(sleep 300 &); nohup sleep 301 >/dev/null 2>&1 & sh -c 'sleep 302 & sleep 303' & sleep 304"
        for _ in range(args.kills):
            r = own.execute(script, timeout=0.5)
            assert r.timed_out, r
            late.append(r.duration - 0.5)
            survivors += guest_sleepers(own)
        print(f"\n## timeout kill (timeout 0.5 s, 5 sleepers in 4 ways), mode {mode}\n| what | median | p95 | min-max | n |\n|---|---|---|---|---|")
        results["kill"] = spread_row("past the deadline", late)
        print(f"survivors after {args.kills} kills: {survivors}")
        results["survivors"] = survivors
        failed |= survivors != 0
        for s in (own, *others.values()):
            s.close()
        client.close()
        print(f"load average after: {os.getloadavg()}")
    finally:
        for i in core.store.list_sandboxes():
            core.destroy(i.id)
        core.close()
        shutil.rmtree(state, ignore_errors=True)
        left = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                              capture_output=True, text=True).stdout.split()
        if any(d.startswith(prefix) for d in left):
            print(f"warning: domains left: {[d for d in left if d.startswith(prefix)]}", file=sys.stderr)
    write_json(args.json, results=results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
