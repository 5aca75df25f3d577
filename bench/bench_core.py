"""Benchmark of the sandbox lifecycle against the same steps done directly with libvirt-python
and paramiko, in one run on the same box: create-to-first-command, exec round trip on an open
connection, destroy (medians of 5). Targets under TCG: create within 1.2x of direct, exec
round trip within 1.1x of raw paramiko (TCP_NODELAY).

    .venv/bin/python bench/bench_core.py [--runs 5] [--execs 10] [--json FILE]

Also owns the helpers ``bench_snapshots.py`` reuses: a throwaway state directory and core
(``BenchEnv``), a guest driven directly through libvirt (``DirectGuest``), the paramiko
"until a command runs" loop (``ssh_until_command``), and a description of the machine.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402
import paramiko  # noqa: E402

from vmsandbox import SandboxCore  # noqa: E402
from vmsandbox.boxes import Box, BoxStore  # noqa: E402
from vmsandbox.providers.base import MachineSpec  # noqa: E402
from vmsandbox.providers.libvirt.domain_xml import domain_xml  # noqa: E402

URI = "qemu:///system"
BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")
LIMITS = {"cpu": "1", "memory": "256M", "disk": "1G"}
RETRY_WAIT = 0.2          # same pause between attempts as vmsandbox.ssh
BOOT_TIMEOUT = 90.0

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
# paramiko logs every refused banner while a guest boots (expected) with a traceback
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


# -- environment -------------------------------------------------------------------------
class BenchEnv:
    """A QEMU-readable state directory, a unique domain prefix, one SandboxCore, one libvirt
    connection; ``close`` removes every domain with the prefix and every file."""

    def __init__(self, tag: str) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"vmsbx-bench-{tag}-", dir="/var/tmp"))
        os.chmod(self.state_dir, 0o711)
        (self.state_dir / "direct").mkdir(mode=0o755)
        self.prefix = tag[:2] + uuid.uuid4().hex[:4] + "-"
        self.core = SandboxCore(config={
            "sandbox": {"state_directory": str(self.state_dir), "box_directory": BOX_DIR,
                        "domain_prefix": self.prefix, "accelerator": "tcg",
                        "boot_timeout_seconds": int(BOOT_TIMEOUT)},
            "monitoring": {"enabled": False}})
        self.box: Box = BoxStore(Path(BOX_DIR)).get("tiny")
        self.conn = libvirt.open(URI)
        self.pkey = paramiko.PKey.from_path(self.box.ssh_key)

    def close(self) -> list[str]:
        """Tear everything down; returns the prefixed domains still defined afterwards (should be none)."""
        try:
            for info in self.core.store.list_sandboxes():
                try:
                    self.core.destroy(info.id)
                except Exception as exc:  # noqa: BLE001 - keep cleaning
                    print(f"warning: destroy {info.name}: {exc}", file=sys.stderr)
            self.core.close()
        finally:
            for dom in self.conn.listAllDomains():
                if dom.name().startswith(self.prefix):
                    remove_domain(dom)
            left = [d.name() for d in self.conn.listAllDomains() if d.name().startswith(self.prefix)]
            self.conn.close()
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return left


def remove_domain(dom: "libvirt.virDomain") -> None:
    """Destroy and undefine, internal snapshots included; errors ignored (clean-up path)."""
    try:
        for snap in dom.listAllSnapshots():
            snap.delete(0)
    except libvirt.libvirtError:
        pass
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    except libvirt.libvirtError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# -- direct libvirt + paramiko ------------------------------------------------------------
def ssh_until_command(port: int, env: BenchEnv, nodelay: bool = True,
                      timeout: float = BOOT_TIMEOUT) -> paramiko.SSHClient:
    """Connect with banner_timeout=1 until ``true`` runs and exits 0; returns the open client.
    The guest's host key is pinned, as vmsandbox does."""
    key_type, blob = env.box.host_key.split()[:2]
    host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect("127.0.0.1", port, username=env.box.ssh_user, pkey=env.pkey, timeout=10,
                           banner_timeout=1, auth_timeout=10, look_for_keys=False, allow_agent=False)
            if nodelay:
                client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if raw_exec(client) == 0:
                return client
        except (paramiko.SSHException, OSError, EOFError) as exc:
            last = exc
        client.close()
        time.sleep(RETRY_WAIT)
    raise RuntimeError(f"guest on port {port} never ran a command: {last}")


def raw_exec(client: paramiko.SSHClient, command: str = "true") -> int:
    """One command on an open connection: new channel, exec, exit status."""
    chan = client.get_transport().open_session(timeout=10)
    try:
        chan.exec_command(command)
        return chan.recv_exit_status()
    finally:
        chan.close()


class DirectGuest:
    """One guest of the tiny box, driven only through libvirt-python, qemu-img and paramiko,
    with the XML ``vmsandbox.providers.libvirt.domain_xml.domain_xml`` makes."""

    def __init__(self, env: BenchEnv, name: str, disk: Path | None = None) -> None:
        self.env = env
        self.name = env.prefix + name
        self.uuid = str(uuid.uuid4())
        self.port = free_port()
        self.disk = disk or env.state_dir / "direct" / f"{name}.qcow2"
        self.own_overlay = disk is None
        self.dom: "libvirt.virDomain | None" = None

    def spec(self) -> MachineSpec:
        box = self.env.box
        mac = "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
        return MachineSpec(name=self.name, uuid=self.uuid, sandbox_id="direct", hostname="direct", vcpus=1,
                           cpu_quota=None, memory_bytes=256 << 20, disk_bytes=box.virtual_size, layer=str(self.disk),
                           box=box, ssh_port=self.port, mac=mac, network_mode="none",
                           console_log=self.env.state_dir / "direct" / f"{self.name}.log")

    def boot(self, nodelay: bool = True) -> paramiko.SSHClient:
        """New overlay (when the guest owns one), define, create, SSH until a command runs."""
        if self.own_overlay:
            qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.env.box.image),
                     str(self.disk), str(1 << 30))
            os.chmod(self.disk, 0o644)
        self.dom = self.env.conn.defineXML(domain_xml(self.spec(), "qemu"))
        self.dom.create()
        return ssh_until_command(self.port, self.env, nodelay)

    def destroy(self) -> None:
        self.dom.destroy()
        self.dom.undefine()
        self.dom = None
        if self.own_overlay:
            self.disk.unlink(missing_ok=True)


# -- reporting ---------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine_info() -> dict:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    v = libvirt.getVersion()
    qemu = sh("qemu-system-x86_64", "--version").splitlines()
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "nproc": os.cpu_count(), "cpu": cpu,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "kernel": platform.release(), "libvirt": f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}",
            "qemu": qemu[0] if qemu else "?", "accelerator": "TCG", "python": platform.python_version(),
            "paramiko": paramiko.__version__}


def load_and_domains() -> dict:
    """``uptime`` load averages and every running domain (other people's included)."""
    out = subprocess.run(["virsh", "-c", URI, "list", "--name"], capture_output=True, text=True).stdout
    return {"loadavg": os.getloadavg(), "running_domains": [d for d in out.split() if d]}


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


# -- the benchmark -----------------------------------------------------------------------
def run(env: BenchEnv, runs: int, execs: int) -> dict:
    core = env.core
    s: dict[str, list[float]] = {k: [] for k in (
        "create_core", "create_direct", "exec_core", "exec_session", "exec_raw_nodelay", "exec_raw_nagle",
        "destroy_core", "destroy_direct")}
    for i in range(runs):
        direct = DirectGuest(env, f"direct{i}")
        sid = None
        clients: list[paramiko.SSHClient] = []     # [direct guest with NODELAY, same without]
        try:
            def core_create() -> str:
                new = core.create_sandbox(f"core{i}", {"box": "tiny", "resource_limits": LIMITS})
                assert core.execute(new, "true").exit_code == 0
                return new
            # alternate who goes first so slow drift of the machine's load hits both sides
            order = ["core", "direct"] if i % 2 == 0 else ["direct", "core"]
            for who in order:
                if who == "core":
                    t, sid = timed(core_create)
                    s["create_core"].append(t)
                else:
                    t, client = timed(direct.boot)
                    s["create_direct"].append(t)
                    clients.append(client)
            nagle = ssh_until_command(direct.port, env, nodelay=False)
            clients.append(nagle)
            session = core.session(core.get(sid))
            for _ in range(execs):          # interleaved, so load changes hit all four alike
                s["exec_core"].append(timed(lambda: core.execute(sid, "true"))[0])
                s["exec_session"].append(timed(lambda: session.execute("true"))[0])
                s["exec_raw_nodelay"].append(timed(lambda: raw_exec(clients[0]))[0])
                s["exec_raw_nagle"].append(timed(lambda: raw_exec(nagle))[0])
            for c in clients:
                c.close()
            for who in order:
                if who == "core":
                    s["destroy_core"].append(timed(lambda: core.destroy(sid))[0])
                    sid = None
                else:
                    s["destroy_direct"].append(timed(direct.destroy)[0])
            print(f"run {i + 1}/{runs}: create {ms(s['create_core'][-1])} vs {ms(s['create_direct'][-1])}, "
                  f"destroy {ms(s['destroy_core'][-1])} vs {ms(s['destroy_direct'][-1])}", flush=True)
        finally:
            for c in clients:
                c.close()
            if sid is not None:
                core.destroy(sid)
            if direct.dom is not None:
                remove_domain(direct.dom)
            direct.disk.unlink(missing_ok=True)
    return s


def report(s: dict[str, list[float]]) -> dict:
    m = {k: median(v) for k, v in s.items()}
    results = {
        "create_to_first_command": {"vmsandbox": m["create_core"], "direct": m["create_direct"],
                                    "ratio": m["create_core"] / m["create_direct"], "target": 1.2},
        "exec_round_trip": {"vmsandbox": m["exec_core"], "direct": m["exec_raw_nodelay"],
                            "ratio": m["exec_core"] / m["exec_raw_nodelay"], "target": 1.1,
                            "ssh_session_only": m["exec_session"], "raw_paramiko_without_nodelay": m["exec_raw_nagle"]},
        "destroy": {"vmsandbox": m["destroy_core"], "direct": m["destroy_direct"],
                    "ratio": m["destroy_core"] / m["destroy_direct"], "target": None},
    }
    rows = [("step", "vmsandbox", "direct", "ratio (target)")]
    for key, label in (("create_to_first_command", "create to first command"),
                       ("exec_round_trip", "exec round trip (open conn.)"), ("destroy", "destroy")):
        r = results[key]
        tgt = f" (< {r['target']}x {'met' if r['ratio'] <= r['target'] else 'MISSED'})" if r["target"] else ""
        rows.append((label, ms(r["vmsandbox"]), ms(r["direct"]), f"{r['ratio']:.2f}x{tgt}"))
    rows.append(("  exec: SSHSession.execute only", ms(m["exec_session"]), ms(m["exec_raw_nodelay"]),
                 f"{m['exec_session'] / m['exec_raw_nodelay']:.2f}x"))
    rows.append(("  exec: raw paramiko without NODELAY", "", ms(m["exec_raw_nagle"]), ""))
    n = {k: len(v) for k, v in s.items()}
    print_table(f"medians (create/destroy n={n['create_core']}, exec n={n['exec_core']})", rows)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="guests booted per side (default 5)")
    ap.add_argument("--execs", type=int, default=10, help="round trips per guest and kind (default 10)")
    ap.add_argument("--json", metavar="FILE", help="also write the samples and results as JSON")
    args = ap.parse_args()
    before = load_and_domains()
    print(f"load before: {before['loadavg']}, running domains: {before['running_domains']}")
    env = BenchEnv("bc")
    try:
        samples = run(env, args.runs, args.execs)
    finally:
        left = env.close()
        if left:
            print(f"LEAKED domains: {left}", file=sys.stderr)
    after = load_and_domains()
    print(f"load after: {after['loadavg']}, running domains: {after['running_domains']}")
    results = report(samples)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "before": before, "after": after,
                                               "results": results, "samples": samples}, indent=2))
    ok = results["create_to_first_command"]["ratio"] <= 1.2 and results["exec_round_trip"]["ratio"] <= 1.1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
