"""The distributed farm's pieces on a private redis-server (no guests): payload validation,
queues of tags, blobs, the broker-down error. Real guests: tests/integration/test_farm_distributed.py."""
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from vmsandbox.exceptions import ConfigError
from vmsandbox.farm import loads_farm
from vmsandbox.farm.distributed import (BrokerError, check_broker, get_blob, make_payload, put_blob, queue_for,
                                        validate_payload, worker_queues)
from vmsandbox.farm.errors import FarmError

FARM = """\
name: dist
base: {box: tiny, setup: "true"}
jobs:
  - {name: a, run: "echo a", tags: [kvm, debian], artifacts: ["/out"]}
  - {name: b, run: "echo b", workdir: /tmp}
"""


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as url:
        yield url


def payload(i=0):
    spec = loads_farm(FARM)
    return make_payload(spec, spec.jobs[i], "20261202-120000-abcdef", i, [["0" * 64, ".", "/work/src"]])


def test_payload_round_trips_and_is_json():
    import json
    for i in (0, 1):
        p = json.loads(json.dumps(payload(i)))
        run_id, index, spec, job, ups = validate_payload(p)
        assert job == loads_farm(FARM).jobs[i]
        assert (run_id, index, ups) == ("20261202-120000-abcdef", i, [["0" * 64, ".", "/work/src"]])


@pytest.mark.parametrize("mutate,where", [
    (lambda p: p["job"].update(run=["rm", "-rf"]), "task.job.run"),
    (lambda p: p["job"].update(shell="bash"), "task.job"),
    (lambda p: p["job"].update(timeout=-1), "task.job.timeout"),
    (lambda p: p["job"].update(name="../x"), "task.job.name"),
    (lambda p: p.update(run_id="x; rm"), "task.run_id"),
    (lambda p: p["base"].update(upload=[["0" * 64, "../..", "/w"]]), "task.base.upload"),
    (lambda p: p["base"].update(box="../../etc"), "task.base.box"),
    (lambda p: p.update(extra=1), "task"),
])
def test_malformed_payloads_are_rejected(mutate, where):
    p = payload()
    mutate(p)
    with pytest.raises(ConfigError) as e:
        validate_payload(p)
    assert e.value.path == where


def test_queues_of_tags():
    assert queue_for([]) == "farm" and queue_for(["kvm", "debian"]) == "farm.debian.kvm"
    assert set(worker_queues(["kvm", "debian"])) == {"farm", "farm.debian", "farm.kvm", "farm.debian.kvm"}


def test_blobs_round_trip_dedupe_and_cap(redis_url):
    r = check_broker(redis_url)
    data = bytes(range(256)) * 9000          # > 2 chunks
    d = put_blob(r, data)
    assert put_blob(r, data) == d and get_blob(r, d) == data
    assert r.ttl("vmsandbox:farm:blob:" + d) > 0
    with pytest.raises(FarmError, match="cap"):
        put_blob(r, data, limit=1000)
    with pytest.raises(FarmError, match="missing"):
        get_blob(r, "1" * 64)


def test_broker_down_is_a_clear_error():
    srv = RedisServer()
    url = srv.start()
    srv.stop()
    with pytest.raises(BrokerError, match="cannot be reached"):
        check_broker(url)


def test_a_broker_lost_mid_run_is_a_clear_error_after_the_reconnect_window():
    import time

    from vmsandbox.farm.distributed import _retrying
    srv = RedisServer()
    url = srv.start()
    r = check_broker(url)
    srv.stop()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match="lost the broker while waiting .* within 2 s"):
        _retrying(lambda: r.ping(), "waiting", patience=2)
    assert time.monotonic() - t0 < 15


def test_the_celery_app_takes_json_only_and_acks_late():
    from vmsandbox.farm.distributed import make_app
    c = make_app("redis://127.0.0.1:1/0", visibility_timeout=900).conf
    assert c.accept_content == ["json"] and c.task_serializer == "json"
    assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1
    assert c.broker_transport_options["visibility_timeout"] == 900


def test_the_cli_without_broker_does_not_load_celery():
    import subprocess
    import sys
    code = ("import sys; from vmsandbox.cli import main; import vmsandbox.farm, vmsandbox.cli.farm_cmds; "
            "assert 'celery' not in sys.modules and 'redis' not in sys.modules, 'loaded'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_job_longer_than_a_workers_visibility_timeout_is_refused():
    from vmsandbox.farm.distributed import check_visibility
    jobs = loads_farm(FARM.replace('run: "echo b"', 'run: "echo b", timeout: 3600')).jobs
    check_visibility([{"name": "w1", "visibility_timeout": 7200}], jobs)
    with pytest.raises(FarmError, match="job 'b' may run 3600 s.*worker w2 \\(3600 s\\)"):
        check_visibility([{"name": "w1", "visibility_timeout": 7200}, {"name": "w2", "visibility_timeout": 3600}],
                         jobs)


def test_outputs_land_where_the_local_runner_puts_them(redis_url, tmp_path):
    from vmsandbox.farm.distributed import _land, pack
    wdir = tmp_path / "worker" / "run" / "unit"
    (wdir / "artifacts" / "work").mkdir(parents=True)
    (wdir / "stdout.log").write_text("out\n")
    (wdir / "artifacts" / "work" / "r.xml").write_text("<testsuite/>")
    r = check_broker(redis_url)
    outcome = {"name": "unit", "status": "passed", "worker": "w1", "worker_dir": str(wdir),
               "output_blob": put_blob(r, pack(wdir, ".")), "logs": {"stdout": str(wdir / "stdout.log")},
               "artifacts": [{"path": "/work/", "local": str(wdir / "artifacts" / "work"), "bytes": 10}],
               "junit_files": [str(wdir / "artifacts" / "work" / "r.xml")]}
    dest = tmp_path / "sub" / "run" / "unit"
    got = _land(r, outcome, dest)
    assert got["logs"] == {"stdout": str(dest / "stdout.log")} and (dest / "stdout.log").read_text() == "out\n"
    assert got["artifacts"][0]["local"] == str(dest / "artifacts" / "work")
    assert Path(got["junit_files"][0]).read_text() == "<testsuite/>"
    assert "output_blob" not in got and "worker_dir" not in got and got["worker"] == "w1"
    assert got["stdout_tail"] == "" and got["attempts"] == []        # every key the reports read is there
