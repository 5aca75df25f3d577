"""``vmsandbox box ...``: build, list, import and remove boxes (a thin layer over ``BoxStore``)."""
from __future__ import annotations

import datetime
from pathlib import Path

import click

from ..exceptions import SandboxError
from ._context import console, get_box_store, get_core, literal, print_json, say, status, table


@click.group("box")
def box() -> None:
    """Guest images (boxes) that sandboxes boot from."""


@box.command("build")
@click.argument("recipe", default="tiny")
@click.option("--name", help="Store the box under this name (default: the recipe's name).")
@click.option("--force", is_flag=True, help="Replace a box of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the new box as JSON.")
@click.pass_context
def build_cmd(ctx: click.Context, recipe: str, name: str | None, force: bool, as_json: bool) -> None:
    """Build a box from a recipe in boxes/ (default: tiny)."""
    store = get_box_store(ctx)
    if force:
        get_core(ctx).require_box_unused(name or recipe)
    with status(f"building box from recipe {recipe!r}") as line:
        def progress(message: str) -> None:
            line.update(literal(f"{recipe}: {message}", max_line=200))
            console.print(literal(f"  {message}", max_line=2000))
        new_box = store.build(recipe, name=name, progress=progress, force=force)
        image = _container_image(new_box, progress)
    if as_json:
        print_json(new_box.to_dict())
    else:
        say(f"box {new_box.name!r} built at {new_box.path}" + (f"; container image {image}" if image else ""))


def _container_image(new_box, progress) -> str | None:
    """The same root tree as a container image ``vmsandbox/<box>``, when a Docker daemon answers
    (a missing daemon or SDK only skips it, and says so)."""
    try:
        from ..providers.docker import import_box
    except ImportError as exc:
        progress(f"no container image: the Docker SDK is not installed ({exc})")
        return None
    image = f"vmsandbox/{new_box.name}"
    try:
        progress(f"container image {image}")
        import_box(new_box, image)
        return image
    except SandboxError as exc:
        progress(f"no container image: {exc}")
        return None


@box.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the stored boxes."""
    boxes = get_box_store(ctx).list()
    if as_json:
        print_json([b.to_dict() for b in boxes])
        return
    rows = [[b.name, f"{b.virtual_size / (1 << 30):.1f}G", "kernel" if b.kernel else "disk",
             b.ssh_user, "pinned" if b.host_key else "first use", b.source,
             datetime.datetime.fromtimestamp(b.created_at).strftime("%Y-%m-%d %H:%M")] for b in boxes]
    table(["NAME", "SIZE", "BOOTS FROM", "SSH USER", "HOST KEY", "SOURCE", "CREATED"], rows,
          title=None if rows else "no boxes: run `vmsandbox box build tiny`")


@box.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name for the imported box.")
@click.option("--ssh-user", default="vagrant", show_default=True, help="User to log in as.")
@click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key for --ssh-user (default: Vagrant's insecure key, if installed).")
@click.option("--force", is_flag=True, help="Replace a box of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the new box as JSON.")
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, name: str, ssh_user: str, ssh_key: Path | None,
               force: bool, as_json: bool) -> None:
    """Import a Vagrant libvirt .box file."""
    if force:
        get_core(ctx).require_box_unused(name)
    with status(f"importing {file.name}"):
        new_box = get_box_store(ctx).import_box(file, name, ssh_user=ssh_user, ssh_key=ssh_key, force=force)
    if as_json:
        print_json(new_box.to_dict())
    else:
        say(f"box {new_box.name!r} imported at {new_box.path}")


@box.command("export")
@click.argument("name")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .box file to write (what `vagrant box add` takes).")
@click.pass_context
def export_cmd(ctx: click.Context, name: str, output: Path) -> None:
    """Write a stored box as a Vagrant libvirt .box file."""
    with console.status(f"exporting box {name!r}"):
        path = get_box_store(ctx).export(name, output)
    click.echo(f"box {name!r} written to {path} (add it with `vagrant box add --name {name} {path}`)")


@box.command("remove")
@click.argument("name")
@click.pass_context
def remove_cmd(ctx: click.Context, name: str) -> None:
    """Delete a stored box (refused while sandboxes stand on it)."""
    get_core(ctx).remove_box(name)
    say(f"box {name!r} removed")


COMMANDS = [box]
