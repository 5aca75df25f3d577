"""The state directory's layout: where each file of a sandbox lives, how machines, layers and
snapshots are named, and the locks that order operations across threads and processes.

Owns paths and names only; it runs no operation. Locks are ``flock`` on files under
``<state>/locks``: exclusive for operations that change a sandbox, shared for commands that
only use it. A lock records who holds it, so a waiter that gives up can say what it waited for.
"""
from __future__ import annotations

import fcntl
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .exceptions import StateError

#: how long an operation waits for another one on the same sandbox before it gives up
DEFAULT_LOCK_WAIT = 120.0


class Layout:
    def __init__(self, state_dir: Path, domain_prefix: str) -> None:
        self.state_dir = Path(state_dir)
        self.domain_prefix = domain_prefix
        self.sandboxes = self.state_dir / "sandboxes"
        self.logs = self.state_dir / "logs"
        self.locks = self.state_dir / "locks"
        self.layers = self.state_dir / "layers"
        self.memory = self.state_dir / "memory"

    def create(self, box_dir: Path | None = None) -> None:
        """Make the directories, private (0700), QEMU's user may only pass through to its files
        (``perms``)."""
        from .perms import prepare_state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        prepare_state_dir(self.state_dir, box_dir)

    # -- names ---------------------------------------------------------------------------
    @staticmethod
    def new_sandbox_id() -> str:
        return "sb-" + uuid.uuid4().hex[:12]

    @staticmethod
    def new_layer_id() -> str:
        return "L" + uuid.uuid4().hex[:15]

    @staticmethod
    def new_snapshot_id() -> str:
        return "sn-" + uuid.uuid4().hex[:12]

    @staticmethod
    def new_operation_id() -> str:
        return "op-" + uuid.uuid4().hex[:12]

    def machine_name(self, name: str, sandbox_id: str, generation: int = 0) -> str:
        base = f"{self.domain_prefix}{name}-{sandbox_id[-6:]}"
        return base if generation == 0 else f"{base}-g{generation}"

    # -- paths ---------------------------------------------------------------------------
    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.sandboxes / sandbox_id

    def console_log(self, sandbox_id: str, generation: int) -> Path:
        """Serial console log of one guest generation (each rollback starts a new one)."""
        return self.sandbox_dir(sandbox_id) / f"console-{generation}.log"

    def kept_console_log(self, name: str, sandbox_id: str) -> Path:
        """Where a failed create's console log is kept for diagnosis."""
        return self.logs / f"{name}-{sandbox_id}-console.log"

    # -- locks ---------------------------------------------------------------------------
    @contextmanager
    def lock(self, key: str, operation: str, shared: bool = False,
             wait: float = DEFAULT_LOCK_WAIT) -> Iterator[None]:
        """Hold lock ``key`` for ``operation``; wait at most ``wait`` seconds (0: do not wait),
        then raise StateError naming the operation that holds it."""
        path = self.locks / f"{key}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            deadline = time.monotonic() + wait
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = _read_holder(fd) or "another operation"
                        raise StateError(f"cannot {operation}: {holder} is in progress on it"
                                         + (f" (waited {wait:g} s)" if wait else "")) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
            if not shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{operation} (pid {os.getpid()})".encode(), 0)
            yield
        finally:
            os.close(fd)          # closing the descriptor releases the flock

    def remove_lock(self, key: str) -> None:
        try:
            os.unlink(self.locks / f"{key}.lock")
        except FileNotFoundError:
            pass


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def fault_point(point: str) -> None:
    """Crash-test hook: SIGKILL this process at ``point`` when $VMSANDBOX_CRASH_AT names it."""
    if os.environ.get("VMSANDBOX_CRASH_AT") == point:
        os.kill(os.getpid(), 9)
