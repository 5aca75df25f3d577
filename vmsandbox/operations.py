"""The operation context: the one way an operation on a sandbox runs.

``Operations.run(ref, "rollback", during=ROLLING_BACK, error=RollbackError)`` takes the
sandbox's lock (bounded wait), reads the record under it, checks that the operation may start
from the sandbox's state (``models.ALLOWED``), optionally records a transitional state, and
yields an ``Operation`` that acts on that record. When the body fails, the sandbox goes back to
the state it had (or to ``broken`` with the reason, when the body said the damage is done), the
failure is audited, and a ``SandboxError`` that is not already of the operation's own class is
raised as that class with the root cause chained. When it succeeds, the outcome is audited.
Journal entries (for crash recovery) are written through the operation too.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .exceptions import ProviderUnavailableError, ResourceLimitError, SandboxError, StateError
from .layout import Layout
from .models import ALLOWED, SandboxInfo, SandboxState
from .store import Store

log = logging.getLogger("vmsandbox.operations")


def require(info: SandboxInfo, operation: str) -> None:
    """Raise StateError (ResourceLimitError when a limit stopped it) unless ``operation`` may
    start from ``info``'s state."""
    allowed = ALLOWED[operation]
    if info.state in allowed:
        return
    if info.state in (SandboxState.PAUSED, SandboxState.STOPPED) and info.reason.startswith("limit:"):
        raise ResourceLimitError(f"sandbox {info.name!r} is {info.state} because {info.reason[6:].strip()}; "
                                 f"{operation} is not possible until it is resumed")
    need = " or ".join(sorted(s.value for s in allowed))
    raise StateError(f"cannot {operation} sandbox {info.name!r}: it is {info.state} (needs {need})",
                     info.state, allowed)


@dataclass
class Operation:
    """One operation in progress on one sandbox (the body of ``Operations.run``)."""
    name: str
    info: SandboxInfo                      # the record as read under the lock (kept current by ``update``)
    ops: "Operations"
    detail: dict = field(default_factory=dict)     # goes into the audit record
    broken_reason: str = ""                # set by the body once the old state cannot be restored
    journal_id: Optional[str] = None
    started: float = field(default_factory=time.monotonic)

    def update(self, **fields: Any) -> SandboxInfo:
        self.info = self.ops.store.update_sandbox(self.info.id, **fields)
        return self.info

    def journal(self, kind: str, **data: Any) -> str:
        """Record what this operation plans to create, before it creates it."""
        self.journal_id = self.ops.layout.new_operation_id()
        self.ops.store.journal_begin(self.journal_id, kind, self.info.id, data)
        return self.journal_id

    def step(self, step: str, **data: Any) -> None:
        self.ops.store.journal_step(self.journal_id, step, **data)

    def done(self) -> None:
        if self.journal_id:
            self.ops.store.journal_end(self.journal_id)
            self.journal_id = None

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


class Operations:
    def __init__(self, store: Store, layout: Layout, lock_wait: float) -> None:
        self.store = store
        self.layout = layout
        self.lock_wait = lock_wait

    @contextmanager
    def run(self, ref: str, operation: str, *, during: Optional[SandboxState] = None,
            error: type[SandboxError] = SandboxError, check: bool = True,
            on_failure: Optional[Callable[[SandboxInfo, BaseException], None]] = None,
            audit: bool = True) -> Iterator[Operation]:
        """Run ``operation`` on sandbox ``ref`` (id or name) as described in the module docstring.

        ``check``: verify ``models.ALLOWED``; ``on_failure(info, exc)`` runs after the state is
        restored (callbacks); ``audit=False`` leaves the success record to the caller.
        """
        sandbox_id = self.store.get_sandbox(ref).id      # ids never change: safe before the lock
        with self.layout.lock(sandbox_id, f"{operation} of {ref!r}", wait=self.lock_wait):
            info = self.store.get_sandbox(sandbox_id)   # what we act on: read under the lock
            if check:
                require(info, operation)
            op = Operation(operation, info, self)
            prior = (info.state, info.reason)
            try:
                if during is not None:
                    op.update(state=during)
                yield op
            except BaseException as exc:
                self._failed(op, prior, exc)
                if on_failure is not None:
                    on_failure(op.info, exc)
                if isinstance(exc, SandboxError) and not isinstance(exc, (error, ProviderUnavailableError)):
                    kept = "" if op.broken_reason else "; the sandbox is unchanged"
                    raise error(f"{operation} of {info.name!r} failed: {exc}{kept}") from exc
                raise
        if audit:
            self.store.audit(operation, "ok", op.info, seconds=op.seconds, **op.detail)

    def _failed(self, op: Operation, prior: tuple, exc: BaseException) -> None:
        """Put the record back in a known state and audit the failure; never hide ``exc``."""
        try:
            if self.store.find_sandbox(op.info.id) is not None:
                if op.broken_reason:
                    op.update(state=SandboxState.BROKEN, reason=op.broken_reason)
                elif op.info.state != prior[0] or op.info.reason != prior[1]:
                    op.update(state=prior[0], reason=prior[1])
            self.store.audit(op.name, "failed", op.info, error=str(exc) or type(exc).__name__, **op.detail)
        except Exception as cleanup_exc:       # the store itself failed: keep the original error
            log.error("recording the failure of %s on %s failed: %s", op.name, op.info.name, cleanup_exc)
