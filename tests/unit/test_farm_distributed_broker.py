"""The submitter against a broker that stalls or restarts mid-run, with a worker on the fake
provider (bench/farm_fake_worker.py) behind the real Celery path and a private redis-server:
a stall is ridden out (the run completes), a restart that lost the queue fails the run with a
clear message; neither hangs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from vmsandbox.farm import Farm, loads_farm
from vmsandbox.farm.distributed import list_workers, run_distributed
from vmsandbox.testing import fake_core

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def broker_and_worker(tmp_path):
    srv = RedisServer()
    url = srv.start()
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "farm_fake_worker.py"), url, "fw", "2",
                          str(tmp_path / "w")], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "w.log", "w"),
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list_workers(url):
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "w.log").read_text()
            time.sleep(0.3)
        time.sleep(1)
        yield srv, url
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def farm(tmp_path, n=6, seconds=1.5):
    return Farm(loads_farm("name: b\nbase: {box: tiny}\ndefaults: {timeout: 30}\nmatrix:\n"
                           f"  - {{name: 'j{{N}}', run: 'sleep {seconds}', vars: {{N: {list(range(n))}}}}}\n",
                           base_dir=tmp_path))


def test_a_broker_that_stalls_mid_run_is_ridden_out(broker_and_worker, tmp_path):
    srv, url = broker_and_worker
    import threading

    def stall():
        time.sleep(1.0)
        os.kill(srv.proc.pid, signal.SIGSTOP)     # the broker stops answering: client timeouts (5 s)
        time.sleep(7)
        os.kill(srv.proc.pid, signal.SIGCONT)
    t = threading.Thread(target=stall)
    t.start()
    res = run_distributed(farm(tmp_path), fake_core(tmp_path / "sub"), url, outdir=tmp_path / "out", patience=30)
    t.join()
    assert res.status == "passed", (res.error, res.counts())
    assert res.counts()["passed"] == 6


def test_a_broker_restarted_without_its_data_fails_the_run_clearly(broker_and_worker, tmp_path):
    srv, url = broker_and_worker
    import threading
    port = srv.port

    def restart():
        time.sleep(1.5)
        srv.stop()
        time.sleep(1)
        srv.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = threading.Thread(target=restart)
    t.start()
    t0 = time.monotonic()
    res = run_distributed(farm(tmp_path, n=12, seconds=2), fake_core(tmp_path / "sub"), url,
                          outdir=tmp_path / "out", patience=20)
    t.join()
    assert res.status == "error" and res.exit_code == 2
    assert "the broker lost this run's queued jobs" in res.error
    assert time.monotonic() - t0 < 60
