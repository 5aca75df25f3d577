"""CLI for ansible: ``vmsandbox provision``, ``vmsandbox inventory`` (an ansible dynamic inventory,
also installed as the executable ``vmsandbox-inventory`` for ``ansible -i``) and ``vmsandbox label``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ._context import app, console, get_core, print_json


@click.command("provision")
@click.argument("name")
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--snapshot", "snapshot", metavar="NAME", help="Snapshot the sandbox under NAME when the playbook succeeds.")
@click.option("-e", "--extra-vars", "extra_vars", multiple=True, metavar="KEY=VALUE",
              help="A variable for the playbook (repeatable).")
@click.option("--timeout", type=float, help="Give up (and roll back) after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (ansible's output goes to stderr).")
@click.pass_context
def provision_cmd(ctx, name, playbook, snapshot, extra_vars, timeout, as_json):
    """Run an ansible PLAYBOOK against sandbox NAME; snapshot the result with --snapshot.

    A snapshot is taken first; if the playbook fails the sandbox is rolled back to it and the
    failed task is named (exit 1)."""
    from ..provision import provision
    variables = {}
    for item in extra_vars:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--extra-vars {item!r} is not KEY=VALUE")
        variables[key] = value

    def show(line: str) -> None:
        click.echo(line, err=as_json)
    result = provision(get_core(ctx), name, playbook, snapshot=snapshot, extra_vars=variables or None,
                       output=show, timeout=timeout, config_path=app(ctx).config_path)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(f"provisioned {result.sandbox} in {result.duration:.1f} s"
                      + (f"; snapshot {snapshot!r} ({result.snapshot})" if snapshot else ""))


@click.command("inventory")
@click.option("--list", "list_", is_flag=True, help="Every sandbox, grouped (the default).")
@click.option("--host", metavar="NAME", help="One sandbox's variables.")
@click.pass_context
def inventory_cmd(ctx, list_, host):
    """An ansible dynamic inventory of the sandboxes (groups box_*, label_*_*, state_*).

    `ansible -i vmsandbox-inventory all -m ping` uses it; set VMSANDBOX_CONFIG or
    VMSANDBOX_STATE_DIR to choose the sandboxes. The hosts are reached through
    `vmsandbox ssh-proxy`, so the inventory stays right after rollbacks and restarts."""
    from ..inventory import build_inventory
    core = get_core(ctx)
    if host:
        doc = build_inventory(core, app(ctx).config_path, names=[host])
        click.echo(json.dumps(doc["_meta"]["hostvars"].get(host, {}), indent=2))
        return
    click.echo(json.dumps(build_inventory(core, app(ctx).config_path), indent=2))


@click.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the labels as JSON.")
@click.pass_context
def label_cmd(ctx, name, labels, as_json):
    """Show or change labels of sandbox NAME: KEY=VALUE sets, KEY- removes.

    The inventory groups sandboxes by label (label_KEY_VALUE)."""
    from ..inventory import labels_of, parse_labels, set_labels
    core = get_core(ctx)
    if labels:
        sets, removes = parse_labels(labels)
        current = set_labels(core, name, sets, removes)
    else:
        current = labels_of(core.get(name))
    if as_json:
        print_json(current)
    else:
        for key, value in sorted(current.items()):
            click.echo(f"{key}={value}")


def inventory_main() -> None:
    """The ``vmsandbox-inventory`` executable: ``vmsandbox inventory`` for ``ansible -i``."""
    from . import cli
    cli(["inventory", *sys.argv[1:]], prog_name="vmsandbox-inventory")


COMMANDS = [provision_cmd, inventory_cmd, label_cmd]
