"""The checks at the boundary of the synchronous Python API (``SandboxCore``'s public methods).

Owns two mistakes that otherwise fail late and obscurely, and one translation:
- a synchronous method called from inside a running event loop (``await core.create_sandbox(...)``
  would create the VM, block the loop, and only then fail on the ``await``): refused before
  anything happens, with an error that names ``AsyncSandboxCore``;
- a wrong argument, typically a coroutine passed where its value was meant (a raw
  ``sqlite3.ProgrammingError`` from deep inside), a missing argument, or a non-string id:
  one ``ConfigError`` naming the parameter;
- an SQLite error from the state database (``database is locked`` past the busy timeout, a full
  disk) becomes one ``StateDatabaseError`` naming the method, never a raw ``sqlite3`` exception.
"""
from __future__ import annotations

import functools
import inspect
import sqlite3
import sys
from typing import Any, Callable, Iterable, Mapping

from .exceptions import ConfigError, StateDatabaseError

#: parameters that are names, ids or command lines: strings, nothing else
_STRINGS = {"sandbox_id", "sandbox", "snapshot_id", "name", "command"}


def _in_event_loop() -> bool:
    asyncio = sys.modules.get("asyncio")     # a process that never imported it runs no event loop
    if asyncio is None:                      # (and a CLI call need not import it: ~20 ms)
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def check_call(owner: str, method: str, sig: inspect.Signature, args: tuple, kwargs: dict) -> None:
    """Raise ConfigError when ``owner.method(*args, **kwargs)`` is called wrongly (see module doc)."""
    if _in_event_loop():
        raise ConfigError(
            f"{owner}.{method}() is synchronous and was called inside a running event loop; use "
            f"AsyncSandboxCore (`await core.{method}(...)`), or `await asyncio.to_thread(core.{method}, ...)`. "
            "Nothing was done", owner)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{method}(): {exc}", owner) from None
    for param, value in bound.arguments.items():
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()                     # never awaited: no second warning
            raise ConfigError(f"{param} is a coroutine, not a value: await it first "
                              "(an AsyncSandboxCore call returns one)", f"{method}.{param}")
        if param in _STRINGS and not isinstance(value, str) and not (value is None and sig.parameters[param].default is None):
            raise ConfigError(f"expected a string, got {type(value).__name__}", f"{method}.{param}")
        if param == "config" and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", f"{method}.{param}")


def guard_methods(cls: type, methods: Iterable[str]) -> None:
    """Wrap ``cls``'s ``methods`` with ``check_call``."""
    for method in methods:
        fn = cls.__dict__.get(method)
        if fn is None:
            continue
        setattr(cls, method, _guarded(cls.__name__, method, fn))


def _guarded(owner: str, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]          # without self
    sig = sig.replace(parameters=params)

    @functools.wraps(fn)
    def call(self, *args: Any, **kwargs: Any) -> Any:
        check_call(owner, method, sig, args, kwargs)
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StateDatabaseError(f"{owner}.{method}(): state database: {exc}; retry, "
                                     "or run `vmsandbox doctor`") from exc
    return call


__all__ = ["check_call", "guard_methods"]
