"""vmsandbox: throwaway VM sandboxes for untrusted work.

Public API: ``SandboxCore`` / ``AsyncSandboxCore`` (lifecycle, execute), ``ExecutionResult``,
``SandboxInfo``, ``SandboxState``, ``load_config``/``Config`` and the exception tree.
``StateManager`` / ``RollbackManager`` (snapshots and rollback). The policy lives in
``vmsandbox.safety`` (``SafetyValidator``); the watchdog's types in ``vmsandbox.health``.
"""
from .config import Config, load_config
from .core import AsyncSandboxCore, SandboxCore
from .exceptions import (CommandTimeout, ConfigError, GuestUnreachableError, NotFoundError, ProviderError,
                         ProvisionError, ResourceLimitError, RollbackError, SandboxError, SecurityError, StateCorruptionError,
                         StateError)
from .models import ExecutionResult, SandboxInfo, SandboxState
from .rollback import RollbackManager, RollbackPoint
from .snapshots import RollbackEvent, Snapshot
from .state import StateManager

__version__ = "0.1.0"

__all__ = [
    "SandboxCore", "AsyncSandboxCore", "StateManager", "RollbackManager", "RollbackPoint", "RollbackEvent",
    "Snapshot", "ExecutionResult", "SandboxInfo", "SandboxState", "Config", "load_config",
    "SandboxError", "ConfigError", "NotFoundError", "StateError", "SecurityError", "ResourceLimitError",
    "ProviderError", "GuestUnreachableError", "CommandTimeout", "RollbackError", "StateCorruptionError",
    "ProvisionError",
]
