"""The watchdog against real guests (libvirt + QEMU/TCG + SSH): CPU and memory alerts, disk limit
enforcement, a guest killed from outside, a domain that vanishes, and a prompt stop()."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from vmsandbox.core import SandboxCore
from vmsandbox.exceptions import ResourceLimitError
from vmsandbox.health import HealthStatus
from vmsandbox.models import SandboxState

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")
INTERVAL = 1.0


def config(state_dir, **monitoring):
    return {"sandbox": {"state_directory": str(state_dir), "box_directory": BOX_DIR},
            "safety": {"validation": {"enabled": False}},
            "monitoring": {"interval_seconds": INTERVAL, "guest_interval_seconds": 2,
                           "alerts": {"cpu_threshold": 80, "memory_threshold": 70}, **monitoring}}


@pytest.fixture(scope="module")
def core():
    if not (Path(BOX_DIR) / "tiny").exists():
        pytest.skip(f"no tiny box in {BOX_DIR} (vmsandbox box build tiny)")
    state = tempfile.mkdtemp(prefix="vmsbx-wd-")        # pytest's tmp dirs are 0700: QEMU could not read disks
    os.chmod(state, 0o711)
    c = SandboxCore(config=config(state))
    try:
        yield c
    finally:
        try:
            for info in c.store.list_sandboxes():
                c.destroy(info.id)
        finally:
            c.close()
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def sandbox(core, request):
    sid = core.create_sandbox(request.node.name.replace("_", "-")[:30].strip("-").lower())
    try:
        yield sid
    finally:
        core.destroy(sid)


def wait_for(core, sid, predicate, seconds):
    """Poll the watchdog's health until ``predicate(health)``; returns (health, seconds waited)."""
    started = time.monotonic()
    while True:
        h = core.get_health_status(sid)
        if predicate(h):
            return h, time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not reached within {seconds:.0f} s; last health: {h.to_dict()}")
        time.sleep(0.1)


def kinds(h):
    return {a.kind for a in h.alerts}


@pytest.fixture
def half_cpu_sandbox(core):
    # Half a CPU (a CFS quota): a busy loop then reaches 100% of its allotment as long as the host
    # gives it 0.4 of a core. With a whole CPU the test needed 0.8 of one of this machine's 2 cores,
    # which a loaded host (other guests, parallel tests) does not always give: the alert then rightly
    # never came, and the test failed by the load, not by the watchdog.
    sid = core.create_sandbox("cpu-burn", {"resource_limits": {"cpu": "0.5"}})
    try:
        yield sid
    finally:
        core.destroy(sid)


def test_cpu_burn_degrades_then_recovers(core, half_cpu_sandbox):
    sandbox = half_cpu_sandbox
    wait_for(core, sandbox, lambda h: h.status is HealthStatus.HEALTHY and h.metrics.cpu_percent is not None, 20)
    pid = core.execute(sandbox, "while :; do :; done >/dev/null 2>&1 & echo $!", timeout=20).stdout.strip()
    h, took = wait_for(core, sandbox, lambda h: "cpu" in kinds(h), 3 * INTERVAL + 1)
    assert h.status is HealthStatus.DEGRADED, h.to_dict()
    assert h.metrics.cpu_percent > 80 and any("CPU" in r or "CPU" in a.message for r in h.recommendations for a in h.alerts)
    assert took <= 3 * INTERVAL + 0.5, f"CPU alert after {took:.1f} s"
    core.execute(sandbox, f"kill {pid}", timeout=20)
    h, _ = wait_for(core, sandbox, lambda h: h.status is HealthStatus.HEALTHY, 4 * INTERVAL + 1)
    assert h.metrics.cpu_percent < 80
    ops = [(r["operation"], r["outcome"], r["detail"].get("kind")) for r in core.audit_log(core.get(sandbox).name)]
    assert ("alert", "raised", "cpu") in ops and ("alert", "cleared", "cpu") in ops


def test_memory_hog_raises_memory_alert(core, sandbox):
    h, _ = wait_for(core, sandbox, lambda h: h.metrics.memory_total is not None, 20)
    total = h.metrics.memory_total
    assert 150 << 20 < total <= 256 << 20 and h.metrics.memory_percent < 70
    fill_mib = int(total * 0.82 - h.metrics.memory_used) >> 20         # up to ~82% of guest memory
    r = core.execute(sandbox, f"mount -o remount,size=230M /dev/shm && dd if=/dev/zero of=/dev/shm/hog bs=1M "
                              f"count={fill_mib} 2>&1", timeout=60)
    assert r.exit_code == 0, r.stderr + r.stdout
    h, _ = wait_for(core, sandbox, lambda h: "memory" in kinds(h), 10)   # balloon stats refresh every 2 s
    assert h.status is HealthStatus.DEGRADED and h.metrics.memory_percent > 70
    core.execute(sandbox, "rm /dev/shm/hog", timeout=20)
    wait_for(core, sandbox, lambda h: "memory" not in kinds(h), 10)


def test_disk_over_limit_pauses_the_sandbox(core, sandbox):
    # A second core on the same state with safety.limits.disk lowered below what the guest will
    # write: the global cap shrank under a running sandbox (a sandbox's own disk limit cannot be
    # exceeded from inside: it is the overlay's virtual size).
    strict = SandboxCore(config={**config(core.state_dir, limit_action="pause"),
                                 "safety": {"validation": {"enabled": False}, "limits": {"disk": "48M"}}})
    try:
        wait_for(strict, sandbox, lambda h: h.metrics.disk_used is not None, 10)
        r = core.execute(sandbox, "dd if=/dev/urandom of=/fill bs=1M count=64 && sync", timeout=120)
        assert r.exit_code == 0, r.stderr
        h, _ = wait_for(strict, sandbox, lambda h: "limit" in kinds(h), 4 * INTERVAL + 2)
        assert h.status is HealthStatus.UNHEALTHY
        info = core.store.get_sandbox(sandbox)
        assert info.state is SandboxState.PAUSED and "safety.limits.disk" in info.reason
        assert core.provider.machine_state(info.domain) == "paused"
        with pytest.raises(ResourceLimitError, match="Disk use"):
            core.execute(sandbox, "true")
        enforced = core.audit_log(info.name)
        assert [(r["detail"]["action"], r["outcome"]) for r in enforced if r["operation"] == "enforce"] == [("pause", "ok")]
    finally:
        strict.close()


def test_disk_over_limit_rolls_back_to_the_last_snapshot(core, sandbox):
    core.execute(sandbox, "echo before > /keep; sync")
    core.create_snapshot(sandbox, "clean", memory=False)
    strict = SandboxCore(config={**config(core.state_dir, limit_action="rollback"),
                                 "safety": {"validation": {"enabled": False}, "limits": {"disk": "48M"}}})
    try:
        wait_for(strict, sandbox, lambda h: h.metrics.disk_used is not None, 10)
        r = core.execute(sandbox, "dd if=/dev/urandom of=/fill bs=1M count=64 && sync", timeout=120)
        assert r.exit_code == 0, r.stderr
        name = core.get(sandbox).name
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [r for r in core.audit_log(name) if r["operation"] == "enforce"]
            if done:
                break
            time.sleep(0.5)
        assert [(r["detail"]["action"], r["outcome"]) for r in done] == [("rollback", "ok")], done
        assert core.get(sandbox).state is SandboxState.RUNNING
        r = core.execute(sandbox, "cat /keep; ls /fill 2>&1")
        assert r.stdout.startswith("before\n") and "No such file" in r.stdout
    finally:
        strict.close()


def test_killed_qemu_turns_unhealthy_and_watchdog_survives_vanished_domain(core, sandbox):
    wait_for(core, sandbox, lambda h: h.status is HealthStatus.HEALTHY, 20)
    info = core.store.get_sandbox(sandbox)
    pids = subprocess.run(["pgrep", "-f", f"guest={info.domain},"], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), signal.SIGKILL)
    h, took = wait_for(core, sandbox, lambda h: h.status is HealthStatus.UNHEALTHY, 3 * INTERVAL + 0.5)
    assert "domain" in kinds(h) and took <= 3 * INTERVAL + 0.5
    # now the domain disappears altogether behind the core's back
    core.provider.destroy_machine(info.domain)
    rounds = core.watchdog.rounds
    time.sleep(3 * INTERVAL)
    assert core.watchdog.running and core.watchdog.rounds >= rounds + 2
    h = core.get_health_status(sandbox)
    assert h.status is HealthStatus.UNHEALTHY and h.recommendations


def test_stop_is_prompt(core):
    wd = core.watchdog
    assert wd.running
    started = time.monotonic()
    wd.stop()
    took = time.monotonic() - started
    assert not wd.running and took < INTERVAL, f"stop() took {took:.2f} s"
    wd.start()
    assert wd.running
