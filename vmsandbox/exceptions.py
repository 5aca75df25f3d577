"""The exception tree of vmsandbox: every error the public API raises.

    SandboxError                      root: catch this to catch everything
     ├─ ConfigError                   bad config key or value (names the key path)
     ├─ NotFoundError                 unknown sandbox, box or snapshot
     ├─ StateError                    operation not allowed in the sandbox's current state
     ├─ SecurityError                 command blocked by policy, or approval needed
     ├─ ResourceLimitError            sandbox paused/stopped for a breached limit
     ├─ ProviderError                 the VM layer (libvirt, QEMU, Vagrant) failed
     │   ├─ GuestUnreachableError     the guest never answered SSH (points to the console log)
     │   └─ ProviderUnavailableError  the VM layer's daemon (libvirtd, dockerd) cannot be reached:
     │                                nothing was changed; retry when it is back
     ├─ CommandTimeout                a command ran past its timeout (carries the partial result)
     ├─ RollbackError                 a rollback failed
     ├─ ProvisionError                a playbook failed (the sandbox is back where it was)
     └─ StateCorruptionError          database and disks disagree beyond repair

Third-party errors (libvirt, paramiko, sqlite) are mapped to these at the boundary with
``raise X(...) from exc``; nothing from a dependency leaks through the public API.
"""
from __future__ import annotations

from typing import Any


class SandboxError(Exception):
    """Root of every vmsandbox error."""


class ConfigError(SandboxError):
    """A config key or value is wrong; the message names the key path."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class NotFoundError(SandboxError):
    """A sandbox, box or snapshot does not exist."""


class StateError(SandboxError):
    """The operation is not allowed in the sandbox's current state."""

    def __init__(self, message: str, state: Any = None, required: Any = None) -> None:
        super().__init__(message)
        self.state = state
        self.required = required


class SecurityError(SandboxError):
    """The command policy blocked a command (or it needs approval)."""

    def __init__(self, message: str, assessment: Any = None) -> None:
        super().__init__(message)
        self.assessment = assessment


class ResourceLimitError(SandboxError):
    """The sandbox is paused or stopped because it breached a resource limit."""


class ProviderError(SandboxError):
    """The VM layer failed (libvirt, QEMU, Vagrant, qemu-img)."""


class ProviderUnavailableError(ProviderError):
    """The VM layer's daemon cannot be reached; the operation changed nothing."""


class GuestUnreachableError(ProviderError):
    """The guest did not answer SSH in time; see ``console_log``."""

    def __init__(self, message: str, console_log: str | None = None) -> None:
        super().__init__(message)
        self.console_log = console_log


class CommandTimeout(SandboxError):
    """A command ran past its timeout and was killed; ``result`` holds its output so far."""

    def __init__(self, message: str, result: Any = None, timeout: float | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.timeout = timeout


class RollbackError(SandboxError):
    """A rollback failed; the sandbox is left usable or marked broken."""


class ProvisionError(SandboxError):
    """A provisioning playbook failed; ``result`` (a ``ProvisionResult``) names the failed task.
    The sandbox was rolled back to its state before the playbook ran."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class StateCorruptionError(SandboxError):
    """The state database and the disks disagree beyond repair."""


class StateDatabaseError(SandboxError):
    """The state database could not be read or written (locked past its busy timeout, a full
    disk, a damaged file); the message names the operation and SQLite's reason."""


__all__ = [
    "SandboxError", "ConfigError", "NotFoundError", "StateError", "SecurityError",
    "ResourceLimitError", "ProviderError", "GuestUnreachableError", "CommandTimeout",
    "RollbackError", "ProvisionError", "StateCorruptionError", "StateDatabaseError",
]
