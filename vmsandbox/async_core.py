"""AsyncSandboxCore: ``SandboxCore``'s public operations as coroutines, each run in a worker
thread (the synchronous core blocks on libvirt and SSH), for ``await`` in asyncio code."""
from __future__ import annotations

import asyncio
import functools
from typing import Any

from .core import PUBLIC_METHODS, SandboxCore


class AsyncSandboxCore:
    """``SandboxCore`` with every public operation as a coroutine (run in a worker thread)."""

    METHODS = PUBLIC_METHODS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sync = SandboxCore(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name not in self.METHODS:
            raise AttributeError(name)
        fn = getattr(self.sync, name)

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return call

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncSandboxCore":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
