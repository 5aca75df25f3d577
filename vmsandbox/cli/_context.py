"""Shared CLI plumbing: the lazily built SandboxCore, JSON/table output, and error handling."""
from __future__ import annotations

import json
import sys
from typing import Any, Optional

import click
from rich.console import Console
from rich.table import Table

from ..exceptions import (CommandTimeout, ConfigError, NotFoundError, ResourceLimitError, SandboxError,
                          SecurityError, StateError)

console = Console(stderr=True)
out = Console()

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


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A table for people on a terminal; full-width plain rows (nothing cut) for a pipe or a file."""
    if not out.is_terminal:
        plain_rows(columns, rows, title)
        return
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


def plain_rows(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """Columns padded to their widest cell, never cut at the terminal width (for pipes; use --json to parse)."""
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    if title:
        click.echo(title)
    for r in ([columns] if any(columns) else []) + cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
