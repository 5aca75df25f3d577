"""The public surface: everything in __all__ exists, and every exception derives from the root."""
import vmsandbox
from vmsandbox import exceptions


def test_all_is_complete_and_importable():
    for name in vmsandbox.__all__:
        assert hasattr(vmsandbox, name), name
    for name in ("SandboxCore", "AsyncSandboxCore", "StateManager", "RollbackManager", "SecurityError",
                 "ResourceLimitError", "RollbackError", "StateCorruptionError", "CommandTimeout"):
        assert name in vmsandbox.__all__


def test_every_exception_has_the_root():
    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), exceptions.SandboxError)


def test_async_twin_covers_the_sync_api():
    from vmsandbox import AsyncSandboxCore, SandboxCore
    for name in AsyncSandboxCore.METHODS:
        assert callable(getattr(SandboxCore, name)), name
    for name in ("create_sandbox", "execute", "create_snapshot", "rollback", "destroy", "get_health_status"):
        assert name in AsyncSandboxCore.METHODS
