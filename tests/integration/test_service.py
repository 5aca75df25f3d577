"""`vmsandbox serve` on real guests, with no other process running a watchdog: it enforces a CPU
limit (the sandbox is paused, `list` says why), expires a ttl, serves metrics on 127.0.0.1, refuses
a second instance and stops cleanly on SIGTERM. Everything here goes through the CLI."""
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(600)
VMSANDBOX = [sys.executable, "-m", "vmsandbox"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def configs(env):
    state = Path(env.state_dir)
    plain = state / "plain.yaml"            # what people create sandboxes with
    plain.write_text(yaml.safe_dump(env.config(safety={"validation": {"enabled": False}})))
    strict = state / "service.yaml"         # the service: a CPU ceiling below what a busy vCPU uses
    strict.write_text(yaml.safe_dump(env.config(
        safety={"validation": {"enabled": False}, "limits": {"cpu": "0.5"}},
        monitoring={"enabled": True, "interval_seconds": 1, "guest_interval_seconds": 5, "limit_action": "pause"})))
    return plain, strict


def vms(config, *args, check=True, timeout=180):
    done = subprocess.run([*VMSANDBOX, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def record(config, name):
    done = vms(config, "show", name, "--json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def wait_for(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not within {seconds} s"
        time.sleep(0.5)


def test_service_enforces_cpu_limit_expires_ttl_and_stops_cleanly(env, configs):
    plain, strict = configs
    created = vms(plain, "create", "burn")
    assert "no `vmsandbox serve` runs for this state directory" in created.stderr
    vms(plain, "create", "brief", "--ttl", "15")
    vms(plain, "exec", "burn", "--", "while :; do :; done >/dev/null 2>&1 &")
    assert "service: not running" in vms(plain, "list").stderr
    time.sleep(3)
    assert record(plain, "burn")["state"] == "running"        # nothing enforces without the service

    port = _free_port()
    proc = subprocess.Popen([*VMSANDBOX, "--config", str(strict), "serve", "--gc-interval", "2",
                             "--metrics-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: f"service: running (pid {proc.pid})" in vms(plain, "list").stderr, 30, "service up")
        second = vms(strict, "serve", "--metrics-port", "0", check=False)
        assert second.returncode != 0 and f"already runs for {env.state_dir} (pid {proc.pid})" in second.stderr
        doctor = vms(plain, "doctor", check=False)
        assert "running (pid" in doctor.stdout

        burn = wait_for(lambda: (r := record(plain, "burn")) and r["state"] == "paused" and r, 60, "CPU limit enforced")
        assert burn["reason"].startswith("limit:") and "safety.limits.cpu" in burn["reason"]
        listed = vms(plain, "list").stdout
        assert "paused" in listed and "safety.limits.cpu" in listed         # list says why
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'vmsandbox_health_status{sandbox="burn"' in metrics
        wait_for(lambda: record(plain, "brief") is None, 60, "ttl expiry")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "service stopped" in err
    log = (Path(env.state_dir) / "logs" / "service.log").read_text()
    assert "enforce" in log and "gc removed sandbox brief" in log and "service stopped" in log
    assert not (Path(env.state_dir) / "service.pid").exists()
    assert "service: not running" in vms(plain, "list").stderr
    vms(plain, "resume", "burn")
    vms(plain, "destroy", "burn")


def test_operator_verbs(env, configs):
    plain, _ = configs
    vms(plain, "create", "verbs")
    assert vms(plain, "throttle", "verbs", "--fraction", "0.3", "--reason", "noisy").stdout == \
        "verbs: throttled to 0.3 CPU per vCPU\n"
    shown = vms(plain, "show", "verbs").stdout
    assert "throttled to 0.3 CPU per vCPU (noisy)" in shown
    assert "throttled to 0.3" in vms(plain, "list").stdout
    bad = vms(plain, "throttle", "verbs", "--fraction", "3", check=False)
    assert bad.returncode == 2 and "--fraction" in bad.stderr
    vms(plain, "unthrottle", "verbs")
    assert "throttled to" not in vms(plain, "show", "verbs").stdout
    down = vms(plain, "emergency-shutdown", "verbs", "--reason", "incident 42")
    assert down.stdout == "verbs: stopped (incident 42)\n"
    assert "incident 42" in vms(plain, "list").stdout
    vms(plain, "destroy", "verbs")
