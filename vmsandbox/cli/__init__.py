"""The ``vmsandbox`` command line: a thin click layer over SandboxCore.

People get tables and progress; machines get ``--json``. Every vmsandbox error becomes one
line on stderr and a non-zero exit (see ``_context.EXIT_CODES``), never a traceback.
Command groups live in sibling modules, named in ``COMMANDS`` below and imported only when one
of their commands runs: ``vmsandbox --help`` imports none of them, ``vmsandbox exec`` only
``sandbox_cmds`` (start-up time is paid on every call, and ``ssh-proxy`` on every ssh connection).
"""
from __future__ import annotations

import importlib
import sys

import click

from ..exceptions import SandboxError

#: Every top-level command: name -> (module in vmsandbox.cli, the first paragraph of its help).
#: The module lists its commands in ``COMMANDS`` (the command is found there by name); the help
#: is what ``vmsandbox --help`` shows without importing the module (tests/unit/test_cli_lazy.py
#: checks each entry against the command itself). A new command or group is one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("sandbox_cmds", "Read the audit log (every operation and policy verdict)."),
    "box": ("box_cmds", "Guest images (boxes) that sandboxes boot from."),
    "clone": ("snapshot_cmds", "Start NEW_NAME as a linked clone of SNAPSHOT (an id, or SANDBOX:SNAPSHOT)."),
    "config": ("sandbox_cmds", "Inspect configuration."),
    "cp": ("sandbox_cmds", "Copy a file in or out: `cp FILE NAME:/path` or `cp NAME:/path FILE` (into DIR when it is one)."),
    "create": ("sandbox_cmds", "Create and boot a sandbox; returns when a command can run in it."),
    "demo": ("sandbox_cmds", "The main job: create a sandbox, run commands, snapshot, roll back, destroy."),
    "destroy": ("sandbox_cmds", "Destroy sandboxes: domain, disks, logs and record."),
    "doctor": ("sandbox_cmds", "Check libvirtd, QEMU, the accelerator, boxes, disk space and whether `vmsandbox serve` runs."),
    "emergency-shutdown": ("sandbox_cmds", "Pull the plug on NAME now; disk, console and audit logs are kept for forensics."),
    "exec": ("sandbox_cmds", "Run COMMAND in sandbox NAME (after `--`); exits with the command's exit code (124 on timeout)."),
    "farm": ("farm_cmds", "Nightly test farm: many jobs in clones of one prepared snapshot."),
    "gc": ("sandbox_cmds", "Destroy idle non-persistent sandboxes and remove orphaned domains and files."),
    "health": ("health_cmds", "Status, metrics, alerts and recommendations of one sandbox."),
    "inventory": ("provision_cmds", "An ansible dynamic inventory of the sandboxes (groups box_*, label_*_*, state_*)."),
    "label": ("provision_cmds", "Show or change labels of sandbox NAME: KEY=VALUE sets, KEY- removes."),
    "list": ("sandbox_cmds", "List sandboxes."),
    "metrics": ("health_cmds", "Export sandbox metrics."),
    "pause": ("sandbox_cmds", "Freeze a sandbox's vCPUs."),
    "pool": ("snapshot_cmds", "Warm pools: paused standbys of a memory snapshot that clones take instead of starting."),
    "provision": ("provision_cmds", "Run an ansible PLAYBOOK against sandbox NAME; snapshot the result with --snapshot."),
    "resume": ("sandbox_cmds", "Unfreeze a paused sandbox."),
    "rollback": ("snapshot_cmds", "Roll sandbox NAME back to SNAPSHOT (a name or an id)."),
    "serve": ("service_cmds", "Run the service for this state directory until SIGTERM: the watchdog over every sandbox "
                              "(alerts, monitoring.limit_action), ttl expiry and gc, and the Prometheus endpoint."),
    "show": ("sandbox_cmds", "Show one sandbox."),
    "snapshot": ("snapshot_cmds", "Snapshots of a sandbox (disk, and memory of a running guest)."),
    "ssh": ("sandbox_cmds", "Open a shell in NAME through the system ssh client; anything after NAME is the remote command."),
    "ssh-config": ("sandbox_cmds", "Print OpenSSH config blocks for sandboxes (`Host NAME vmsandbox-NAME`)."),
    "ssh-proxy": ("sandbox_cmds", "Connect stdin/stdout to NAME's current SSH endpoint (an OpenSSH ProxyCommand)."),
    "start": ("sandbox_cmds", "Boot a stopped sandbox and wait for SSH."),
    "stop": ("sandbox_cmds", "Power a sandbox off (disk kept)."),
    "throttle": ("sandbox_cmds", "Cap each vCPU of NAME at FRACTION of a CPU (`unthrottle` lifts it)."),
    "top": ("health_cmds", "A live table of every sandbox's health (Ctrl-C to quit)."),
    "unthrottle": ("sandbox_cmds", "Lift a CPU throttle (back to the sandbox's own CPU limit)."),
    "validate": ("policy_cmds", "Assess COMMAND with the command policy without running it."),
}


def load_command(name: str) -> click.Command | None:
    """The command ``name`` of ``COMMANDS``, importing its module now; None when the module is
    not there (an optional part of vmsandbox that is not installed)."""
    module = f"{__name__}.{COMMANDS[name][0]}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None
    for cmd in getattr(mod, "COMMANDS", []):
        if cmd.name == name:
            return cmd
    raise RuntimeError(f"{module} does not define the command {name!r} (vmsandbox.cli.COMMANDS)")


class VmsandboxGroup(click.Group):
    """Loads commands from ``COMMANDS`` on first use; maps vmsandbox errors to one clear line
    and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            cmd = load_command(cmd_name)
            if cmd is None:
                return None
            self.commands[cmd_name] = cmd
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, but a command not loaded yet is listed from ``COMMANDS`` (not imported)."""
        names = [n for n in self.list_commands(ctx) if n in COMMANDS or not self.commands[n].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            cmd = self.commands.get(name)
            if cmd is None:                  # a stand-in: click's own shortening of the same text
                cmd = click.Command(name, help=COMMANDS[name][1])
            rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            from ._context import exit_code_for, say
            say(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            sqlite3 = sys.modules.get("sqlite3")       # not imported: it cannot be its error
            if sqlite3 is None or not isinstance(exc, sqlite3.Error):
                raise
            from ._context import say               # a state database this code cannot use: one line, no traceback
            say(f"error: state database: {exc}; run `vmsandbox doctor`", err=True)
            ctx.exit(1)


@click.group(cls=VmsandboxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="VMSANDBOX_CONFIG",
              help="YAML config file (default: built-in defaults).")
@click.option("--state-dir", envvar="VMSANDBOX_STATE_DIR", help="Override sandbox.state_directory.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="vmsandbox")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, state_dir: str | None, verbose: int) -> None:
    """Throwaway VM sandboxes: create, exec, snapshot, roll back, destroy."""
    import logging                              # not for --help: ~5 ms
    from .._safe_text import SafeFormatter
    from ._context import AppContext
    handler = logging.StreamHandler()           # log lines quote guests and commands: escape them
    handler.setFormatter(SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], handlers=[handler])
    ctx.obj = AppContext(config_path, state_dir)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    cli(prog_name="vmsandbox")
