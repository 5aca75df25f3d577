"""The service's bookkeeping on the fake core: one per state directory, pidfile and status,
gc (ttl expiry) on its interval, the metrics endpoint on loopback, a clean stop on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from vmsandbox.exceptions import ConfigError, StateError
from vmsandbox.service import Service, service_status
from vmsandbox.testing import fake_core


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_one_service_per_state_dir_status_gc_metrics_and_stop(tmp_path):
    core = fake_core(tmp_path, {"safety": {"validation": {"enabled": False}},
                                "monitoring": {"interval_seconds": 0.2}})
    sid = core.create_sandbox("short", {"ttl_seconds": 0.5})
    port = _free_port()
    svc = Service(lambda: core, tmp_path, gc_interval=0.2, metrics_port=port)
    assert not service_status(tmp_path).running
    t = threading.Thread(target=svc.run, kwargs={"install_signals": False})
    t.start()
    try:
        _wait(lambda: service_status(tmp_path).running and service_status(tmp_path).detail)
        st = service_status(tmp_path)
        assert st.pid == os.getpid() and st.detail == f"metrics http://127.0.0.1:{port}/metrics"
        with pytest.raises(StateError, match=f"already runs for {tmp_path} \\(pid {os.getpid()}\\)"):
            Service(lambda: core, tmp_path).run(install_signals=False)
        _wait(lambda: core.store.find_sandbox(sid) is None)          # ttl expired: gc destroyed it
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "vmsandbox_health_status" in body
    finally:
        svc.stop()
        t.join(10)
    assert not t.is_alive() and not service_status(tmp_path).running
    assert not (tmp_path / "service.pid").exists()
    log = (tmp_path / "logs" / "service.log").read_text()
    assert "service started" in log and "gc removed sandbox short" in log and "service stopped" in log
    ops = [(r["operation"], r["outcome"]) for r in core.audit_log(limit=500)]
    assert ("service", "started") in ops and ("service", "stopped") in ops


def test_bad_interval_and_non_loopback_metrics(tmp_path):
    with pytest.raises(ConfigError, match="--gc-interval"):
        Service(lambda: None, tmp_path, gc_interval=0)
    from vmsandbox.metrics import serve_metrics
    with pytest.raises(ConfigError, match="not a loopback address"):
        serve_metrics(None, "0.0.0.0", 9464)


def test_cli_serve_stops_cleanly_on_sigterm(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sandbox: {{state_directory: {tmp_path}/state, provider: fake}}\n"
                   "monitoring: {interval_seconds: 0.2}\n")
    cmd = [sys.executable, "-m", "vmsandbox", "--config", str(cfg)]
    proc = subprocess.Popen([*cmd, "serve", "--metrics-port", "0", "--gc-interval", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: service_status(tmp_path / "state").running, 20)
        second = subprocess.run([*cmd, "serve", "--metrics-port", "0"], capture_output=True, text=True, timeout=30)
        assert second.returncode == 4 and second.stderr.strip().endswith(f"(pid {proc.pid}); stop it first (SIGTERM)")
        doctor = subprocess.run([*cmd, "list"], capture_output=True, text=True, timeout=30)
        assert f"service: running (pid {proc.pid})" in doctor.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "service stopped" in err and "Traceback" not in err
    assert not service_status(tmp_path / "state").running
    listed = subprocess.run([*cmd, "list"], capture_output=True, text=True, timeout=30)
    assert "service: not running" in listed.stderr
