"""CLI for health and metrics: ``vmsandbox health NAME``, ``vmsandbox top`` (a live table of all
sandboxes) and ``vmsandbox metrics serve`` (Prometheus exposition, on loopback only).

The CLI core runs without a watchdog thread; ``top`` and ``metrics serve`` start their own on it
(``vmsandbox serve`` is the long-running service that enforces limits: cli/service_cmds.py).
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

import click

from ._context import add_row, get_core, out, plain_rows, print_json, safe_table, table

_COLUMNS = ["NAME", "STATE", "HEALTH", "CPU %", "MEMORY", "DISK", "NET RX/TX", "SSH", "UPTIME", "ALERTS"]


@click.command("health")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the health as JSON.")
@click.pass_context
def health(ctx: click.Context, name: str, as_json: bool) -> None:
    """Status, metrics, alerts and recommendations of one sandbox."""
    h = get_core(ctx).get_health_status(name)
    if as_json:
        print_json(h.to_dict())
        return
    m = h.metrics
    rows = [["status", h.status.value], ["state", m.state], ["cpu", _pct(m.cpu_percent)],
            ["memory", _of(m.memory_used, m.memory_total)], ["disk (overlay)", _of(m.disk_used, m.disk_limit)],
            ["disk (guest /)", _of(m.guest_disk_used, m.guest_disk_total)],
            ["network rx / tx", f"{_size(m.net_rx)} / {_size(m.net_tx)}"], ["ssh", _ssh(m.ssh_ok)],
            ["uptime", _duration(m.uptime)]]
    rows += [[f"alert ({a.level})", f"{a.kind}: {a.message}"] for a in h.alerts]
    rows += [["recommendation", r] for r in h.recommendations]
    table(["", ""], rows, title=f"{h.sandbox}: {h.status.value}")


@click.command("top")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--interval", type=float, default=None, help="Seconds between frames (default: monitoring.interval_seconds).")
@click.pass_context
def top(ctx: click.Context, once: bool, interval: Optional[float]) -> None:
    """A live table of every sandbox's health (Ctrl-C to quit).

    Without a terminal it prints a frame of plain rows every interval (like `top -b`)."""
    from rich.live import Live
    core = get_core(ctx)
    if once:
        frame = [core.get_health_status(i.id) for i in core.list_sandboxes()]
        if out.is_terminal:
            out.print(_top_table(frame))
        else:
            plain_rows(_COLUMNS, [_top_row(h) for h in frame], _top_title())
        return
    wd = _start_watchdog(core)
    period = interval or core.config.monitoring.interval_seconds
    if not out.is_terminal:
        try:
            _batch_frames(core, wd, period)
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        finally:
            wd.stop()
        return
    try:
        with Live(_top_table([]), console=out, auto_refresh=False) as live:
            while True:
                snap = wd.snapshot()
                live.update(_top_table(snap[i.id] for i in core.list_sandboxes() if i.id in snap), refresh=True)
                time.sleep(period)
    except KeyboardInterrupt:
        pass
    finally:
        wd.stop()


@click.group("metrics")
def metrics() -> None:
    """Export sandbox metrics."""


@metrics.command("serve")
@click.option("--port", type=int, default=9464, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback only.")
@click.pass_context
def serve(ctx: click.Context, port: int, host: str) -> None:
    """Serve Prometheus metrics of every sandbox at http://HOST:PORT/metrics (Ctrl-C to stop)."""
    from ..metrics import serve_metrics
    core = get_core(ctx)
    wd = _start_watchdog(core)
    server = serve_metrics(wd, host, port)
    click.echo(f"serving http://{host}:{port}/metrics (Ctrl-C to stop)", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        wd.stop()


def _start_watchdog(core):
    return core.start_watchdog()


def _batch_frames(core, wd, period: float) -> None:
    """Frames of plain rows for a pipe: the first within a second, not one interval later."""
    from ..watchdog import ON_DEMAND_CPU_WINDOW
    deadline = time.monotonic() + period + 5
    while wd.rounds < 1 and time.monotonic() < deadline:     # the thread's first round, then
        time.sleep(0.05)
    time.sleep(ON_DEMAND_CPU_WINDOW)
    wd.sample()                                              # a second one now: CPU % needs two
    while True:
        snap = wd.snapshot()
        plain_rows(_COLUMNS, [_top_row(snap[i.id]) for i in core.list_sandboxes() if i.id in snap],
                   _top_title())
        click.echo("")
        sys.stdout.flush()
        time.sleep(period)


def _top_title() -> str:
    return f"vmsandbox top  {time.strftime('%H:%M:%S')}"


def _top_row(h, colour: bool = False) -> list:
    """One row of ``top``: escaped text cells (``_context.literal``); the status coloured on a terminal."""
    from rich.text import Text
    m = h.metrics
    status = h.status.value
    if colour:
        status = Text(status, style=_COLOUR[status])
    return [h.sandbox, m.state, status, _pct(m.cpu_percent), _of(m.memory_used, m.memory_total),
            _of(m.disk_used, m.disk_limit), f"{_size(m.net_rx)}/{_size(m.net_tx)}", _ssh(m.ssh_ok),
            _duration(m.uptime), ", ".join(a.kind for a in h.alerts)]


_COLOUR = {"HEALTHY": "green", "DEGRADED": "yellow", "UNHEALTHY": "red"}


def _top_table(healths: Iterable):
    t = safe_table(_COLUMNS, title=_top_title())
    for h in healths:
        add_row(t, _top_row(h, colour=True))
    return t


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}%"


def _size(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}{unit}"
    return f"{int(n)}B"


def _of(used: Optional[float], total: Optional[float]) -> str:
    if used is None:
        return "-"
    return f"{_size(used)} / {_size(total)} ({100 * used / total:.0f}%)" if total else _size(used)


def _ssh(ok: Optional[bool]) -> str:
    return "-" if ok is None else ("ok" if ok else "down")


def _duration(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


COMMANDS = [health, top, metrics]
