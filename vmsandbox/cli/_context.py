"""Shared CLI plumbing: the lazily built SandboxCore, JSON/table output, and error handling.

Every line vmsandbox itself prints goes through ``say``, ``table``, ``status``/``progress`` or
``fail`` here: they show any text literally (never as rich markup) with control characters made
visible (``_safe_text.visible``), so no name, note, command, path or guest output can restyle,
hide or crash a view. (``exec`` streams the command's own output untouched: that is its job.)"""
from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Optional

import click

from .._safe_text import visible

from ..exceptions import (CommandTimeout, ConfigError, NotFoundError, ResourceLimitError, SandboxError,
                          SecurityError, StateError)

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text


def __getattr__(name: str) -> Any:
    """``console`` (stderr) and ``out`` (stdout): rich consoles, made on first use (PEP 562), so
    a command that prints no table or status line never imports rich."""
    if name not in ("console", "out"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console
    globals().setdefault("console", Console(stderr=True))
    globals().setdefault("out", Console())
    return globals()[name]


def _console(name: str):
    """``console`` or ``out`` as the module holds it now (a test may have replaced it)."""
    return globals()[name] if name in globals() else __getattr__(name)

#: exit codes for errors (a command's own exit code passes through `vmsandbox exec`)
EXIT_CODES = {ConfigError: 2, NotFoundError: 3, StateError: 4, SecurityError: 5, ResourceLimitError: 6,
              CommandTimeout: 124}


def exit_code_for(exc: SandboxError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


class AppContext:
    """Holds global options; builds the core only when a command needs it."""

    def __init__(self, config_path: Optional[str], state_dir: Optional[str]) -> None:
        self.config_path = config_path
        self.state_dir = state_dir
        self._core = None

    def overrides(self) -> dict:
        return {"sandbox": {"state_directory": self.state_dir}} if self.state_dir else {}

    @property
    def core(self):
        if self._core is None:
            from ..core import SandboxCore
            self._core = SandboxCore(config_path=self.config_path, config=self.overrides(), start_watchdog=False)
        return self._core

    @property
    def config(self):
        if self._core is not None:
            return self._core.config
        from ..config import load_config
        return load_config(self.config_path, self.overrides())

    def close(self) -> None:
        if self._core is not None:
            self._core.close()


def app(ctx: click.Context) -> AppContext:
    return ctx.find_object(AppContext)


def get_core(ctx: click.Context):
    return app(ctx).core


def get_box_store(ctx: click.Context):
    """The box store of the configured state directory (used by ``vmsandbox box ...``)."""
    from ..boxes import BoxStore
    return BoxStore(app(ctx).config.sandbox.box_path)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


#: longest cell a table shows (the rest is cut, with a count)
CELL_MAX = 300


def literal(value: Any, max_line: int = CELL_MAX) -> Text:
    """A table cell or status line: ``value`` shown literally, one line, controls escaped.
    A ``Text`` the caller built itself (styled on purpose) is kept as it is."""
    from rich.text import Text
    if isinstance(value, Text):
        return value
    return Text(_plain(value, max_line))


def _plain(value: Any, max_line: int = CELL_MAX) -> str:
    """``literal(value).plain`` without rich: the escaped text (a caller's own ``Text``: its text)."""
    if type(value).__module__ == "rich.text":
        return value.plain
    return "" if value is None else visible(value, max_line=max_line)


def safe_table(columns: list[str], title: str | None = None) -> Table:
    """A rich table whose title and headers cannot be read as markup; add rows with ``add_row``."""
    from rich.table import Table
    t = Table(title=literal(title) if title else None)
    for c in columns:
        t.add_column(literal(c))
    return t


def add_row(t: Table, row: list[Any]) -> None:
    t.add_row(*(literal(v) for v in row))


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A table for people on a terminal; full-width plain rows (nothing cut) for a pipe or a file.
    Either way every cell is shown literally with controls escaped."""
    if not _stdout_is_terminal():
        plain_rows(columns, rows, title)
        return
    t = safe_table(columns, title)
    for r in rows:
        add_row(t, r)
    _console("out").print(t)


def _stdout_is_terminal() -> bool:
    """``out.is_terminal``, without making ``out`` (and importing rich) for a plain pipe."""
    if "out" not in globals() and not (sys.stdout and sys.stdout.isatty()) and not any(
            k in os.environ for k in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")):   # rich's overrides
        return False
    return _console("out").is_terminal


def plain_rows(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """Columns padded to their widest cell, never cut at the terminal width (for pipes; use --json
    to parse); cells escaped like the terminal table's (``literal``)."""
    cells = [[_plain(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    if title:
        click.echo(_plain(title))
    for r in ([columns] if any(columns) else []) + cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def say(message: Any, err: bool = False) -> None:
    """Print one message (it may span lines, e.g. a console tail) with controls escaped."""
    click.echo(visible(message, multiline=True), err=err)


def status(message: Any):
    """A live status line (rich) for progress, fed with ``literal`` text only."""
    return _console("console").status(literal(message, max_line=200))


def fail(message: str, code: int = 1) -> None:
    say(f"error: {message}", err=True)
    sys.exit(code)
