"""Health rules: one sample of a sandbox -> ``Health`` (status, alerts, recommendations).

Pure logic, no I/O: ``conditions`` says what is wrong in one sample, ``AlertTracker`` turns those
findings into alerts that are raised only after ``raise_after`` consecutive samples show the
condition and cleared only after ``clear_after`` consecutive samples without it (no flapping on
one noisy sample), and ``assess`` folds metrics and active alerts into a ``Health``.

Status: UNHEALTHY when the guest is gone, crashed, unreachable over SSH, held by a limit, or a
limit is breached (any ``critical`` alert); DEGRADED when a threshold of ``monitoring.alerts`` is
crossed (any ``warning`` alert); HEALTHY otherwise.
"""
from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

WARNING = "warning"
CRITICAL = "critical"


class HealthStatus(str, enum.Enum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Metrics:
    """One sample of a sandbox. ``None`` means not known (yet).

    cpu_percent is of the sandbox's CPU allotment (its ``cpu`` limit, or the throttle cap), so a
    guest pegged at its cap reads 100. memory_* are guest bytes from the balloon statistics,
    disk_used the host bytes of the sandbox's own overlay against disk_limit, guest_disk_* what
    ``df /`` says inside the guest, net_* byte counters of the guest's interfaces (not lo).
    """
    state: str                                # domain state: running | paused | shutoff | crashed | gone | unknown
    sampled_at: float                         # time.time()
    cpu_percent: Optional[float] = None
    cpu_used: Optional[float] = None          # CPUs busy (1.0 = one host CPU)
    memory_used: Optional[int] = None
    memory_total: Optional[int] = None
    disk_used: Optional[int] = None
    disk_limit: Optional[int] = None
    guest_disk_used: Optional[int] = None
    guest_disk_total: Optional[int] = None
    net_rx: Optional[int] = None
    net_tx: Optional[int] = None
    ssh_ok: Optional[bool] = None
    ssh_failures: int = 0                     # consecutive failed in-guest probes
    uptime: Optional[float] = None            # guest seconds since boot
    guest_sampled_at: Optional[float] = None
    error: str = ""                           # why the host-side sample failed, when it did

    @property
    def memory_percent(self) -> Optional[float]:
        return _percent(self.memory_used, self.memory_total)

    @property
    def disk_percent(self) -> Optional[float]:
        """The fuller of the overlay against its limit and the guest's root filesystem."""
        values = [p for p in (_percent(self.disk_used, self.disk_limit),
                              _percent(self.guest_disk_used, self.guest_disk_total)) if p is not None]
        return max(values) if values else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory_percent"] = _round(self.memory_percent)
        d["disk_percent"] = _round(self.disk_percent)
        return d


@dataclass(frozen=True)
class Alert:
    kind: str          # cpu | memory | disk | ssh | domain | limit | limit_cpu | limit_memory | limit_disk | sampling
    level: str         # warning | critical
    message: str
    since: float       # time.time() when it was raised

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Health:
    status: HealthStatus
    metrics: Metrics
    alerts: tuple[Alert, ...] = ()
    recommendations: tuple[str, ...] = ()
    sandbox: str = ""

    def to_dict(self) -> dict:
        return {"sandbox": self.sandbox, "status": self.status.value, "metrics": self.metrics.to_dict(),
                "alerts": [a.to_dict() for a in self.alerts], "recommendations": list(self.recommendations)}


@dataclass(frozen=True)
class Thresholds:
    """Percentages from ``monitoring.alerts``."""
    cpu: float = 80
    memory: float = 90
    disk: float = 90

    @classmethod
    def from_config(cls, alerts) -> "Thresholds":
        return cls(cpu=alerts.cpu_threshold, memory=alerts.memory_threshold, disk=alerts.disk_threshold)


@dataclass(frozen=True)
class Condition:
    """Something wrong in one sample. ``immediate`` conditions skip the raise hysteresis (they are
    facts, not noisy readings: a vanished domain, an SSH probe that failed twice in a row)."""
    kind: str
    level: str
    message: str
    recommendation: str
    immediate: bool = False


SSH_FAILURES_FOR_ALERT = 2


def conditions(m: Metrics, thresholds: Thresholds, held_reason: str = "",
               breaches: Iterable[tuple[str, str]] = (), should_run: bool = True) -> list[Condition]:
    """What is wrong in sample ``m``.

    ``held_reason``: why vmsandbox itself holds the sandbox paused/stopped ("limit: ..." after
    enforcement, or a reconcile reason such as "its domain is gone"); ``breaches``: (resource,
    message) pairs of limits exceeded in this sample; ``should_run``: the sandbox is recorded as
    running or paused, so a guest found off or gone died behind our back.
    """
    out: list[Condition] = []
    if m.error:
        out.append(Condition("sampling", CRITICAL, f"cannot sample the guest: {m.error}",
                             "check libvirtd (`vmsandbox doctor`)", immediate=True))
    if held_reason.startswith("limit:"):
        out.append(Condition("limit", CRITICAL, f"{m.state} because {held_reason[6:].strip()}",
                             "deal with the cause, then resume or start it (or roll back or destroy it)",
                             immediate=True))
    elif held_reason or (should_run and m.state in ("gone", "crashed", "shutoff")):
        what = held_reason or ("its domain is gone" if m.state == "gone" else f"the guest is {m.state}")
        out.append(Condition("domain", CRITICAL, f"the guest died or vanished: {what}",
                             "read its console log, then start or destroy it", immediate=True))
    if m.state == "running" and m.ssh_ok is False and m.ssh_failures >= SSH_FAILURES_FOR_ALERT:
        out.append(Condition("ssh", CRITICAL, f"SSH does not answer ({m.ssh_failures} probes failed)",
                             "read its console log; restart it if the guest hung", immediate=True))
    for resource, message in breaches:
        out.append(Condition(f"limit_{resource}", CRITICAL, message,
                             f"lower the sandbox's {resource} use or raise its {resource} limit"))
    if m.state != "running":
        return out
    if m.cpu_percent is not None and m.cpu_percent > thresholds.cpu:
        out.append(Condition("cpu", WARNING, f"CPU at {m.cpu_percent:.0f}% of its allotment (threshold {thresholds.cpu:g}%)",
                             "find the busy process (`top` in the guest) or give the sandbox more CPU"))
    mem = m.memory_percent
    if mem is not None and mem > thresholds.memory:
        out.append(Condition("memory", WARNING, f"memory at {mem:.0f}% (threshold {thresholds.memory:g}%)",
                             "free memory in the guest (files in tmpfs count) or give it more memory"))
    disk = m.disk_percent
    if disk is not None and disk > thresholds.disk:
        out.append(Condition("disk", WARNING, f"disk at {disk:.0f}% (threshold {thresholds.disk:g}%)",
                             "delete files in the guest or give it a larger disk"))
    return out


@dataclass
class _Pending:
    seen: int = 0          # consecutive samples with the condition
    missed: int = 0        # consecutive samples without it (while raised)


@dataclass
class AlertTracker:
    """Hysteresis for one sandbox: raise after ``raise_after`` consecutive samples with a condition,
    clear after ``clear_after`` consecutive samples without it. Not thread-safe (one per sandbox)."""
    raise_after: int = 2
    clear_after: int = 2
    active: dict[str, Alert] = field(default_factory=dict)
    _counts: dict[str, _Pending] = field(default_factory=dict)
    _recommend: dict[str, str] = field(default_factory=dict)

    def update(self, found: Iterable[Condition], now: float | None = None) -> tuple[list[Alert], list[Alert]]:
        """Feed one sample's conditions; returns (newly raised, newly cleared) alerts."""
        now = time.time() if now is None else now
        found = {c.kind: c for c in found}
        raised, cleared = [], []
        for kind, cond in found.items():
            count = self._counts.setdefault(kind, _Pending())
            count.seen += 1
            count.missed = 0
            self._recommend[kind] = cond.recommendation
            if kind in self.active:
                old = self.active[kind]
                self.active[kind] = Alert(kind, cond.level, cond.message, old.since)   # fresh numbers
            elif cond.immediate or count.seen >= self.raise_after:
                self.active[kind] = alert = Alert(kind, cond.level, cond.message, now)
                raised.append(alert)
        for kind in list(self._counts):
            if kind in found:
                continue
            count = self._counts[kind]
            count.seen = 0
            if kind not in self.active:
                del self._counts[kind]
                continue
            count.missed += 1
            if count.missed >= self.clear_after:
                cleared.append(self.active.pop(kind))
                del self._counts[kind]
        return raised, cleared

    def recommendations(self) -> list[str]:
        return [self._recommend[k] for k in sorted(self.active, key=_severity_order(self.active)) if k in self._recommend]


def assess(sandbox: str, metrics: Metrics, alerts: Iterable[Alert], recommendations: Iterable[str] = (),
           notes: Iterable[str] = ()) -> Health:
    """Fold metrics and active alerts into a ``Health``; ``notes`` are extra recommendations."""
    alerts = tuple(sorted(alerts, key=lambda a: (a.level != CRITICAL, a.since, a.kind)))
    if any(a.level == CRITICAL for a in alerts):
        status = HealthStatus.UNHEALTHY
    elif alerts:
        status = HealthStatus.DEGRADED
    else:
        status = HealthStatus.HEALTHY
    recs = tuple(dict.fromkeys([*recommendations, *notes]))
    return Health(status=status, metrics=metrics, alerts=alerts, recommendations=recs, sandbox=sandbox)


def _severity_order(active: dict[str, Alert]):
    return lambda kind: (active[kind].level != CRITICAL, active[kind].since, kind)


def _percent(used: Optional[int], total: Optional[int]) -> Optional[float]:
    if used is None or not total:
        return None
    return 100.0 * used / total


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(v, 1)
