"""A private libvirtd in a network namespace of its own, for tests and benchmarks that need
libvirt networks (Vagrant: vagrant-libvirt's NAT management network). The recipe measured in
DESIGN.md ("A private libvirtd in a network namespace").

``PrivateLibvirt.start()`` makes the namespace (loopback up, no default route, ever), a private
tree for /etc, /run, /var/lib, /var/log and /var/cache of libvirt (with no network or domain
definitions: nothing can autostart), and starts virtlogd and libvirtd inside the namespace with
those trees bind-mounted. ``run_inside()`` runs a command in it; ``stop()`` destroys every domain
and network of that libvirtd, stops its daemons by pid, deletes the namespace and the tree.
``root_network()`` is the root namespace's links and routes, to check that a run changed nothing.

Run as a script to start one and print its environment (``python privnet.py start|stop NS``).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

ENV_NS = "VMSANDBOX_TEST_NETNS"             # the namespace the inner run must be in
ENV_URI = "VMSANDBOX_TEST_LIBVIRT_URI"      # the private libvirtd's URI
DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
        "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}


def root_network() -> tuple[str, str, str]:
    """Links, IPv4 and IPv6 routes of the current (root) namespace, without counters."""
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    r4 = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    r6 = subprocess.run(["ip", "-6", "route"], capture_output=True, text=True, check=True).stdout
    return links, r4, r6


class PrivateLibvirt:
    def __init__(self, name: str | None = None) -> None:
        self.ns = name or f"vmsbx-{uuid.uuid4().hex[:6]}"
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.ns}-", dir="/var/tmp"))
        os.chmod(self.root, 0o755)
        self.sock = self.root / "run" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.sock}"

    # -- start ------------------------------------------------------------------------
    def start(self) -> "PrivateLibvirt":
        try:
            self._make_tree()
            subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
            subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True, capture_output=True)
            script = self.mounts() + (
                "virtlogd -d -p /run/libvirt/virtlogd.pid && libvirtd -d -p /run/libvirt/libvirtd.pid")
            self._ns_sh(script, check=True)
            self._wait_for_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def mounts(self) -> str:
        """Shell lines that bind the private tree over libvirt's directories (in a new mount
        namespace) and mount the host's cgroup hierarchies again (`ip netns exec` mounts a new
        /sys, which hides them: "cgroup CPUACCT controller is not mounted"; a bare cgroup2 mount
        where the host uses v1 controllers lacks the CPU controller, so no CPU quota)."""
        lines = [f"mount --bind {self.root / k} {v}" for k, v in DIRS.items()]
        lines += _cgroup_mounts()
        return " && ".join(lines) + " && "

    def _make_tree(self) -> None:
        for k in DIRS:
            (self.root / k).mkdir(mode=0o755)
        etc = self.root / "etc"
        for f in Path("/etc/libvirt").glob("*.conf"):       # daemon settings only: no domains, no networks
            shutil.copy2(f, etc / f.name)
        (etc / "qemu" / "networks").mkdir(parents=True)
        (self.root / "lib" / "images").mkdir()
        for sub in ("qemu", "network"):
            (self.root / "run" / sub).mkdir()
        # QEMU runs as libvirt-qemu: it must traverse /var/lib/libvirt/qemu (its own state)
        (self.root / "lib" / "qemu").mkdir()
        shutil.chown(self.root / "lib" / "qemu", "libvirt-qemu", "libvirt-qemu")

    def _ns_sh(self, script: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                               "sh", "-c", script], capture_output=True, text=True, check=check, timeout=60)

    def _wait_for_daemon(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"private libvirtd did not answer on {self.sock}")

    def env(self) -> dict:
        return {ENV_NS: self.ns, ENV_URI: self.uri}

    def command_inside(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (its own mount namespace, libvirt's dirs private)."""
        return ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                "sh", "-c", self.mounts() + 'exec "$@"', "sh", *argv]

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=60)

    # -- stop -------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Tear everything down; returns what had to be removed by force (domains, networks)."""
        removed = []
        if self.sock.exists():
            for d in self.virsh("list", "--all", "--name").stdout.split():
                self.virsh("destroy", d)
                self.virsh("undefine", d, "--nvram")
                removed.append(f"domain {d}")
            for n in self.virsh("net-list", "--all", "--name").stdout.split():
                self.virsh("net-destroy", n)
                self.virsh("net-undefine", n)
                removed.append(f"network {n}")
        for daemon in ("libvirtd", "virtlogd"):
            pidfile = self.root / "run" / f"{daemon}.pid"
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            _kill_and_wait(pid)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        return removed


def _cgroup_mounts() -> list[str]:
    """Commands that mount the cgroup hierarchies under /sys/fs/cgroup as the host has them."""
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            src, target, fstype, opts = line.split()[:4]
            if target.startswith("/sys/fs/cgroup") and fstype in ("tmpfs", "cgroup", "cgroup2"):
                mounts.append((target, fstype, opts))
    if not any(t == "/sys/fs/cgroup" for t, _, _ in mounts):     # a pure cgroup v2 host
        return ["mount -t cgroup2 cgroup2 /sys/fs/cgroup"]
    out = []
    for target, fstype, opts in mounts:
        if fstype == "tmpfs":
            out.append(f"mount -t tmpfs -o mode=755 tmpfs {target}")
        else:
            wanted = ",".join(o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec"))
            out.append(f"mkdir -p {target} && mount -t {fstype} {'-o ' + wanted + ' ' if wanted else ''}{fstype} {target}")
    return out


def _kill_and_wait(pid: int, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
