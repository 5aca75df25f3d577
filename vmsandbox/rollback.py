"""RollbackManager (seed API): rollback points with reasons, rollbacks with options, retention,
and notification of listeners. Built on StateManager; the mechanics live in ``snapshots``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .config import Days
from .schema import Flag, section, validate
from .snapshots import RollbackEvent
from .state import StateManager


@section
class RollbackOptions:
    """``RollbackManager.rollback(options=...)``."""
    preserve_logs: Flag = True                   # keep console logs of earlier guests (the audit log always is)
    notify: Flag = True                          # callbacks get a RollbackEvent


ROLLBACK_OPTIONS = frozenset(RollbackOptions.__dataclass_fields__)


@dataclass(frozen=True)
class RollbackPoint:
    id: str
    sandbox_id: str
    name: str
    created_at: float
    metadata: dict = field(default_factory=dict)
    pinned: bool = False


class RollbackManager:
    def __init__(self, state_manager: StateManager) -> None:
        self.state = state_manager
        self.core = state_manager.core
        self._callbacks: list[Callable[[RollbackEvent], None]] = []
        self.core.on_rollback(self._dispatch)

    def add_callback(self, callback: Callable[[RollbackEvent], None]) -> None:
        """``callback(RollbackEvent)`` runs after every rollback made with ``notify`` on."""
        self._callbacks.append(callback)

    def create_rollback_point(self, sandbox_id: str, metadata: Optional[Mapping[str, Any]] = None,
                              name: Optional[str] = None, memory: Optional[bool] = None) -> RollbackPoint:
        meta = dict(metadata or {})
        meta.setdefault("automatic", False)
        point_name = name or f"point-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10000:04d}"
        sid = self.core.create_snapshot(sandbox_id, point_name, memory=memory, metadata=meta)
        snap = self.state.get_state(sandbox_id, sid)
        return RollbackPoint(id=snap.id, sandbox_id=self.core.get(sandbox_id).id, name=snap.name,
                             created_at=snap.created_at, metadata=snap.metadata)

    def list_points(self, sandbox_id: str) -> list[RollbackPoint]:
        return [RollbackPoint(s.id, s.sandbox_id, s.name, s.created_at, s.metadata, s.pinned)
                for s in self.core.list_snapshots(sandbox_id)]

    def rollback(self, sandbox_id: str, point_id: str, options: Optional[Mapping[str, Any]] = None) -> bool:
        """Options: ``preserve_logs`` (default True: console logs of earlier guests are kept; the
        audit log always is), ``notify`` (default True: callbacks get a RollbackEvent).
        Raises RollbackError when the rollback fails."""
        opts = validate(RollbackOptions, options, "options")
        return self.core.rollback(sandbox_id, point_id, preserve_logs=opts.preserve_logs, notify=opts.notify)

    def pin_point(self, sandbox_id: str, point_id: str, pinned: bool = True) -> None:
        """Keep a point through every retention rule (``pinned=False`` lets it go again)."""
        self.core.pin_snapshot(sandbox_id, point_id, pinned)

    def cleanup_old_points(self, days: Optional[float] = None) -> int:
        """Delete points older than ``days`` (default ``rollback.retention_days``) the safe way."""
        days = self.core.config.rollback.retention_days if days is None else validate(Days, days, "days")
        return len(self.core.cleanup_snapshots(days) if days else [])

    def _dispatch(self, event: RollbackEvent) -> None:
        for cb in list(self._callbacks):
            cb(event)
