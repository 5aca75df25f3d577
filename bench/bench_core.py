"""Benchmark of the sandbox lifecycle against the same steps done directly with libvirt-python
and paramiko on the same box: create -> first command and destroy, interleaved rounds
(bench/harness.py, order rotated), ratio per round. Target under TCG: create within 1.2x of
direct (median of the per-round ratios). Exec on an open sandbox is ``bench_exec.py``'s (both
sides on one guest).

    .venv/bin/python bench/bench_core.py [--runs 8] [--json FILE]

Also owns the guest helpers the other benchmarks share: a throwaway state directory and core
(``BenchEnv``), a guest driven directly through libvirt (``DirectGuest``), the paramiko
"until a command runs" loop (``ssh_until_command``), and a description of the machine.
"""
from __future__ import annotations

import argparse
import base64
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import libvirt  # noqa: E402
import paramiko  # noqa: E402

from vmsandbox import SandboxCore  # noqa: E402
from vmsandbox.boxes import Box, BoxStore  # noqa: E402
from vmsandbox.providers.base import MachineSpec  # noqa: E402
from vmsandbox.providers.libvirt.domain_xml import domain_xml  # noqa: E402

from harness import Sides, machine_state, report, write_json  # noqa: E402

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
    connection; ``close`` removes every domain with the prefix and every file. ``config``: more
    settings, merged section by section over the benchmark's; ``core_kwargs`` go to SandboxCore."""

    def __init__(self, tag: str, config: Optional[dict] = None, **core_kwargs: Any) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"vmsbx-bench-{tag}-", dir="/var/tmp"))
        os.chmod(self.state_dir, 0o711)
        (self.state_dir / "direct").mkdir(mode=0o755)
        self.prefix = tag[:2] + uuid.uuid4().hex[:4] + "-"
        settings: dict = {
            "sandbox": {"state_directory": str(self.state_dir), "box_directory": BOX_DIR,
                        "domain_prefix": self.prefix, "accelerator": "tcg",
                        "boot_timeout_seconds": int(BOOT_TIMEOUT)},
            "monitoring": {"enabled": False}}
        for section, values in (config or {}).items():
            settings[section] = {**settings.get(section, {}), **values}
        self.core = SandboxCore(config=settings, **core_kwargs)
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


# -- machine ------------------------------------------------------------------------------
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
    """Load averages and every running domain (other people's included): ``harness.machine_state``."""
    return machine_state(uri=URI)


# -- the benchmark -----------------------------------------------------------------------
def run(env: BenchEnv, runs: int) -> dict:
    """Each side's step is a whole lifecycle: create until ``true`` runs (its sample), then
    destroy (recorded beside it), so only one of the benchmark's guests runs at a time."""
    core = env.core
    destroys: dict[str, list[float]] = {"vmsandbox": [], "direct": []}
    n = {"vmsandbox": 0, "direct": 0}

    def vmsandbox() -> float:
        n["vmsandbox"] += 1
        t0 = time.perf_counter()
        sid = core.create_sandbox(f"core{n['vmsandbox']}", {"box": "tiny", "resource_limits": LIMITS})
        assert core.execute(sid, "true").exit_code == 0
        created = time.perf_counter() - t0
        t0 = time.perf_counter()
        core.destroy(sid)
        destroys["vmsandbox"].append(time.perf_counter() - t0)
        return created

    def direct() -> float:
        n["direct"] += 1
        guest = DirectGuest(env, f"direct{n['direct']}")
        try:
            t0 = time.perf_counter()
            guest.boot().close()
            created = time.perf_counter() - t0
            t0 = time.perf_counter()
            guest.destroy()
            destroys["direct"].append(time.perf_counter() - t0)
            return created
        finally:
            if guest.dom is not None:
                remove_domain(guest.dom)
            guest.disk.unlink(missing_ok=True)

    def progress(i: int, r: dict) -> None:
        print(f"round {i + 1}/{runs}: create {r['vmsandbox']:.2f} s vs {r['direct']:.2f} s, destroy "
              f"{destroys['vmsandbox'][-1]:.2f} s vs {destroys['direct'][-1]:.2f} s", flush=True)
    sides = Sides(runs, warmup=1, on_round=progress).add("vmsandbox", vmsandbox).add("direct", direct)
    creates = sides.run()
    return {"create": creates, "destroy": {k: v[sides.warmup:] for k, v in destroys.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8, help="rounds (both sides each), after one warm-up (default 8)")
    ap.add_argument("--json", metavar="FILE", help="also write the samples and results as JSON")
    args = ap.parse_args()
    before = machine_state("before")
    env = BenchEnv("bc")
    try:
        samples = run(env, args.runs)
    finally:
        left = env.close()
        if left:
            print(f"LEAKED domains: {left}", file=sys.stderr)
    after = machine_state("after")
    results = [report("create -> first command", samples["create"], "vmsandbox", "direct", target=1.2),
               report("destroy", samples["destroy"], "vmsandbox", "direct")]
    write_json(args.json, machine=machine_info(), before=before, after=after, results=results, samples=samples)
    return 0 if results[0]["met"] and not left else 1


if __name__ == "__main__":
    sys.exit(main())
