"""Command sessions to sandboxes: one open session per sandbox, reused by every command of this
process, reopened when the sandbox's endpoint changes (a rollback moves it) or the session died.

Owns the cache only; the provider says where a sandbox is reached (``Provider.endpoint``) and
opens the session (``Provider.open_session``: SSH for VM providers). A host key learnt on first
use is pinned in the sandbox's record; how commands start in the guest (``execmode``) is probed
once per sandbox, kept in its state directory and handed to every later session (a clone starts
with its source's).
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from . import execmode
from .models import SandboxInfo
from .providers import Endpoint, Provider
from .store import Store

Progress = Callable[[str], None]


class SessionPool:
    def __init__(self, provider: Provider, store: Store, boxes: Callable[[], Any], boot_timeout: float,
                 sandbox_dir: Optional[Callable[[str], Path]] = None) -> None:
        self.provider = provider
        self._sandbox_dir = sandbox_dir
        self.store = store
        self._boxes = boxes
        self.boot_timeout = boot_timeout
        self._sessions: dict[str, tuple[Endpoint, Any, tuple]] = {}
        self._lock = threading.Lock()

    def endpoint(self, info: SandboxInfo) -> Endpoint:
        return self.provider.endpoint(info, self._boxes().get(info.box))

    def get(self, info: SandboxInfo) -> Any:
        """The open session to ``info`` (opened on first use)."""
        # Hot path (every command): the record fields an endpoint is made of unchanged means the
        # same endpoint, without reading the box from disk again.
        key = _endpoint_key(info)
        cached = self._sessions.get(info.id)
        if cached is not None and cached[2] == key:
            return cached[1]
        endpoint = self.endpoint(info)
        with self._lock:
            cached = self._sessions.get(info.id)
            if cached is not None:
                old_endpoint, session, _ = cached
                if old_endpoint == endpoint or _repinned(old_endpoint, endpoint, session):
                    self._sessions[info.id] = (endpoint, session, key)
                    return session
                session.close()

            def remember(keyline: str, sid: str = info.id) -> None:
                self.store.update_sandbox(sid, host_key=keyline)

            session = self.provider.open_session(endpoint, on_new_host_key=remember)
            self._use_exec_mode(info, session)
            self._sessions[info.id] = (endpoint, session, key)
            return session

    def _use_exec_mode(self, info: SandboxInfo, session: Any) -> None:
        """Hand ``session`` the sandbox's remembered exec mode (or its clone source's)."""
        if self._sandbox_dir is not None and hasattr(session, "use_exec_mode"):
            mode, remember = execmode.remembered(self._sandbox_dir(info.id))
            if mode is None:
                mode = self._source_exec_mode(info)
                if mode is not None:
                    remember(mode)
            session.use_exec_mode(mode, remember)

    def _source_exec_mode(self, info: SandboxInfo) -> Optional[str]:
        """A clone's source's exec mode (same image), if recorded."""
        source = self.store.find_snapshot(info.cloned_from) if info.cloned_from else None
        return execmode.load(self._sandbox_dir(source.sandbox_id)) if source is not None else None

    def drop(self, sandbox_id: str) -> None:
        with self._lock:
            cached = self._sessions.pop(sandbox_id, None)
        if cached is not None:
            cached[1].close()

    def wait_ready(self, info: SandboxInfo, console_log: Any, progress: Optional[Progress] = None) -> float:
        """Wait until a command runs in ``info``; GuestUnreachableError with the console's tail if not."""
        cb = (lambda waited: progress(f"waiting for SSH ({waited:.0f} s)")) if progress else None
        return self.get(info).wait_ready(self.boot_timeout, console_log=console_log, progress=cb)

    def open(self, endpoint: Endpoint) -> Any:
        """A new session to ``endpoint`` that the pool does not keep (a warm standby's, until
        ``adopt``)."""
        return self.provider.open_session(endpoint)

    def adopt(self, info: SandboxInfo, session: Any) -> None:
        """Use ``session``, already open to ``info``'s endpoint, for ``info`` from now on."""
        endpoint = self.endpoint(info)
        self._use_exec_mode(info, session)
        key = _endpoint_key(info)
        with self._lock:
            old = self._sessions.pop(info.id, None)
            self._sessions[info.id] = (endpoint, session, key)
        if old is not None and old[1] is not session:
            old[1].close()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = [s for _, s, _ in self._sessions.values()], {}
        for s in sessions:
            s.close()


def _endpoint_key(info: SandboxInfo) -> tuple:
    """The record fields an endpoint is made of: unchanged means the same endpoint."""
    return (info.provider, info.box, info.ssh_port, info.host_key, info.domain)


def _repinned(old: Endpoint, new: Endpoint, session: Any) -> bool:
    """Whether only the host key changed and ``session`` is already pinned to the new one (the
    guest's key was rotated through this very session): it can stay open."""
    def key(line: Optional[str]) -> Optional[str]:
        return " ".join(line.split()[:2]) if line else None
    if type(old) is not Endpoint or type(new) is not Endpoint or new.host_key is None:
        return False                      # another provider's endpoint (a container's has no host key)
    return (dataclasses.replace(old, host_key=new.host_key) == new
            and key(getattr(session, "host_key", None)) == key(new.host_key))
