"""The ``vmsandbox`` command line: a thin click layer over SandboxCore.

People get tables and progress; machines get ``--json``. Every vmsandbox error becomes one
line on stderr and a non-zero exit (see ``_context.EXIT_CODES``), never a traceback.
Command groups live in sibling modules and are registered here.
"""
from __future__ import annotations

import importlib
import logging
import sqlite3

import click

from .._safe_text import SafeFormatter
from ..exceptions import SandboxError
from ._context import AppContext, exit_code_for, say


class VmsandboxGroup(click.Group):
    """Maps vmsandbox errors to one clear line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            say(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))
        except sqlite3.Error as exc:           # a state database this code cannot use: one line, no traceback
            say(f"error: state database: {exc}; run `vmsandbox doctor`", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=VmsandboxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="VMSANDBOX_CONFIG",
              help="YAML config file (default: built-in defaults).")
@click.option("--state-dir", envvar="VMSANDBOX_STATE_DIR", help="Override sandbox.state_directory.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="vmsandbox")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, state_dir: str | None, verbose: int) -> None:
    """Throwaway VM sandboxes: create, exec, snapshot, roll back, destroy."""
    handler = logging.StreamHandler()           # log lines quote guests and commands: escape them
    handler.setFormatter(SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], handlers=[handler])
    ctx.obj = AppContext(config_path, state_dir)
    ctx.call_on_close(ctx.obj.close)


# Each module adds its commands to ``cli``; a missing optional module is skipped.
for _module in ("sandbox_cmds", "box_cmds", "policy_cmds", "snapshot_cmds", "health_cmds", "farm_cmds",
                "service_cmds", "provision_cmds"):
    try:
        _mod = importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_module}":
            raise
        continue
    for _cmd in getattr(_mod, "COMMANDS", []):
        cli.add_command(_cmd)


def main() -> None:
    cli(prog_name="vmsandbox")
