"""CLI for health and metrics: ``vmsandbox health NAME``, ``vmsandbox top`` (a live table of all
sandboxes) and ``vmsandbox metrics serve`` (Prometheus exposition, on loopback only).

The CLI core runs without a watchdog thread; ``top`` and ``metrics serve`` start their own on it.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

import click

from ..exceptions import ConfigError
from ._context import add_row, get_core, out, print_json, safe_table, table

LOOPBACK = ("127.0.0.1", "localhost", "::1")
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
    """A live table of every sandbox's health (Ctrl-C to quit)."""
    from rich.live import Live
    core = get_core(ctx)
    if once:
        out.print(_top_table(core.get_health_status(i.id) for i in core.list_sandboxes()))
        return
    wd = _start_watchdog(core)
    period = interval or core.config.monitoring.interval_seconds
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
    if host not in LOOPBACK:
        raise ConfigError(f"{host!r} is not a loopback address (use 127.0.0.1)", "--host")
    from prometheus_client import CollectorRegistry, start_http_server
    core = get_core(ctx)
    wd = _start_watchdog(core)
    registry = CollectorRegistry()
    registry.register(SandboxCollector(wd))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    click.echo(f"serving http://{host}:{port}/metrics (Ctrl-C to stop)", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        wd.stop()


class SandboxCollector:
    """Prometheus collector over the watchdog's latest health of every sandbox."""

    GAUGES = (
        ("vmsandbox_cpu_percent", "CPU use, percent of the sandbox's CPU allotment", lambda m: m.cpu_percent),
        ("vmsandbox_memory_used_bytes", "Guest memory in use (balloon statistics)", lambda m: m.memory_used),
        ("vmsandbox_memory_total_bytes", "Guest memory", lambda m: m.memory_total),
        ("vmsandbox_disk_used_bytes", "Host bytes of the sandbox's own disk overlay", lambda m: m.disk_used),
        ("vmsandbox_disk_limit_bytes", "The sandbox's disk limit", lambda m: m.disk_limit),
        ("vmsandbox_guest_disk_used_bytes", "Used bytes of the guest's root filesystem", lambda m: m.guest_disk_used),
        ("vmsandbox_uptime_seconds", "Guest uptime", lambda m: m.uptime),
        ("vmsandbox_ssh_up", "1 when the last in-guest probe over SSH worked",
         lambda m: None if m.ssh_ok is None else float(m.ssh_ok)),
    )
    COUNTERS = (
        ("vmsandbox_network_receive_bytes", "Bytes received by the guest (all interfaces but lo)", lambda m: m.net_rx),
        ("vmsandbox_network_transmit_bytes", "Bytes sent by the guest (all interfaces but lo)", lambda m: m.net_tx),
    )

    def __init__(self, watchdog) -> None:
        self.watchdog = watchdog

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        snap = list(self.watchdog.snapshot().values())
        status = GaugeMetricFamily("vmsandbox_health_status", "1 for the sandbox's current health status",
                                   labels=["sandbox", "status"])
        alerts = GaugeMetricFamily("vmsandbox_alerts", "Active alerts", labels=["sandbox", "kind", "level"])
        from ..health import HealthStatus
        for h in snap:
            for s in HealthStatus:
                status.add_metric([h.sandbox, s.value], float(h.status is s))
            for a in h.alerts:
                alerts.add_metric([h.sandbox, a.kind, a.level], 1.0)
        yield status
        yield alerts
        for families, cls in ((self.GAUGES, GaugeMetricFamily), (self.COUNTERS, CounterMetricFamily)):
            for name, doc, get in families:
                fam = cls(name, doc, labels=["sandbox"])
                for h in snap:
                    v = get(h.metrics)
                    if v is not None:
                        fam.add_metric([h.sandbox], float(v))
                yield fam


def _start_watchdog(core):
    return core.start_watchdog()


def _top_table(healths: Iterable):
    from rich.text import Text
    t = safe_table(_COLUMNS, title=f"vmsandbox top  {time.strftime('%H:%M:%S')}")
    colour = {"HEALTHY": "green", "DEGRADED": "yellow", "UNHEALTHY": "red"}
    for h in healths:
        m = h.metrics
        add_row(t, [h.sandbox, m.state, Text(h.status.value, style=colour[h.status.value]), _pct(m.cpu_percent),
                  _of(m.memory_used, m.memory_total), _of(m.disk_used, m.disk_limit),
                  f"{_size(m.net_rx)}/{_size(m.net_tx)}", _ssh(m.ssh_ok), _duration(m.uptime),
                  ", ".join(a.kind for a in h.alerts)])
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
