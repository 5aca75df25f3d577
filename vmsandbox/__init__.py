"""vmsandbox: throwaway VM sandboxes for untrusted work.

Public API: ``SandboxCore`` / ``AsyncSandboxCore`` (lifecycle, execute), ``ExecutionResult``,
``SandboxInfo``, ``SandboxState``, ``load_config``/``Config`` and the exception tree.
``StateManager`` / ``RollbackManager`` (snapshots and rollback). The policy lives in
``vmsandbox.safety`` (``SafetyValidator``); the watchdog's types in ``vmsandbox.health``.
"""
import importlib
from typing import Any

from .exceptions import (CommandTimeout, ConfigError, GuestUnreachableError, NotFoundError, ProviderError,
                         ProviderUnavailableError, ProvisionError, ResourceLimitError, RollbackError, SandboxError, SecurityError,
                         StateCorruptionError, StateError)

# The rest is imported on first use (PEP 562), so a command that needs little of vmsandbox
# (`vmsandbox ssh-proxy`, run by ssh for every connection) starts fast.
_LAZY = {
    "Config": "config", "load_config": "config", "SandboxCore": "core", "AsyncSandboxCore": "async_core",
    "ExecutionResult": "models", "SandboxInfo": "models", "SandboxState": "models",
    "RollbackManager": "rollback", "RollbackPoint": "rollback", "RollbackEvent": "snapshots",
    "Snapshot": "models", "StateManager": "state",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vmsandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "SandboxCore", "AsyncSandboxCore", "StateManager", "RollbackManager", "RollbackPoint", "RollbackEvent",
    "Snapshot", "ExecutionResult", "SandboxInfo", "SandboxState", "Config", "load_config",
    "SandboxError", "ConfigError", "NotFoundError", "StateError", "SecurityError", "ResourceLimitError",
    "ProviderError", "ProviderUnavailableError", "GuestUnreachableError", "CommandTimeout", "RollbackError",
    "StateCorruptionError", "ProvisionError",
]
