"""The command line starts lean: ``vmsandbox --help`` imports no command module and none of the
heavy libraries, each command imports only its own module, and the help listed from
``vmsandbox.cli.COMMANDS`` is exactly what the commands themselves say."""
import json
import subprocess
import sys

import click
import pytest

from vmsandbox import cli as cli_pkg

HEAVY = ["paramiko", "libvirt", "asyncio", "rich", "re2", "pydantic", "yaml", "docker", "celery", "tree_sitter",
         "vmsandbox.safety", "vmsandbox.config", "vmsandbox.core", "vmsandbox.ssh"]


def modules_after(argv: list[str], env_extra: dict | None = None) -> set[str]:
    """The modules a fresh ``vmsandbox ARGV`` process has imported when it exits."""
    code = ("import sys, json, atexit\n"
            "atexit.register(lambda: sys.__stderr__.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            f"sys.argv = ['vmsandbox'] + {argv!r}\n"
            "from vmsandbox.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, r.stderr
    return set(json.loads(line[-1][len("MODULES "):]))


def heavy_in(mods: set[str]) -> list[str]:
    return sorted(h for h in HEAVY if h in mods or any(m.startswith(h + ".") for m in mods))


def test_help_imports_nothing_heavy_and_no_command_module():
    mods = modules_after(["--help"])
    assert heavy_in(mods) == []
    assert not [m for m in mods if m.startswith("vmsandbox.cli.") and m != "vmsandbox.cli._context"]


def test_a_command_help_imports_only_its_own_module():
    mods = modules_after(["exec", "--help"])
    assert "vmsandbox.cli.sandbox_cmds" in mods
    assert not {"vmsandbox.cli.farm_cmds", "vmsandbox.cli.policy_cmds", "vmsandbox.cli.box_cmds"} & mods
    assert heavy_in(mods) == []


def test_version_imports_nothing_heavy():
    assert heavy_in(modules_after(["--version"])) == []


@pytest.mark.parametrize("name", sorted(cli_pkg.COMMANDS))
def test_listed_help_matches_the_command(name):
    cmd = cli_pkg.load_command(name)
    assert cmd is not None and cmd.name == name and not cmd.hidden
    stand_in = click.Command(name, help=cli_pkg.COMMANDS[name][1])
    for limit in (30, 45, 60, 80, 120, 400):
        assert stand_in.get_short_help_str(limit) == cmd.get_short_help_str(limit), limit


def test_every_command_of_every_module_is_listed():
    """A command a module defines but COMMANDS does not name would be unreachable."""
    modules = {m for m, _ in cli_pkg.COMMANDS.values()}
    for m in modules:
        mod = __import__(f"vmsandbox.cli.{m}", fromlist=["COMMANDS"])
        for cmd in mod.COMMANDS:
            assert cli_pkg.COMMANDS.get(cmd.name, (None,))[0] == m, f"{m}: {cmd.name} not in vmsandbox.cli.COMMANDS"


def test_help_lists_every_command_with_the_same_text_once_loaded():
    """The lazy listing and the listing after every module was imported are the same text."""
    from click.testing import CliRunner
    lazy = CliRunner().invoke(cli_pkg.cli, ["--help"], terminal_width=80)
    for name in cli_pkg.COMMANDS:
        cli_pkg.cli.get_command(click.Context(cli_pkg.cli), name)
    loaded = CliRunner().invoke(cli_pkg.cli, ["--help"], terminal_width=80)
    assert lazy.exit_code == loaded.exit_code == 0
    assert lazy.output == loaded.output
    assert all(f"  {name} " in lazy.output for name in cli_pkg.COMMANDS)


def test_unknown_command_is_one_clear_error():
    from click.testing import CliRunner
    r = CliRunner().invoke(cli_pkg.cli, ["no-such-command"])
    assert r.exit_code == 2 and "No such command 'no-such-command'" in r.output


def test_a_raw_state_database_error_is_one_line():
    """The group maps a sqlite3 error (only possible once sqlite3 is imported) to one line."""
    import sqlite3

    from click.testing import CliRunner

    @click.command("boom-db")
    def boom():
        raise sqlite3.OperationalError("disk I/O error")
    cli_pkg.cli.add_command(boom)
    try:
        r = CliRunner().invoke(cli_pkg.cli, ["boom-db"])
    finally:
        cli_pkg.cli.commands.pop("boom-db")
    assert r.exit_code == 1
    assert "error: state database: disk I/O error; run `vmsandbox doctor`" in r.output and "Traceback" not in r.output


def test_other_errors_are_not_swallowed():
    from click.testing import CliRunner

    @click.command("boom-other")
    def boom():
        raise ValueError("a bug")
    cli_pkg.cli.add_command(boom)
    try:
        r = CliRunner().invoke(cli_pkg.cli, ["boom-other"])
    finally:
        cli_pkg.cli.commands.pop("boom-other")
    assert isinstance(r.exception, ValueError)
