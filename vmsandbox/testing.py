"""Test doubles users can use too: ``FakeProvider`` (the ``fake`` provider: machines in memory,
calls recorded, faults on demand), ``FakeSession`` and ``FakeSessionPool`` (commands answered
from a table), ``FakeBoxStore``, and ``fake_core`` that wires them into a real ``SandboxCore``
through its constructor. For fast unit tests only; integration tests use the real providers."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from .providers.fake import FakeProvider

__all__ = ["FakeProvider", "FakeSession", "FakeSessionPool", "FakeBoxStore", "fake_core"]


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


class FakeSessionPool:
    """Stands in for ``vmsandbox.sessions.SessionPool``: one ``FakeSession`` per sandbox and port,
    made by ``factory(info)`` (tests replace it to make sessions that fail)."""

    def __init__(self, sessions: dict | None = None) -> None:
        self.sessions: dict = {} if sessions is None else sessions
        self.factory = lambda info: FakeSession(info.ssh_port)

    def get(self, info) -> FakeSession:
        s = self.sessions.get(info.id)
        if s is None or s.port != info.ssh_port:
            s = self.sessions[info.id] = self.factory(info)
        return s

    def endpoint(self, info) -> Any:
        from .providers import Endpoint
        return Endpoint("127.0.0.1", info.ssh_port, "root", "/dev/null", info.host_key or None)

    def wait_ready(self, info, console_log=None, progress=None) -> float:
        return self.get(info).wait_ready(0, console_log, progress)

    def open(self, endpoint) -> FakeSession:
        return self.factory(SimpleNamespace(ssh_port=endpoint.port))

    def adopt(self, info, session) -> None:
        session.port = info.ssh_port
        self.sessions[info.id] = session

    def drop(self, sandbox_id: str) -> None:
        s = self.sessions.get(sandbox_id)
        if s is not None:
            s.close()

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()


def fake_core(state_dir, config: dict | None = None, sessions: dict | None = None, machines: dict | None = None):
    """A SandboxCore on FakeProvider, FakeBoxStore and FakeSessionPool: no VM, no SSH (unit tests).
    ``core.fake_sessions`` maps sandbox ids to their FakeSession; pass another core's
    ``provider.domains`` as ``machines`` for two state directories on one machine layer."""
    from .core import SandboxCore
    cfg = {"sandbox": {"state_directory": str(state_dir), "provider": "fake"}}
    for section, values in (config or {}).items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:                           # a list section (``pool``)
            cfg[section] = values
    pool = FakeSessionPool(sessions)
    core = SandboxCore(config=cfg, boxes=FakeBoxStore(state_dir / "fakeboxes"), sessions=pool, start_watchdog=False)
    if machines is not None:
        core.provider.domains = machines
    core.fake_sessions = pool.sessions
    return core


def machine_spec(**kw) -> Any:
    """A ``MachineSpec`` for unit tests of providers; ``kernel``/``initrd``/``cmdline`` describe
    its box, ``disk_path`` is its layer (path) and the rest are MachineSpec fields."""
    from pathlib import Path
    from types import SimpleNamespace
    from .providers import MachineSpec
    box = SimpleNamespace(kernel=kw.pop("kernel", Path("/b/vmlinuz")), initrd=kw.pop("initrd", Path("/b/initrd.img")),
                          cmdline=kw.pop("cmdline", "console=ttyS0"), name="tiny")
    fields = dict(name="vmsbx-a-000001", uuid="11111111-2222-3333-4444-555555555555", sandbox_id="sb-000000000001",
                  hostname="a", vcpus=1, cpu_quota=None, memory_bytes=256 << 20, disk_bytes=1 << 30,
                  layer=str(kw.pop("disk_path", "/s/layers/L0.qcow2")), box=box, ssh_port=20001,
                  mac="52:54:00:00:00:01", network_mode="none", console_log=Path("/s/console.log"), owner="/s")
    fields.update(kw)
    return MachineSpec(**fields)
