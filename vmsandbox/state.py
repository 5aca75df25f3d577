"""StateManager (seed API): named, persistent sandbox states on top of the snapshot machinery.

A "state" is a snapshot whose metadata carries the caller's description (any JSON-able dict:
what the filesystem, processes and network were for). Saving one freezes the disk and, for a
running guest, its memory; restoring one is a rollback.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping, Optional

from .config import load_config
from .core import SandboxCore
from .models import Snapshot


class StateManager:
    """``StateManager(storage_path=...)`` opens (or creates) the state directory at that path;
    ``StateManager(core=...)`` shares an existing SandboxCore.

    Its own core is configured like ``SandboxCore``: ``config_path`` (or ``$VMSANDBOX_CONFIG``),
    then ``config``, then ``storage_path`` as ``sandbox.state_directory``. The boxes stay where
    that configuration keeps them (``storage_path`` moves the state, not the boxes)."""

    def __init__(self, storage_path: Optional[str] = None, core: Optional[SandboxCore] = None,
                 config: Optional[Mapping] = None, config_path: Optional[str] = None) -> None:
        if core is None:
            cfg = dict(config or {})
            if storage_path:
                layered = load_config(config_path, cfg).sandbox
                cfg = {**cfg, "sandbox": {**cfg.get("sandbox", {}), "state_directory": str(storage_path),
                                          "box_directory": str(layered.box_path)}}
            core = SandboxCore(config_path=config_path, config=cfg, start_watchdog=False)
            self._owns_core = True
        else:
            self._owns_core = False
        self.core = core

    def save_state(self, sandbox_id: str, state: Optional[Mapping[str, Any]] = None, name: Optional[str] = None,
                   memory: Optional[bool] = None) -> str:
        """Snapshot the sandbox and record ``state`` with it; returns the state (snapshot) id."""
        described = json.loads(json.dumps(dict(state or {}), default=str))
        return self.core.create_snapshot(sandbox_id, name or f"state-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10000:04d}",
                                         memory=memory, metadata={"state": described})

    def list_states(self, sandbox_id: str) -> list[Snapshot]:
        return self.core.list_snapshots(sandbox_id)

    def get_state(self, sandbox_id: str, state_id: str) -> Snapshot:
        for s in self.core.list_snapshots(sandbox_id):
            if state_id in (s.id, s.name):
                return s
        from .exceptions import NotFoundError
        raise NotFoundError(f"no state {state_id!r} in sandbox {sandbox_id!r}")

    def restore_state(self, sandbox_id: str, state_id: str) -> bool:
        return self.core.rollback(sandbox_id, state_id)

    def delete_state(self, sandbox_id: str, state_id: str) -> None:
        self.core.delete_snapshot(sandbox_id, state_id)

    def close(self) -> None:
        if self._owns_core:
            self.core.close()
