"""CLI commands for sandboxes: create, list, show, exec, cp, ssh, ssh-config, ssh-proxy, start/stop/pause/resume,
throttle/unthrottle, emergency-shutdown, destroy, gc, doctor, audit, config show, demo."""
from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import click

from ._context import get_core, app, literal, print_json, say, status as status_line, table

COMMANDS: list[click.Command] = []


def command(*args, **kwargs):
    def deco(fn):
        cmd = click.command(*args, **kwargs)(fn)
        COMMANDS.append(cmd)
        return cmd
    return deco


def _progress_runner(json_out: bool):
    """A progress callback shown as a live status line to people, silent for machines."""
    if json_out or not sys.stderr.isatty():
        return None, None
    status = status_line("starting")
    start = time.monotonic()

    def progress(msg: str) -> None:
        status.update(literal(f"{msg}  [{time.monotonic() - start:.1f} s]", max_line=200))
    return status, progress


def _limits(cpu, memory, disk) -> dict:
    return {k: v for k, v in (("cpu", cpu), ("memory", memory), ("disk", disk)) if v is not None}


@command("create")
@click.argument("name")
@click.option("--box", default=None, help="Box to boot (default: sandbox.default_box).")
@click.option("--cpu", default=None, help="vCPUs, e.g. 1, 2 or 0.5 (a quota).")
@click.option("--memory", default=None, help="Memory, e.g. 256M, 1G.")
@click.option("--disk", default=None, help="Virtual disk size, e.g. 2G.")
@click.option("--network", "network_mode", type=click.Choice(["none", "nat", "bridge"]), default=None,
              help="none: no network but the SSH forward (default); nat: outbound allowed.")
@click.option("--persistent", is_flag=True, help="Keep until destroyed (gc leaves it alone).")
@click.option("--clone-from", default=None, help="Snapshot to clone (a linked clone, running from that point).")
@click.option("--container", is_flag=True, help="A container (shares the host kernel; see docs/security.md), not a VM.")
@click.option("--image", default=None, help="Container image (default: vmsandbox/tiny); implies --container.")
@click.option("--ttl", "ttl_seconds", type=float, default=None,
              help="Seconds idle before gc (run by `vmsandbox serve`) destroys it (default: sandbox.ttl_seconds).")
@click.option("--provider", default=None, help="VM provider for this sandbox, e.g. vagrant (default: sandbox.provider).")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def create(ctx, name, box, cpu, memory, disk, network_mode, persistent, clone_from, container, image, ttl_seconds,
           provider,
           json_out):
    """Create and boot a sandbox; returns when a command can run in it."""
    cfg: dict = {}
    if box:
        cfg["box"] = box
    if provider:
        cfg["provider"] = provider
    if container or image:
        cfg["isolation_type"] = "container"
    if image:
        cfg["image"] = image
    if _limits(cpu, memory, disk):
        cfg["resource_limits"] = _limits(cpu, memory, disk)
    if network_mode:
        cfg["network_mode"] = network_mode
    if persistent:
        cfg["persistent"] = True
    if clone_from:
        cfg["clone_from"] = clone_from
    if ttl_seconds is not None:
        cfg["ttl_seconds"] = ttl_seconds
    core = get_core(ctx)
    status, progress = _progress_runner(json_out)
    start = time.monotonic()
    if status:
        with status:
            sid = core.create_sandbox(name, cfg, progress=progress)
    else:
        sid = core.create_sandbox(name, cfg)
    info = core.get(sid)
    if json_out:
        print_json({**info.to_dict(), "seconds": round(time.monotonic() - start, 3)})
    else:
        endpoint = core.sessions.endpoint(info)
        where = (f"ssh on 127.0.0.1:{endpoint.port}" if hasattr(endpoint, "port")
                 else f"{info.provider} machine {info.domain}")
        say(f"created {info.name} ({info.id}) in {time.monotonic() - start:.1f} s; {where}")
    from ..service import service_status
    if not service_status(core.state_dir).running:
        click.echo("note: no `vmsandbox serve` runs for this state directory: resource limits and ttl "
                   "will not be enforced (see docs/operations.md)", err=True)


@command("list")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def list_cmd(ctx, json_out):
    """List sandboxes."""
    items = get_core(ctx).list_sandboxes()
    if json_out:
        print_json([i.to_dict() for i in items])
        return
    standbys = get_core(ctx).standbys.summary()
    table(["NAME", "ID", "STATE", "BOX", "CPU", "MEMORY", "DISK", "SSH", "CREATED", "NOTE"],
          [[i.name, i.id, i.state.value, i.box, i.cpu, i.memory, i.disk, f"127.0.0.1:{i.ssh_port}",
            datetime.fromtimestamp(i.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            "; ".join(filter(None, [_note(i), standbys.get(i.id)]))] for i in items])
    from ..service import service_line
    click.echo(service_line(app(ctx).config), err=True)


def _note(info) -> str:
    """Why a sandbox is not simply running: paused/stopped/broken reason, CPU throttle."""
    parts = [info.reason] if info.reason else []
    if info.throttled:
        why = info.throttle_reason
        parts.append(f"throttled to {info.throttled:g} CPU per vCPU" + (f" ({why})" if why else ""))
    return "; ".join(parts)


@command("show")
@click.argument("name")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def show(ctx, name, json_out):
    """Show one sandbox."""
    core = get_core(ctx)
    info = core.get(name)
    standbys = [s for s in core.standbys.listing() if s["sandbox_id"] == info.id]
    if json_out:
        print_json({**info.to_dict(), "standbys": standbys})
    else:
        for k, v in info.to_dict().items():
            say(f"{k:14} {v}")
        if _note(info):
            say(f"{'why':14} {_note(info)}")
        for s in standbys:           # warm standbys of its snapshots: what they hold and where
            say(f"{'standby':14} {s['id']} {s['kind']} of {s['snapshot']} ({s['state']}), {s['domain']}, "
                f"127.0.0.1:{s['ssh_port']}, {s['memory_bytes'] >> 20} MiB")


@command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=float, default=None, help="Seconds before the command is killed.")
@click.option("-w", "--workdir", default=None, help="Working directory in the guest.")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("-i", "--stdin", "use_stdin", flag_value=True, default=None,
              help="Feed stdin to the command even from a terminal (default: when stdin is not a terminal).")
@click.option("-n", "--no-stdin", "use_stdin", flag_value=False, help="Never read stdin (like ssh -n).")
@click.option("--approve", is_flag=True, help="Approve a command the policy rates HIGH.")
@click.option("--json", "json_out", is_flag=True, help="Print a JSON result instead of streaming output.")
@click.pass_context
def exec_cmd(ctx, name, command, timeout, workdir, env, use_stdin, approve, json_out):
    """Run COMMAND in sandbox NAME (after `--`); exits with the command's exit code (124 on timeout).

    One argument is a shell command line; several are quoted and joined. As with ssh, stdin is
    passed to the command when it is not a terminal (read to its end before the command starts)."""
    line = command[0] if len(command) == 1 else shlex.join(command)
    envd = {}
    for item in env:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        k, v = item.split("=", 1)
        envd[k] = v
    if use_stdin is None:
        use_stdin = sys.stdin is not None and not sys.stdin.isatty()
    stdin = sys.stdin.buffer.read() if use_stdin and sys.stdin is not None else None
    core = get_core(ctx)
    stream = {} if json_out else {"on_stdout": _writer(sys.stdout), "on_stderr": _writer(sys.stderr)}
    r = core.execute(name, line, timeout=timeout, working_dir=workdir, env=envd or None, stdin=stdin,
                     approve=approve, **stream)
    if json_out:
        print_json({"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code, "duration": r.duration,
                    "timed_out": r.timed_out, "truncated": r.truncated})
    else:
        if r.truncated:
            cap = app(ctx).config.ssh.max_output
            click.echo(f"vmsandbox: output past ssh.max_output ({cap} per stream) was dropped, not shown "
                       "and not kept; the command itself was not stopped", err=True)
        if r.timed_out:
            click.echo(f"vmsandbox: command timed out after {r.duration:.1f} s and was killed", err=True)
    ctx.exit(124 if r.timed_out else (r.exit_code or 0))


def _writer(stream):
    buf = stream.buffer

    def write(chunk: bytes) -> None:
        buf.write(chunk)
        buf.flush()
    return write


@command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory and everything in it.")
@click.option("--max-size", default=None, help="Refuse to copy more than this (e.g. 100M; default: ssh.max_copy).")
@click.pass_context
def cp(ctx, src, dst, recursive, max_size):
    """Copy a file in or out: `cp FILE NAME:/path` or `cp NAME:/path FILE` (into DIR when it is one).

    What arrives appears whole or not at all: an interrupted or refused copy (Ctrl-C, SIGTERM,
    --max-size) leaves no partial file. Permission bits are kept."""
    from ..config import parse_size
    cap = parse_size(max_size, "--max-size") if max_size is not None else None
    core = get_core(ctx)
    with _terminate_as_exception():
        if ":" in dst and ":" not in src:
            name, remote = dst.split(":", 1)
            core.put_file(name, src, remote, max_size=cap, recursive=recursive)
        elif ":" in src and ":" not in dst:
            name, remote = src.split(":", 1)
            core.get_file(name, remote, dst, max_size=cap, recursive=recursive)
        else:
            raise click.UsageError("exactly one of SRC and DST must be NAME:/path")


@contextmanager
def _terminate_as_exception():
    """SIGTERM and SIGHUP raise SystemExit here, so clean-up code (``finally``) runs as on Ctrl-C."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _client_settings(ctx, name):
    from ..client_config import client_settings
    return client_settings(get_core(ctx), name, app(ctx).config_path)


@command("ssh-config")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def ssh_config(ctx, names):
    """Print OpenSSH config blocks for sandboxes (`Host NAME vmsandbox-NAME`).

    They reach each sandbox through `vmsandbox ssh-proxy`, so they keep working across rollbacks
    and restarts: save them once (`ssh -F FILE NAME`, scp, sftp, rsync -e 'ssh -F FILE')."""
    click.echo("\n".join(_client_settings(ctx, n).config_block() for n in names), nl=False)


@command("ssh-proxy")
@click.argument("name")
@click.option("--wait", type=float, default=60.0, show_default=True,
              help="Seconds to wait for a guest that is being created or rolled back.")
@click.option("--box-dir", default=None, help="Box directory holding the pinned host key (default: from the config).")
@click.pass_context
def ssh_proxy(ctx, name, wait, box_dir):
    """Connect stdin/stdout to NAME's current SSH endpoint (an OpenSSH ProxyCommand).

    The port is looked up in the state store at each connection, so it follows rollbacks and restarts."""
    from ..client_config import run_proxy
    run_proxy(app(ctx).config, name, wait, Path(box_dir) if box_dir else None)


@command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def ssh(ctx, name, args):
    """Open a shell in NAME through the system ssh client; anything after NAME is the remote command."""
    core = get_core(ctx)
    info, endpoint = core.ssh_target(name, "ssh")
    if not hasattr(endpoint, "port"):
        raise click.ClickException(f"{name} is a container, not reached by SSH: use `vmsandbox exec {name} -- CMD` "
                                   f"or `docker -H {getattr(endpoint, 'base_url', '?')} exec -it {info.domain} sh`")
    from ..perms import write_private
    settings = _client_settings(ctx, name)
    cfg = core.layout.sandbox_dir(info.id) / "ssh_config"
    write_private(cfg, settings.config_block())
    os.execvp("ssh", ["ssh", "-F", str(cfg), info.name, *(["--", *args] if args else [])])


def _power_command(op: str, help_text: str):
    @command(op, help=help_text)
    @click.argument("name")
    @click.pass_context
    def _cmd(ctx, name):
        info = getattr(get_core(ctx), op)(name)
        say(f"{info.name}: {info.state.value}")
    return _cmd


for _op, _help in (("start", "Boot a stopped sandbox and wait for SSH."),
                   ("stop", "Power a sandbox off (disk kept)."),
                   ("pause", "Freeze a sandbox's vCPUs."),
                   ("resume", "Unfreeze a paused sandbox.")):
    _power_command(_op, _help)


@command("throttle")
@click.argument("name")
@click.option("--fraction", type=click.FloatRange(0.01, 1.0), default=0.25, show_default=True,
              help="CPU share each vCPU may use.")
@click.option("--reason", default="requested by operator", show_default=True)
@click.pass_context
def throttle(ctx, name, fraction, reason):
    """Cap each vCPU of NAME at FRACTION of a CPU (`unthrottle` lifts it)."""
    info = get_core(ctx).throttle(name, fraction, reason=reason)
    click.echo(f"{info.name}: throttled to {fraction:g} CPU per vCPU")


@command("unthrottle")
@click.argument("name")
@click.pass_context
def unthrottle(ctx, name):
    """Lift a CPU throttle (back to the sandbox's own CPU limit)."""
    info = get_core(ctx).unthrottle(name)
    click.echo(f"{info.name}: not throttled")


@command("emergency-shutdown")
@click.argument("name")
@click.option("--reason", default="emergency shutdown requested by operator", show_default=True)
@click.pass_context
def emergency_shutdown(ctx, name, reason):
    """Pull the plug on NAME now; disk, console and audit logs are kept for forensics."""
    info = get_core(ctx).emergency_shutdown(name, reason)
    click.echo(f"{info.name}: {info.state.value} ({reason})")


@command("destroy")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def destroy(ctx, names):
    """Destroy sandboxes: domain, disks, logs and record."""
    core = get_core(ctx)
    for n in names:
        core.destroy(n)
        say(f"destroyed {n}")


@command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def gc(ctx, dry_run, json_out):
    """Destroy idle non-persistent sandboxes and remove orphaned domains and files."""
    done = get_core(ctx).gc(dry_run=dry_run)
    if json_out:
        print_json(done)
    else:
        for line in done:
            say(("would remove " if dry_run else "removed ") + line)
        if not done:
            click.echo("nothing to remove")


@command("doctor")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def doctor(ctx, json_out):
    """Check libvirtd, QEMU, the accelerator, boxes, disk space and whether `vmsandbox serve` runs."""
    from ..providers import ProviderCheck
    from ..service import service_line, service_status
    core = get_core(ctx)
    checks = core.doctor()
    running = service_status(core.state_dir).running
    checks.append(ProviderCheck("service", running, service_line(core.config).split(": ", 1)[1],
                                "" if running else "vmsandbox serve (docs/operations.md)"))
    if json_out:
        print_json([c.__dict__ for c in checks])
    else:
        table(["CHECK", "OK", "DETAIL", "FIX"], [[c.name, "yes" if c.ok else "NO", c.detail, c.fix] for c in checks])
    ctx.exit(0 if all(c.ok for c in checks if c.name != "service") else 1)   # no service: reported, not a failure


@command("audit")
@click.option("--sandbox", default=None, help="Only this sandbox's records.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def audit(ctx, sandbox, limit, json_out):
    """Read the audit log (every operation and policy verdict)."""
    rows = get_core(ctx).audit_log(sandbox, limit)
    if json_out:
        print_json(rows)
        return
    table(["TIME", "SANDBOX", "OPERATION", "OUTCOME", "DETAIL"],
          [[datetime.fromtimestamp(r["ts"]).strftime("%H:%M:%S"), r["sandbox"], r["operation"], r["outcome"],
            ", ".join(f"{k}={v}" for k, v in r["detail"].items())] for r in rows])


@click.group("config")
def config_group():
    """Inspect configuration."""


@config_group.command("show")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def config_show(ctx, json_out):
    """Print the effective configuration (defaults merged with the file)."""
    data = app(ctx).config.to_dict()
    import yaml
    if json_out:
        print_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


COMMANDS.append(config_group)


@command("demo")
@click.option("--box", default=None)
@click.option("--keep", is_flag=True, help="Do not destroy the sandbox at the end.")
@click.pass_context
def demo(ctx, box, keep):
    """The main job: create a sandbox, run commands, snapshot, roll back, destroy."""
    from .demo import run_demo
    run_demo(get_core(ctx), box=box, keep=keep)
