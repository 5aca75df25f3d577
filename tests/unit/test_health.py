"""Health rules with synthetic samples, alert hysteresis, and the watchdog's enforcement
decisions on the fake provider (no VM)."""
import threading
import time

import pytest

from vmsandbox.exceptions import ProviderError, ResourceLimitError
from vmsandbox.health import (CRITICAL, WARNING, AlertTracker, Condition, HealthStatus, Metrics, Thresholds,
                              assess, conditions)
from vmsandbox.models import ExecutionResult, SandboxState
from vmsandbox.testing import fake_core
from vmsandbox.watchdog import GUEST_PROBE, Watchdog, parse_guest_probe

GiB, MiB = 1 << 30, 1 << 20
T = Thresholds(cpu=80, memory=90, disk=90)

PROBE_OUTPUT = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    2764      22    0    0    0     0          0         0     2504      21    0    0    0     0       0          0
@@
Filesystem           1024-blocks    Used Available Capacity Mounted on
/dev/vda                996780      6228    921740   1% /
@@
9.20 0.19
"""


def running(**kw):
    base = dict(state="running", sampled_at=1000.0, cpu_percent=10.0, memory_used=50 * MiB,
                memory_total=200 * MiB, disk_used=10 * MiB, disk_limit=GiB, ssh_ok=True)
    base.update(kw)
    return Metrics(**base)


# -- pure rules --------------------------------------------------------------------------
def test_quiet_guest_is_healthy():
    m = running()
    assert conditions(m, T) == []
    h = assess("a", m, [])
    assert h.status is HealthStatus.HEALTHY and h.status == "HEALTHY" and h.alerts == ()


@pytest.mark.parametrize("metrics,kind", [
    (running(cpu_percent=95.0), "cpu"),
    (running(memory_used=190 * MiB), "memory"),
    (running(disk_used=int(0.95 * GiB)), "disk"),
    (running(guest_disk_used=95, guest_disk_total=100), "disk"),
])
def test_threshold_crossed_is_a_warning(metrics, kind):
    found = conditions(metrics, T)
    assert [(c.kind, c.level) for c in found] == [(kind, WARNING)]
    tracker = AlertTracker(raise_after=1)
    tracker.update(found)
    assert assess("a", metrics, tracker.active.values(), tracker.recommendations()).status is HealthStatus.DEGRADED


def test_thresholds_are_exclusive_and_configurable():
    assert conditions(running(cpu_percent=80.0), T) == []
    assert [c.kind for c in conditions(running(cpu_percent=61.0), Thresholds(cpu=60))] == ["cpu"]


@pytest.mark.parametrize("metrics,held,should_run,kind", [
    (running(state="gone"), "", True, "domain"),
    (running(state="crashed"), "", True, "domain"),
    (running(state="shutoff"), "", True, "domain"),
    (running(state="broken"), "its domain is gone", False, "domain"),
    (running(state="paused"), "limit: disk 2G exceeds resource_limits.disk 1G", False, "limit"),
    (running(ssh_ok=False, ssh_failures=2), "", True, "ssh"),
    (running(state="unknown", error="libvirtd is not reachable"), "", True, "sampling"),
])
def test_dead_unreachable_or_held_is_critical(metrics, held, should_run, kind):
    found = conditions(metrics, T, held_reason=held, should_run=should_run)
    assert [c.kind for c in found] == [kind] and found[0].level == CRITICAL and found[0].immediate
    tracker = AlertTracker(raise_after=3)
    raised, _ = tracker.update(found)            # facts skip the hysteresis
    assert [a.kind for a in raised] == [kind]
    h = assess("a", metrics, tracker.active.values(), tracker.recommendations())
    assert h.status is HealthStatus.UNHEALTHY and h.recommendations


def test_one_failed_ssh_probe_is_not_an_alert():
    assert conditions(running(ssh_ok=False, ssh_failures=1), T) == []


def test_user_stopped_sandbox_is_not_unhealthy():
    assert conditions(running(state="shutoff", cpu_percent=None), T, should_run=False) == []


def test_breach_is_critical_and_names_the_resource():
    found = conditions(running(), T, breaches=[("disk", "disk 2.0G exceeds resource_limits.disk 1.0G")])
    assert [(c.kind, c.level) for c in found] == [("limit_disk", CRITICAL)]


# -- hysteresis --------------------------------------------------------------------------
CPU = Condition("cpu", WARNING, "CPU high", "look at it")


def test_alert_needs_consecutive_samples_to_raise_and_to_clear():
    t = AlertTracker(raise_after=2, clear_after=2)
    seq = [[CPU], [], [CPU], [CPU], [], [CPU], [], []]
    active = []
    events = []
    for i, found in enumerate(seq):
        raised, cleared = t.update(found, now=float(i))
        events += [("raise", i) for _ in raised] + [("clear", i) for _ in cleared]
        active.append("cpu" in t.active)
    # one noisy sample neither raises (i=0) nor clears (i=4); two in a row do
    assert events == [("raise", 3), ("clear", 7)]
    assert active == [False, False, False, True, True, True, True, False]
    assert t.active == {}


def test_alert_keeps_its_since_and_updates_its_message():
    t = AlertTracker(raise_after=1)
    t.update([CPU], now=5.0)
    t.update([Condition("cpu", WARNING, "CPU higher", "x")], now=6.0)
    a = t.active["cpu"]
    assert (a.since, a.message) == (5.0, "CPU higher")


def test_to_dict_is_json_ready():
    import json
    h = assess("a", running(cpu_percent=95.0), [], ["do x"])
    d = json.loads(json.dumps(h.to_dict()))
    assert d["status"] == "HEALTHY" and d["metrics"]["cpu_percent"] == 95.0 and d["metrics"]["memory_percent"] == 25.0


# -- guest probe parsing -----------------------------------------------------------------
def test_parse_guest_probe():
    g = parse_guest_probe(PROBE_OUTPUT, at=1.0)
    assert (g.net_rx, g.net_tx) == (2764, 2504)            # lo is not counted
    assert (g.disk_used, g.disk_total) == (6228 * 1024, 996780 * 1024)
    assert g.uptime == 9.2 and g.ok


def test_parse_guest_probe_garbage_gives_unknowns():
    g = parse_guest_probe("sh: cat: not found", at=1.0)
    assert (g.net_rx, g.disk_used, g.uptime) == (None, None, None)


# -- the watchdog on the fake provider -----------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def make_core(tmp_path):
    made = []

    def make(**monitoring):
        core = fake_core(tmp_path, {"monitoring": {"interval_seconds": 0.2, **monitoring},
                                    "safety": {"validation": {"enabled": False}}})
        made.append(core)
        return core
    yield make
    for c in made:
        c.close()


def new_sandbox(core, name="w1", **limits):
    sid = core.create_sandbox(name, {"resource_limits": limits} if limits else None)
    info = core.get(sid)
    core.fake_sessions[sid].responses[GUEST_PROBE] = ExecutionResult(PROBE_OUTPUT, "", 0, 0.01)
    return sid, info, core.provider.domains[info.domain]


def watchdog(core):
    wd = Watchdog(core)
    wd.clock = Clock()
    return wd


def tick(wd, dom, cpu_seconds=0.0, elapsed=1.0):
    wd.clock.t += elapsed
    dom["cpu_time_ns"] += int(cpu_seconds * 1e9)
    return wd.sample()


def test_metrics_from_host_and_guest(make_core):
    core = make_core()
    sid, info, dom = new_sandbox(core)
    dom.update(memory_used=64 * MiB, disk_allocation=5 * MiB)
    wd = watchdog(core)
    first = wd.sample()[sid]
    assert first.metrics.cpu_percent is None                # no delta yet
    h = tick(wd, dom, cpu_seconds=0.3)[sid]
    m = h.metrics
    assert m.cpu_percent == pytest.approx(30.0) and m.memory_used == 64 * MiB and m.memory_total == 256 * MiB
    assert (m.disk_used, m.disk_limit) == (5 * MiB, GiB)
    assert (m.net_rx, m.net_tx, m.ssh_ok, m.uptime) == (2764, 2504, True, 9.2)
    assert h.status is HealthStatus.HEALTHY and len(wd.history(sid)) == 2
    assert core.get_health_status(sid).sandbox == "w1"


def test_cpu_percent_is_of_the_allotment(make_core):
    core = make_core()
    sid, info, dom = new_sandbox(core, cpu="0.5")
    wd = watchdog(core)
    wd.sample()
    h = tick(wd, dom, cpu_seconds=0.45)[sid]
    assert h.metrics.cpu_percent == pytest.approx(90.0)
    assert h.status is HealthStatus.DEGRADED and [a.kind for a in h.alerts] == ["cpu"]


def test_vanished_domain_is_unhealthy_and_reconciled(make_core):
    core = make_core()
    sid, info, dom = new_sandbox(core)
    wd = watchdog(core)
    wd.sample()
    del core.provider.domains[info.domain]                 # gone behind our back
    h = tick(wd, dom)[sid]
    assert h.status is HealthStatus.UNHEALTHY and h.alerts[0].kind == "domain"
    assert core.store.get_sandbox(sid).state is SandboxState.BROKEN
    h = tick(wd, dom)[sid]                                  # still unhealthy once recorded broken
    assert h.status is HealthStatus.UNHEALTHY and "gone" in h.alerts[0].message


def test_provider_failure_is_recorded_not_raised(make_core):
    core = make_core()
    sid, info, dom = new_sandbox(core)
    wd = watchdog(core)
    core.provider.fail_on["machine_stats"] = ProviderError("libvirtd is not reachable")
    h = wd.sample()[sid]
    assert h.status is HealthStatus.UNHEALTHY and "libvirtd is not reachable" in h.alerts[0].message
    del core.provider.fail_on["machine_stats"]
    assert tick(wd, dom)[sid].status is HealthStatus.HEALTHY


def test_ssh_down_needs_two_failed_probes(make_core):
    core = make_core(guest_interval_seconds=0.1)
    sid, info, dom = new_sandbox(core)
    wd = watchdog(core)
    wd.sample()

    def refuse(*a, **kw):
        raise ProviderError("connection refused")
    core.fake_sessions[sid].execute = refuse
    h1 = tick(wd, dom)[sid]
    assert h1.metrics.ssh_ok is False and h1.status is HealthStatus.HEALTHY
    h2 = tick(wd, dom)[sid]
    assert h2.status is HealthStatus.UNHEALTHY and [a.kind for a in h2.alerts] == ["ssh"]
    assert h2.metrics.net_rx == 2764                        # last good guest numbers kept


@pytest.mark.parametrize("action,state,call", [
    ("pause", SandboxState.PAUSED, "pause_machine"),
    ("emergency_shutdown", SandboxState.STOPPED, "kill_machine"),
    ("throttle", SandboxState.RUNNING, "set_cpu_quota"),
    ("rollback", SandboxState.PAUSED, "pause_machine"),      # no snapshots: falls back to pause
    ("alert", SandboxState.RUNNING, None),
])
def test_limit_breach_runs_the_action_once(make_core, action, state, call):
    core = make_core(limit_action=action)
    sid, info, dom = new_sandbox(core)
    wd = watchdog(core)
    wd.sample()
    dom["disk_allocation"] = 2 * GiB                       # over resource_limits.disk (1G)
    before = len(core.provider.calls)
    h = tick(wd, dom)[sid]
    for _ in range(3):
        h = tick(wd, dom)[sid]
    calls = [c[0] for c in core.provider.calls[before:] if c[0] != "machine_stats"]
    assert calls.count(call) == (1 if call else 0) and (call is None or calls == [call])
    assert core.store.get_sandbox(sid).state is state
    enforced = core.store.read_audit("w1", operation="enforce")
    assert len(enforced) == 1 and enforced[0]["detail"]["action"] == action
    assert enforced[0]["detail"]["breaches"] == ["limit_disk"]
    assert h.status is HealthStatus.UNHEALTHY and any(a.kind.startswith("limit") for a in h.alerts)
    if action == "rollback":
        assert "no snapshot" in enforced[0]["detail"]["note"]
    if state is not SandboxState.RUNNING:
        with pytest.raises(ResourceLimitError, match=r"Disk use 2.0 GiB is above the limit of 1.0 GiB \(resource_limits.disk\)"):
            core.execute(sid, "true")


def test_breach_after_recovery_is_enforced_again(make_core):
    core = make_core(limit_action="throttle")
    sid, info, dom = new_sandbox(core)
    wd = watchdog(core)
    wd.sample()
    for alloc in (2 * GiB, 10 * MiB, 2 * GiB):
        dom["disk_allocation"] = alloc
        tick(wd, dom)
    assert [c[0] for c in core.provider.calls].count("set_cpu_quota") == 2


def test_safety_limits_apply_too(make_core):
    core = make_core(limit_action="pause")
    sid, info, dom = new_sandbox(core)
    import dataclasses
    from vmsandbox.config import Limits
    core.config = dataclasses.replace(core.config, safety=dataclasses.replace(
        core.config.safety, limits=Limits(cpu="4", memory="8G", disk="100M")))
    wd = watchdog(core)
    dom["disk_allocation"] = 200 * MiB                    # under its own 1G, over the global 100M
    h = wd.sample()[sid]
    assert "safety.limits.disk" in h.alerts[0].message or "safety.limits.disk" in str(h.to_dict())
    assert core.store.get_sandbox(sid).state is SandboxState.PAUSED


def test_thread_survives_errors_and_stops_promptly(make_core, caplog):
    core = make_core()
    sid, info, dom = new_sandbox(core)
    wd = Watchdog(core)
    calls = {"n": 0}
    real = core.provider.machines_stats

    def flaky(names):
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("unexpected bug")
        return real(names)
    core.provider.machines_stats = flaky
    wd.start()
    try:
        deadline = time.monotonic() + 5
        while wd.rounds < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wd.running and wd.rounds >= 3 and calls["n"] >= 5
        assert wd.health(sid).sandbox == "w1"
    finally:
        started = time.monotonic()
        wd.stop()
        took = time.monotonic() - started
    assert took < core.config.monitoring.interval_seconds + 0.05
    assert not any(t.name == "vmsandbox-watchdog" for t in threading.enumerate())
    assert "watchdog round failed" in caplog.text


def test_full_cpu_with_measurement_jitter_is_no_limit_breach(make_core):
    core = make_core(limit_action="pause")
    sid, info, dom = new_sandbox(core, cpu="1")
    wd = watchdog(core)
    wd.sample()
    for _ in range(3):
        h = tick(wd, dom, cpu_seconds=1.04)[sid]          # a busy 1-vCPU guest reads a little over 1.0
    assert not [a for a in h.alerts if a.kind.startswith("limit")]
    for _ in range(3):
        h = tick(wd, dom, cpu_seconds=1.5)[sid]           # well over its limit: a breach
    assert [a for a in h.alerts if a.kind.startswith("limit")]


def test_a_slow_round_and_a_quick_restart_leave_one_sampling_thread(make_core):
    """stop() joins for one interval only; a round that outlasts it must still end its thread
    when start() follows at once (a shared stop event, cleared by start(), revived it)."""
    core = make_core()
    new_sandbox(core)
    wd = Watchdog(core)
    real = core.provider.machines_stats
    slow, inside = threading.Event(), threading.Event()

    def stats(names):
        if slow.is_set():
            inside.set()
            time.sleep(core.config.monitoring.interval_seconds + 0.3)
        return real(names)
    core.provider.machines_stats = stats
    wd.start()
    try:
        while wd.rounds < 1:
            time.sleep(0.01)
        slow.set()
        assert inside.wait(5)                  # the thread is inside a slow round
        wd.stop()                              # gives up joining after one interval
        slow.clear()
        wd.start()
        deadline = time.monotonic() + 3 * core.config.monitoring.interval_seconds + 1
        while time.monotonic() < deadline:
            threads = [t for t in threading.enumerate() if t.name == "vmsandbox-watchdog"]
            if len(threads) == 1:
                break
            time.sleep(0.05)
        assert len(threads) == 1, threads
    finally:
        wd.stop()
