"""Test doubles users can use too: ``FakeProvider``, an in-memory VM layer that records calls and
can be told to fail. For fast unit tests only; integration tests use the real libvirt provider."""
from __future__ import annotations

import os
from typing import Optional

from .exceptions import NotFoundError, ProviderError
from .providers.base import DomainStats, MachineSpec, Provider, ProviderCheck


class FakeProvider(Provider):
    """Keeps domains in a dict. ``fail_on = {"start_machine": ProviderError("boom")}`` injects faults."""

    name = "fake"

    def __init__(self, config=None) -> None:
        self.config = config
        self.domains: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.fail_on: dict[str, Exception] = {}

    def _call(self, op: str, *args) -> None:
        self.calls.append((op, *args))
        if op in self.fail_on:
            raise self.fail_on[op]

    def start_machine(self, spec: MachineSpec) -> None:
        self._call("start_machine", spec.name)
        self.domains[spec.name] = {"spec": spec, "state": "running", "quota": spec.cpu_quota, "cpu_time_ns": 0,
                                   "disk": str(spec.disk_path)}

    def snapshot_machine(self, name: str, new_overlay, memory_path) -> None:
        """Like libvirt: a real qcow2 overlay on the current disk, and a stand-in memory file."""
        from . import disks
        self._call("snapshot_machine", name)
        d = self._dom(name)
        disks.create_overlay(new_overlay, d["disk"])
        if memory_path is not None:
            from .perms import open_private
            with open_private(memory_path) as f:            # libvirt writes it 0600 too
                f.write(b"LibvirtQemudSave" + bytes(76))
        d["disk"] = str(new_overlay)

    def restore_machine(self, memory_path, spec: MachineSpec) -> None:
        self._call("restore_machine", spec.name)
        if not os.path.exists(memory_path):
            raise ProviderError(f"no memory state {memory_path}")
        self.domains[spec.name] = {"spec": spec, "state": "running", "quota": spec.cpu_quota, "cpu_time_ns": 0,
                                   "disk": str(spec.disk_path)}

    def machine_disk(self, name: str) -> Optional[str]:
        d = self.domains.get(name)
        return d["disk"] if d else None

    def _dom(self, name: str) -> dict:
        if name not in self.domains:
            raise ProviderError(f"no domain {name}")
        return self.domains[name]

    def destroy_machine(self, name: str) -> None:
        self._call("destroy_machine", name)
        self.domains.pop(name, None)

    def shutdown_machine(self, name: str, timeout: float) -> None:
        self._call("shutdown_machine", name)
        self._dom(name)["state"] = "shutoff"

    def kill_machine(self, name: str) -> None:
        self._call("kill_machine", name)
        self._dom(name)["state"] = "shutoff"

    def boot_machine(self, name: str) -> None:
        self._call("boot_machine", name)
        self._dom(name)["state"] = "running"

    def pause_machine(self, name: str) -> None:
        self._call("pause_machine", name)
        self._dom(name)["state"] = "paused"

    def resume_machine(self, name: str) -> None:
        self._call("resume_machine", name)
        self._dom(name)["state"] = "running"

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        self._call("set_cpu_quota", name, fraction)
        self._dom(name)["quota"] = fraction

    def machine_state(self, name: str) -> Optional[str]:
        d = self.domains.get(name)
        return d["state"] if d else None

    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        return sorted(n for n, d in self.domains.items() if n.startswith(prefix)
                      and (owner is None or d["spec"].owner == owner))

    def machine_stats(self, name: str) -> DomainStats:
        """Reads ``cpu_time_ns``, ``memory_used``, ``disk_allocation`` of ``domains[name]`` (tests set them)."""
        self._call("machine_stats", name)
        if name not in self.domains:
            raise NotFoundError(f"sampling {name}: no such domain")
        d = self.domains[name]
        spec: MachineSpec = d["spec"]
        return DomainStats(state=d["state"], cpu_time_ns=d["cpu_time_ns"], vcpus=spec.vcpus,
                           memory_total=spec.memory_bytes, memory_used=d.get("memory_used", 0),
                           disk_allocation=d.get("disk_allocation", 0), disk_capacity=None)

    def checks(self) -> list[ProviderCheck]:
        return [ProviderCheck("fake provider", True, "in-memory")]


class FakeSession:
    """Stands in for ``vmsandbox.ssh.SSHSession``: answers commands from ``responses``
    (command -> ExecutionResult), records what ran, and fails ``wait_ready`` when told to."""

    def __init__(self, port: int = 0, responses: dict | None = None, ready_error: Exception | None = None) -> None:
        self.port = port
        self.responses = responses or {}
        self.ready_error = ready_error
        self.commands: list[str] = []
        self.scripts: list[str] = []          # raw scripts run with ``stream`` (copies, host-key rotation)
        self.host_key = "ssh-ed25519 AAAAfake"
        self.username = "root"
        self.files: dict[str, bytes] = {}
        self.closed = False

    def wait_ready(self, timeout, console_log=None, progress=None) -> float:
        if self.ready_error:
            raise self.ready_error
        return 0.0

    def execute(self, command, timeout=None, working_dir=None, env=None, stdin=None, max_output=0,
                on_stdout=None, on_stderr=None):
        from .models import ExecutionResult
        self.commands.append(command)
        return self.responses.get(command, ExecutionResult(stdout="", stderr="", exit_code=0, duration=0.001))

    def put(self, local, remote, mode=None, max_size=None, recursive=False) -> None:
        self.files[remote] = open(local, "rb").read()

    def get(self, remote, local, max_size=None, recursive=False):
        open(local, "wb").write(self.files[remote])
        return local

    def stream(self, script, stdin_chunks, on_stdout, on_stderr, timeout):
        """Raw scripts: answers the host-key rotation as a dropbear guest would; others exit 0."""
        self.scripts.append(script)
        if "SSH listener" in script and "kill" not in script:
            on_stdout(b"dropbear 100 /etc/dropbear/dropbear_ed25519_host_key\n")
        for chunk in stdin_chunks or ():
            self.files.setdefault("<stdin>", b"")
            self.files["<stdin>"] += chunk
        return 0

    def repin(self, host_key) -> None:
        self.host_key = host_key

    def is_alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class FakeBoxStore:
    """A box store holding boxes whose files need not exist (unit tests only)."""

    def __init__(self, root, names=("tiny",), virtual_size: int = 1 << 30) -> None:
        from pathlib import Path
        from .boxes import Box
        root = Path(root)
        self.boxes = {}
        for n in names:
            d = root / n
            d.mkdir(parents=True, exist_ok=True)
            image = d / "box.img"
            if not image.exists():
                import subprocess
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(virtual_size)], check=True)
            self.boxes[n] = Box(name=n, path=d, image=image, virtual_size=virtual_size, format="qcow2",
                                kernel=d / "vmlinuz", initrd=d / "initrd.img", cmdline="console=ttyS0",
                                ssh_user="root", ssh_key=d / "id_ed25519", host_key="ssh-ed25519 AAAAfake",
                                created_at=0.0, source="fake")

    def get(self, name):
        from .exceptions import NotFoundError
        if name not in self.boxes:
            raise NotFoundError(f"no box {name!r} (known: {', '.join(self.boxes)})")
        return self.boxes[name]

    def list(self):
        return list(self.boxes.values())


def fake_core(state_dir, config: dict | None = None, sessions: dict | None = None):
    """A SandboxCore on FakeProvider, FakeBoxStore and FakeSession: no VM, no SSH (unit tests)."""
    from .core import SandboxCore
    cfg = {"sandbox": {"state_directory": str(state_dir), "provider": "fake"}}
    for section, values in (config or {}).items():
        cfg.setdefault(section, {}).update(values)
    core = SandboxCore(config=cfg, start_watchdog=False)
    core._boxes = FakeBoxStore(state_dir / "fakeboxes")
    made: dict = {} if sessions is None else sessions

    def session(info):
        s = made.get(info.id)
        if s is None or s.port != info.ssh_port:
            s = made[info.id] = FakeSession(info.ssh_port)
        return s
    core.session = session
    core.fake_sessions = made
    return core
