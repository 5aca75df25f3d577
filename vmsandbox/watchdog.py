"""The watchdog: one thread per ``SandboxCore`` that samples every sandbox each
``monitoring.interval_seconds``, keeps a bounded history, turns samples into ``Health``
(rules in ``vmsandbox.health``) and enforces resource limits with ``monitoring.limit_action``.

Host-side metrics (state, CPU time, balloon memory, overlay allocation) come from the provider
in one call per round. In-guest metrics (``/proc/net/dev``, ``df -P /``, ``/proc/uptime``) come
over SSH every ``monitoring.guest_interval_seconds`` in worker threads, so a slow or dead guest
never delays the host-side round. Enforcement actions also run in workers and go to the audit
log. The thread survives every error (recorded as UNHEALTHY health, logged) and ``stop()``
returns within one interval.

Without a running thread (``core.get_health_status`` on a core built with
``start_watchdog=False``) ``health()`` samples on demand, probes and enforces inline, and raises
alerts from that one reading (there is no series to debounce).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from .config import Limits, parse_cpu, parse_size
from .exceptions import NotFoundError, SandboxError
from .health import (CRITICAL, AlertTracker, Alert, Health, HealthStatus, Metrics, Thresholds, assess,
                     conditions)
from .models import SandboxInfo, SandboxState

log = logging.getLogger("vmsandbox.watchdog")

#: one command, one round trip: network counters, root filesystem, uptime
GUEST_PROBE = "cat /proc/net/dev; echo @@; df -P /; echo @@; cat /proc/uptime"
GUEST_PROBE_TIMEOUT = 10.0
ON_DEMAND_CPU_WINDOW = 0.5        # seconds between the two host samples of an on-demand reading
RAISE_AFTER = 2                   # consecutive samples before an alert is raised / cleared
CLEAR_AFTER = 2
THROTTLE_FRACTION = 0.25
_WATCHED = (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.STOPPED, SandboxState.BROKEN)
_LIVE = (SandboxState.RUNNING, SandboxState.PAUSED)


@dataclass(frozen=True)
class GuestSample:
    """What one in-guest probe found; ``ok`` False when SSH failed."""
    at: float
    ok: bool
    net_rx: Optional[int] = None
    net_tx: Optional[int] = None
    disk_used: Optional[int] = None
    disk_total: Optional[int] = None
    uptime: Optional[float] = None
    error: str = ""


def parse_guest_probe(text: str, at: float) -> GuestSample:
    """Parse the output of ``GUEST_PROBE``; fields it cannot read stay None."""
    parts = text.split("@@")
    net, df, up = (parts + ["", "", ""])[:3]
    rx = tx = None
    for line in net.splitlines():
        name, sep, counters = line.partition(":")
        if not sep or name.strip() in ("lo", "") or "|" in line:
            continue
        cols = counters.split()
        if len(cols) >= 9 and cols[0].isdigit() and cols[8].isdigit():
            rx, tx = (rx or 0) + int(cols[0]), (tx or 0) + int(cols[8])
    used = total = None
    rows = [r.split() for r in df.strip().splitlines()[1:]]
    if rows and len(rows[-1]) >= 5 and rows[-1][1].isdigit() and rows[-1][2].isdigit():
        total, used = int(rows[-1][1]) * 1024, int(rows[-1][2]) * 1024
    uptime = None
    try:
        uptime = float(up.split()[0])
    except (IndexError, ValueError):
        pass
    return GuestSample(at=at, ok=True, net_rx=rx, net_tx=tx, disk_used=used, disk_total=total, uptime=uptime)


@dataclass
class _Track:
    """Everything the watchdog remembers about one sandbox."""
    name: str
    tracker: AlertTracker
    history: collections.deque
    cpu: Optional[tuple[int, float]] = None        # (cpu_time_ns, monotonic) of the last sample
    guest: Optional[GuestSample] = None
    guest_failures: int = 0
    next_probe: float = 0.0                        # monotonic
    probing: bool = False
    enforcing: bool = False
    health: Optional[Health] = None
    notes: list[str] = field(default_factory=list)  # what enforcement did, shown as recommendations


class Watchdog:
    """Samples, assesses and enforces; see the module docstring. Thread-safe."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._workers: set[threading.Thread] = set()
        self._tracks: dict[str, _Track] = {}
        self.rounds = 0                                 # completed sampling rounds (for tests, `top`)
        self.clock: Callable[[], float] = time.monotonic   # CPU-rate clock; tests substitute their own

    @property
    def monitoring(self):
        return self.core.config.monitoring

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.running:
            return
        with self._lock:
            self._tracks.clear()                        # on-demand readings used no hysteresis
        # Each thread has its own stop event: a thread that has not yet seen the previous stop()
        # (a round can outlast the join in stop) must not be revived by clearing a shared one.
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="vmsandbox-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; returns within one interval (the thread is joined unless a provider
        call hangs, which is logged). Workers still probing a guest are left to finish alone."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(self.monitoring.interval_seconds)
        if thread.is_alive():
            log.warning("watchdog thread did not stop within %.1f s", self.monitoring.interval_seconds)

    def _run(self, stop: threading.Event) -> None:
        log.debug("watchdog started (every %.1f s)", self.monitoring.interval_seconds)
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception:                           # never die silently
                log.exception("watchdog round failed; continuing")
            stop.wait(max(0.0, self.monitoring.interval_seconds - (time.monotonic() - started)))
        log.debug("watchdog stopped")

    # -- public reads ----------------------------------------------------------------------
    def health(self, sandbox_id: str) -> Health:
        """The latest health of a sandbox; sampled now when the thread has none for it."""
        with self._lock:
            track = self._tracks.get(sandbox_id)
            if self.running and track is not None and track.health is not None:
                return track.health
        info = self.core.store.get_sandbox(sandbox_id)
        if info.state in _LIVE and (track is None or track.cpu is None):
            self.sample([info])                          # first reading: no CPU delta yet
            time.sleep(ON_DEMAND_CPU_WINDOW)
        return self.sample([self.core.store.get_sandbox(sandbox_id)])[info.id]

    def snapshot(self) -> dict[str, Health]:
        """Latest health of every sandbox sampled so far, by id."""
        with self._lock:
            return {sid: t.health for sid, t in self._tracks.items() if t.health is not None}

    def history(self, sandbox_id: str) -> list[Metrics]:
        with self._lock:
            track = self._tracks.get(sandbox_id)
            return list(track.history) if track else []

    # -- sampling --------------------------------------------------------------------------
    def sample(self, records: Optional[list[SandboxInfo]] = None) -> dict[str, Health]:
        """One round over ``records`` (default: every sandbox in the store); returns their health."""
        every = records is None
        if every:
            records = self.core.store.list_sandboxes()
        records = [r for r in records if r.state in _WATCHED]
        live = [r.domain for r in records if r.state in _LIVE]
        stats = self.core.router.machines_stats(live) if live else {}
        out: dict[str, Health] = {}
        with self._lock:
            if every:
                for gone in set(self._tracks) - {r.id for r in records}:
                    del self._tracks[gone]
            for rec in records:
                try:
                    out[rec.id] = self._observe(rec, stats.get(rec.domain))
                except Exception as exc:                 # one sandbox never stops the round
                    log.exception("watchdog: sampling %s failed", rec.name)
                    out[rec.id] = self._record(rec, Metrics(state="unknown", sampled_at=time.time(),
                                                            error=f"{type(exc).__name__}: {exc}"))
            self.rounds += 1
        return out

    def _track(self, rec: SandboxInfo) -> _Track:
        track = self._tracks.get(rec.id)
        if track is None:
            debounce = self.running
            track = self._tracks[rec.id] = _Track(
                name=rec.name, tracker=AlertTracker(RAISE_AFTER if debounce else 1, CLEAR_AFTER if debounce else 1),
                history=collections.deque(maxlen=self.monitoring.history))
        return track

    def _observe(self, rec: SandboxInfo, stats: Any) -> Health:
        track = self._track(rec)
        now, mono = time.time(), self.clock()
        m = Metrics(state="shutoff" if rec.state is SandboxState.STOPPED else rec.state.value, sampled_at=now,
                    disk_limit=parse_size(rec.disk))
        if rec.state in _LIVE:
            if isinstance(stats, NotFoundError) or stats is None:
                m = replace(m, state="gone")
            elif isinstance(stats, SandboxError):
                m = replace(m, state="unknown", error=str(stats))
            else:
                m = self._host_metrics(rec, track, stats, m, mono)
            if m.state in ("gone", "shutoff", "crashed"):
                track.cpu = None
                self._reconcile(rec)
        if m.state == "running":
            self._maybe_probe(rec, track, mono)
        g = track.guest
        if g is not None and rec.state in _LIVE:
            m = replace(m, ssh_ok=g.ok, ssh_failures=track.guest_failures, guest_sampled_at=g.at,
                        net_rx=g.net_rx, net_tx=g.net_tx, guest_disk_used=g.disk_used,
                        guest_disk_total=g.disk_total, uptime=g.uptime)
        return self._record(rec, m)

    def _host_metrics(self, rec: SandboxInfo, track: _Track, st: Any, m: Metrics, mono: float) -> Metrics:
        cpu_used = cpu_percent = None
        cpu_ns = st.extra.get("vcpu_time_ns", st.cpu_time_ns)     # the guest's own CPU time when known
        if st.state == "running" and track.cpu is not None and cpu_ns >= track.cpu[0] and mono > track.cpu[1]:
            cpu_used = (cpu_ns - track.cpu[0]) / 1e9 / (mono - track.cpu[1])
            cpu_percent = 100.0 * cpu_used / _cpu_allotment(rec, st.vcpus)
        track.cpu = (cpu_ns, mono) if st.state == "running" else None
        return replace(m, state=st.state, cpu_used=cpu_used, cpu_percent=cpu_percent,
                       memory_used=st.memory_used, memory_total=st.memory_total, disk_used=st.disk_allocation)

    def _reconcile(self, rec: SandboxInfo) -> None:
        """Let the core record a guest that died or vanished behind our back (and audit it)."""
        try:
            self.core.get(rec.id)
        except SandboxError as exc:
            log.debug("reconcile of %s failed: %s", rec.name, exc)

    def _record(self, rec: SandboxInfo, m: Metrics) -> Health:
        """Assess sample ``m``: alerts with hysteresis, enforcement of newly breached limits."""
        track = self._track(rec)
        track.history.append(m)
        breaches = self._breaches(rec, m) if m.state in ("running", "paused") else []
        found = conditions(m, Thresholds.from_config(self.monitoring.alerts), held_reason=_held_reason(rec),
                           breaches=breaches, should_run=rec.state in _LIVE)
        raised, cleared = track.tracker.update(found, m.sampled_at)
        for alert in raised:
            self._audit("alert", "raised", rec, kind=alert.kind, level=alert.level, message=alert.message)
        for alert in cleared:
            self._audit("alert", "cleared", rec, kind=alert.kind, message=alert.message)
        if not any(a.kind.startswith("limit_") for a in track.tracker.active.values()) and rec.state is SandboxState.RUNNING:
            track.notes.clear()
        track.health = assess(rec.name, m, track.tracker.active.values(), track.tracker.recommendations(), track.notes)
        breached = [a for a in raised if a.kind.startswith("limit_")]
        if breached and not track.enforcing:
            track.enforcing = True
            self._spawn(f"enforce-{rec.name}", lambda: self._enforce(rec, track, breached))
        return track.health

    # -- limits ----------------------------------------------------------------------------
    def _breaches(self, rec: SandboxInfo, m: Metrics) -> list[tuple[str, str]]:
        """(resource, message) for each of the sandbox's own and the global limits exceeded."""
        from .safety.models import ResourceUsage
        # CPU time over one interval reads a few % high at full load, and the hypervisor caps CPU
        # anyway (vCPU count, quota): only a reading 10% over the limit counts as a breach.
        cpu = None if m.cpu_used is None else m.cpu_used / CPU_BREACH_MARGIN
        usage = ResourceUsage(cpu=cpu, memory=m.memory_used, disk=m.disk_used)
        found: dict[str, str] = {}
        for label, limits in (("safety.limits", self.core.config.safety.limits),
                              ("resource_limits", Limits(cpu=rec.cpu, memory=rec.memory, disk=rec.disk))):
            for resource, message in limit_breaches(self.core, usage, limits, label):
                found.setdefault(resource, message)
        return sorted(found.items())

    def _enforce(self, rec: SandboxInfo, track: _Track, breached: list[Alert]) -> None:
        action = self.monitoring.limit_action
        what = "; ".join(a.message for a in breached)
        reason = f"limit: {what}"
        note, outcome = "", "ok"
        try:
            if action == "throttle":
                self.core.throttle(rec.id, THROTTLE_FRACTION, reason=reason)
                note = f"throttled to {THROTTLE_FRACTION:g} CPU per vCPU because {what}; core.unthrottle() lifts it"
            elif action == "pause":
                self.core.pause(rec.id, reason=reason)
                note = f"paused because {what}; resume it once the cause is dealt with"
            elif action == "rollback":
                note = self._rollback(rec, reason, what)
            elif action == "emergency_shutdown":
                self.core.emergency_shutdown(rec.id, reason)
                note = f"shut down hard because {what}; disk and logs kept for forensics"
            else:
                outcome, note = "alerted", f"limit breached ({what}); monitoring.limit_action is 'alert'"
        except Exception as exc:
            outcome, note = "failed", f"{action} after a limit breach failed: {exc}"
            log.error("watchdog: %s of %s failed: %s", action, rec.name, exc)
        self._audit("enforce", outcome, rec, action=action, breaches=[a.kind for a in breached], reason=what, note=note)
        with self._lock:
            track.notes.append(note)
            track.enforcing = False

    def _rollback(self, rec: SandboxInfo, reason: str, what: str) -> str:
        snapshots = list(self.core.list_snapshots(rec.id)) if hasattr(self.core, "list_snapshots") else []
        if not snapshots:
            self.core.pause(rec.id, reason=reason)
            return f"paused because {what} (rollback was configured but there is no snapshot)"
        latest = max(snapshots, key=lambda s: _field(s, "created_at") or 0)
        sid = _field(latest, "id")
        self.core.rollback(rec.id, sid)
        return f"rolled back to snapshot {sid} because {what}"

    # -- in-guest probes -------------------------------------------------------------------
    def _maybe_probe(self, rec: SandboxInfo, track: _Track, mono: float) -> None:
        if track.probing or mono < track.next_probe:
            return
        track.probing = True
        self._spawn(f"probe-{rec.name}", lambda: self._probe(rec, track))

    def _probe(self, rec: SandboxInfo, track: _Track) -> None:
        at = time.time()
        try:
            timeout = min(GUEST_PROBE_TIMEOUT, max(2.0, self.monitoring.guest_interval_seconds))
            result = self.core.session(rec).execute(GUEST_PROBE, timeout=timeout, max_output=64 << 10)
            if result.timed_out:
                sample = GuestSample(at=at, ok=False, error=f"the probe timed out after {timeout:g} s")
            else:
                sample = parse_guest_probe(result.stdout, at)
        except Exception as exc:          # SSH down, session closed by core.close(), ...
            sample = GuestSample(at=at, ok=False, error=str(exc))
        with self._lock:
            track.guest = sample if sample.ok or track.guest is None else replace(track.guest, ok=False, error=sample.error)
            track.guest_failures = 0 if sample.ok else track.guest_failures + 1
            # after a failure, probe again at the host rate so a dead SSH is confirmed quickly
            wait = self.monitoring.guest_interval_seconds if sample.ok else self.monitoring.interval_seconds
            track.next_probe = self.clock() + wait
            track.probing = False

    # -- plumbing --------------------------------------------------------------------------
    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` in a daemon worker while the thread runs; inline otherwise (on demand, tests)."""
        if not self.running:
            fn()
            return

        def work() -> None:
            try:
                fn()
            except Exception:
                log.exception("watchdog worker %s failed", name)
            finally:
                with self._lock:
                    self._workers.discard(threading.current_thread())
        t = threading.Thread(target=work, name=f"vmsandbox-{name}", daemon=True)
        with self._lock:
            self._workers.add(t)
        t.start()

    def _audit(self, operation: str, outcome: str, rec: SandboxInfo, **detail: Any) -> None:
        try:
            self.core.store.audit(operation, outcome, rec, **detail)
        except Exception as exc:
            log.error("watchdog: cannot write the audit record %s/%s of %s: %s", operation, outcome, rec.name, exc)


CPU_BREACH_MARGIN = 1.1


def limit_breaches(core: Any, usage: Any, limits: Limits, label: str) -> list[tuple[str, str]]:
    """(resource, message) for each limit ``usage`` exceeds, judged by the policy
    (``SafetyValidator.limit_breaches``); ``label`` says which limits (e.g. "safety.limits")."""
    out = []
    for sentence in core.validator.limit_breaches(usage, limits):
        resource = next((r for r in ("cpu", "memory", "disk") if sentence.lower().startswith(r)), "resource")
        out.append((resource, f"{sentence.rstrip('.')} ({label}.{resource})"))
    return out


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _held_reason(rec: SandboxInfo) -> str:
    """Why vmsandbox holds the sandbox off (a limit, or a guest that died); '' when a person did."""
    return rec.reason if rec.state in (SandboxState.PAUSED, SandboxState.STOPPED, SandboxState.BROKEN) else ""


def _cpu_allotment(rec: SandboxInfo, vcpus: int) -> float:
    """CPUs the sandbox may use: its cpu limit, or less while throttled."""
    allot = parse_cpu(rec.cpu)
    throttled = rec.throttled
    if throttled:
        allot = min(allot, max(vcpus, 1) * float(throttled))
    return allot


__all__ = ["Watchdog", "GuestSample", "parse_guest_probe", "limit_breaches", "GUEST_PROBE", "Health",
           "HealthStatus", "Metrics", "Alert", "CRITICAL"]
