"""The demo (the README's main job): one sandbox through its whole life, narrated."""
from __future__ import annotations

import time

import click

from ..exceptions import SecurityError
from .._safe_text import visible
from ._context import say


def _step(title: str) -> None:
    click.secho(visible(f"==> {title}"), bold=True)


def run_demo(core, box: str | None = None, keep: bool = False) -> None:
    name = f"demo-{int(time.time()) % 100000}"
    cfg = {"resource_limits": {"cpu": "1", "memory": "256M", "disk": "1G"}}
    if box:
        cfg["box"] = box
    _step(f"create sandbox {name}")
    t = time.monotonic()
    sid = core.create_sandbox(name, cfg, progress=_stage_printer())
    say(f"    up in {time.monotonic() - t:.1f} s (accelerator: {core.provider.accelerator()[0]})")
    try:
        for cmd in ("uname -a", "echo hello from $(hostname); id -u", "df -h / | tail -1"):
            _step(f"exec: {cmd}")
            r = core.execute(sid, cmd)
            say(f"    exit {r.exit_code} in {r.duration * 1000:.0f} ms")
            for line in r.stdout.rstrip().splitlines():
                say(f"    | {line}")
        _step("policy: try `rm -rf /`")
        try:
            core.execute(sid, "rm -rf /")
        except SecurityError as exc:
            say(f"    {exc}")
        if hasattr(core, "create_snapshot"):
            _demo_snapshot(core, sid)
    finally:
        if keep:
            say(f"kept {name}; destroy it with `vmsandbox destroy {name}`")
        else:
            _step(f"destroy {name}")
            t = time.monotonic()
            core.destroy(sid)
            say(f"    gone in {time.monotonic() - t:.1f} s")


def _stage_printer():
    """Print each stage of a long operation once (not every progress tick)."""
    last = [""]

    def progress(message: str) -> None:
        stage = message.split("(")[0].strip()
        if stage != last[0]:
            last[0] = stage
            say(f"    {stage}")
    return progress


def _demo_snapshot(core, sid: str) -> None:
    _step("write /work/state.txt, snapshot (disk and memory), then damage it")
    core.execute(sid, "mkdir -p /work && echo precious > /work/state.txt && echo in-memory > /tmp/note")
    t = time.monotonic()
    snap = core.create_snapshot(sid, "before-risky-operation")
    say(f"    snapshot {snap} in {time.monotonic() - t:.2f} s")
    core.execute(sid, "rm -f /work/state.txt /tmp/note; echo damaged > /work/other.txt")
    say(f"    after damage: /work holds {core.execute(sid, 'ls /work').stdout.split()}")
    _step("roll back")
    t = time.monotonic()
    core.rollback(sid, snap)
    r = core.execute(sid, "cat /work/state.txt /tmp/note; ls /work")
    say(f"    rolled back and ran a command in {time.monotonic() - t:.2f} s: {r.stdout.split()}")
