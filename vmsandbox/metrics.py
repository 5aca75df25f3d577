"""Prometheus exposition of the watchdog's latest health of every sandbox, served on loopback only
(used by ``vmsandbox serve`` and ``vmsandbox metrics serve``)."""
from __future__ import annotations

from .exceptions import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        from .health import HealthStatus
        for h in snap:
            for s in HealthStatus:
                status.add_metric([h.sandbox, s.value], float(h.status is s))
            for a in h.alerts:
                alerts.add_metric([h.sandbox, a.kind, a.level], 1.0)
        yield status
        yield alerts
        yield from self._standbys()
        for families, cls in ((self.GAUGES, GaugeMetricFamily), (self.COUNTERS, CounterMetricFamily)):
            for name, doc, get in families:
                fam = cls(name, doc, labels=["sandbox"])
                for h in snap:
                    v = get(h.metrics)
                    if v is not None:
                        fam.add_metric([h.sandbox], float(v))
                yield fam


    def _standbys(self):
        """Warm standbys per snapshot, kind and state, and the guest memory they hold (their cost)."""
        from prometheus_client.core import GaugeMetricFamily
        manager = getattr(getattr(self.watchdog, "core", None), "standbys", None)
        if manager is None:
            return
        count = GaugeMetricFamily("vmsandbox_standbys", "Warm standbys (paused guests restored from a snapshot)",
                                  labels=["snapshot", "kind", "state"])
        memory = GaugeMetricFamily("vmsandbox_standby_memory_bytes", "Guest memory held by warm standbys",
                                   labels=["snapshot", "kind"])
        per: dict = {}
        for s in manager.listing():
            key = (s["snapshot_id"], s["kind"])
            n = per.setdefault(key, {"ready": 0, "starting": 0, "memory": 0})
            n[s["state"]] += 1
            n["memory"] += s["memory_bytes"]
        for (snap, kind), n in sorted(per.items()):
            for state in ("ready", "starting"):
                count.add_metric([snap, kind, state], float(n[state]))
            memory.add_metric([snap, kind], float(n["memory"]))
        yield count
        yield memory


def serve_metrics(watchdog, host: str = "127.0.0.1", port: int = 9464):
    """Serve ``/metrics`` at http://host:port in a thread; returns the server (``shutdown()`` stops it).
    Raises ConfigError for a non-loopback host or a port that is taken."""
    if host not in LOOPBACK:
        raise ConfigError(f"{host!r} is not a loopback address (use 127.0.0.1)", "--host")
    from prometheus_client import CollectorRegistry, start_http_server
    registry = CollectorRegistry()
    registry.register(SandboxCollector(watchdog))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", "metrics port") from exc
    return server


__all__ = ["SandboxCollector", "serve_metrics", "LOOPBACK"]
