"""The farm on Celery + Redis with real guests: a private redis-server on 127.0.0.1 (random
port) and two real workers (`vmsandbox farm worker`) with separate state directories on this
machine. Six jobs spread over both workers; a worker SIGKILLed mid-job loses nothing (the job
runs again on the other worker, reported once); the killed worker restarted leaves no clone
behind; a submit with the broker down exits 2; a malformed task is rejected, never executed."""
import json
import os
import signal
import socket
import subprocess
import urllib.request
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.redis_server import RedisServer

from .conftest import Env, virsh_domains

VMSANDBOX = [str(Path(sys.executable).parent / "vmsandbox")]
if not Path(VMSANDBOX[0]).exists():
    VMSANDBOX = [sys.executable, "-m", "vmsandbox.cli"]

FARM = """\
name: dist
base:
  box: tiny
  setup: "mkdir -p /work && echo ready > /work/base"
  upload: {"./src": "/work/src"}
defaults: {timeout: 30, memory: 256M, retries: 1}
jobs:
  - name: hold
    run: "sh /work/src/job.sh hold"
    artifacts: ["/work/out/"]
matrix:
  - name: "quick-{N}"
    run: "sh /work/src/job.sh quick-$N"
    artifacts: ["/work/out/"]
    vars: {N: [1, 2, 3, 4, 5]}
"""

JOB_SH = """\
mkdir -p /work/out
echo "$1 ran on $(cat /work/base)" > /work/out/result.txt
case "$1" in hold) sleep "${HOLD:-1}" ;; *) sleep 1 ;; esac
echo "done $1"
"""


class Workers:
    def __init__(self, d: Path, url: str) -> None:
        self.d, self.url = d, url
        self.envs = {n: Env() for n in ("wa", "wb")}
        self.procs: dict[str, subprocess.Popen] = {}
        for n, e in self.envs.items():
            (d / f"{n}.yaml").write_text(yaml.safe_dump(e.config()))

    def start(self, name: str, visibility: int, metrics_port: int = 0) -> None:
        logf = self.d / f"{name}.log"
        skip = logf.stat().st_size if logf.exists() else 0
        log = open(logf, "a")
        self.procs[name] = subprocess.Popen(
            VMSANDBOX + ["--config", str(self.d / f"{name}.yaml"), "farm", "worker", "--broker", self.url,
                         "--slots", "2", "--name", name, "--visibility-timeout", str(visibility)]
            + (["--metrics-port", str(metrics_port)] if metrics_port else []),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "ready." in logf.read_text()[skip:] and name in {w["name"] for w in self.workers()}:
                return
            assert self.procs[name].poll() is None, (self.d / f"{name}.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"worker {name} did not come up: " + (self.d / f"{name}.log").read_text()[-3000:])

    def workers(self) -> list:
        r = subprocess.run(VMSANDBOX + ["farm", "workers", "--broker", self.url, "--json"], capture_output=True,
                           text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else []

    def stop(self, name: str, sig=signal.SIGTERM) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            os.killpg(p.pid, sig)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


@pytest.fixture(scope="module")
def farm(tiny_box, tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    (d / "src").mkdir()
    (d / "src" / "job.sh").write_text(JOB_SH)
    (d / "farm.yaml").write_text(FARM)
    sub = Env()
    (d / "sub.yaml").write_text(yaml.safe_dump(sub.config()))
    srv = RedisServer()
    url = srv.start()
    w = Workers(d, url)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            w.metrics_port = s.getsockname()[1]
        w.start("wa", 300, w.metrics_port)
        w.start("wb", 300)
        yield d, url, w
    finally:
        for n in list(w.procs):
            w.stop(n)
        srv.stop()
        leaks = {n: e.teardown() for n, e in w.envs.items()}
        leaks["submitter"] = sub.teardown()
        # the bases are persistent sandboxes the teardown removed; nothing else may be left
        assert all(v == {"domains": [], "layers": [], "memory": []} for v in leaks.values()), leaks


def submit(d: Path, url: str, *args, farm_file="farm.yaml", **kw):
    return subprocess.Popen(VMSANDBOX + ["--config", str(d / "sub.yaml"), "farm", "run", farm_file, "--broker", url,
                                         "--json", "report.json", "--junit", "report.xml", *args],
                            cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_six_jobs_spread_over_two_workers_with_outputs_back(farm):
    d, url, w = farm
    p = submit(d, url)
    out, err = p.communicate(timeout=420)
    assert p.returncode == 0, out + err
    rep = json.loads((d / "report.json").read_text())
    assert {j["name"]: j["status"] for j in rep["jobs"]} == {n: "passed" for n in
                                                            ["hold"] + [f"quick-{i}" for i in range(1, 6)]}
    assert {j["worker"] for j in rep["jobs"]} == {"wa", "wb"}, [j["worker"] for j in rep["jobs"]]
    for j in rep["jobs"]:       # logs and artifacts came back under the submitter's outdir
        assert Path(j["logs"]["stdout"]).read_text() == f"done {j['name']}\n"
        assert Path(j["logs"]["stdout"]).is_relative_to(rep["outdir"])
        art = Path(j["artifacts"][0]["local"]) / "result.txt"
        assert art.read_text() == f"{j['name']} ran on ready\n"
    xml = (d / "report.xml").read_text()
    assert "ran on worker" in out and xml.count("<testcase") == 6 and xml.count("ran on worker w") == 6
    time.sleep(1)                   # the last heartbeat (sent when a slot frees) has landed
    ws = {x["name"]: x for x in w.workers()}
    assert ws["wa"]["slots"] == 2 and ws["wa"]["busy"] == ws["wb"]["busy"] == 0
    assert ws["wa"]["done"] + ws["wb"]["done"] == 6
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=10).read().decode()
    assert "vmsandbox_farm_slots 2.0" in metrics and "vmsandbox_farm_jobs_running 0.0" in metrics
    assert f"vmsandbox_farm_jobs_passed_total {float(ws['wa']['done'])}" in metrics


def test_malformed_task_is_rejected_not_run(farm):
    d, url, w = farm
    from vmsandbox.farm.distributed import KEY, TASK, make_app, redis_client
    app = make_app(url)
    run_id = "20261202-000000-0badf0"
    bad = {"v": 1, "run_id": run_id, "index": 0, "farm": "dist",
           "base": {"box": "tiny", "setup": None, "upload": [], "cpu": "1", "memory": "256M", "disk": "1G",
                    "network": "none", "timeout": 60},
           "job": {"name": "evil", "run": ["touch", "/pwned"], "shell": "bash"}}
    app.send_task(TASK, args=[bad], queue="farm")
    r = redis_client(url)
    got = r.blpop([KEY + "events:" + run_id], timeout=60)
    assert got, "no rejection reported"
    ev = json.loads(got[1])
    assert ev["state"] == "done" and ev["outcome"]["status"] == "error"
    assert "malformed task" in ev["outcome"]["reason"] and "unknown keys: ['shell']" in ev["outcome"]["reason"]
    for e in w.envs.values():
        assert not [n for n in virsh_domains(e.prefix) if "evil" in n]
    # a well-formed job in a pickled message is refused before any of our code sees it
    from vmsandbox.farm import loads_farm
    from vmsandbox.farm.distributed import make_payload
    spec = loads_farm('name: dist\nbase: {box: tiny}\njobs: [{name: pickled, run: "true"}]\n')
    run2 = "20261202-000000-0badf1"
    app.send_task(TASK, args=[make_payload(spec, spec.jobs[0], run2, 0, [])], queue="farm", serializer="pickle")
    deadline = time.monotonic() + 30
    while not any("untrusted content" in (d / f"{n}.log").read_text() for n in ("wa", "wb")):
        assert time.monotonic() < deadline, "no worker refused the pickled message"
        time.sleep(0.5)
    time.sleep(2)
    assert r.llen(KEY + "events:" + run2) == 0 and not r.exists(f"{KEY}attempt:{run2}:0")
    time.sleep(1)
    assert sum(x.get("rejected", 0) for x in w.workers()) == 1


def test_worker_sigkilled_mid_job_loses_nothing(farm):
    d, url, w = farm
    for n in ("wa", "wb"):          # bases exist now: a short visibility timeout is safe and the test quick
        w.stop(n)
        w.start(n, 90)
    # the same base (env is not one of its inputs); the held job runs long enough to be killed under
    (d / "hold.yaml").write_text(FARM.replace('run: "sh /work/src/job.sh hold"',
                                              'run: "sh /work/src/job.sh hold"\n    env: {HOLD: "20"}'))
    p = submit(d, url, farm_file="hold.yaml", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    victim = None
    deadline = time.monotonic() + 240
    lines = []
    while victim is None and time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("farm: hold: running on "):
            victim = line.split()[-1]
    assert victim in ("wa", "wb"), "".join(lines)
    time.sleep(1)
    w.stop(victim, signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, out + "".join(lines) + err
    rep = json.loads((d / "report.json").read_text())
    assert len(rep["jobs"]) == 6 and all(j["status"] == "passed" for j in rep["jobs"])
    hold = next(j for j in rep["jobs"] if j["name"] == "hold")
    survivor = ({"wa", "wb"} - {victim}).pop()
    assert hold["worker"] == survivor and hold["retried_after_worker_loss"] == 1
    assert "retried after worker loss" in hold["artifact_notes"]
    assert "hold: ran on worker %s (retried after worker loss)" % survivor in out
    # the killed worker's clone is still running; a restart cleans it up
    e = w.envs[victim]
    w.start(victim, 90)
    log = (d / f"{victim}.log").read_text()
    assert "removed orphan clone fm-" in log, log[-2000:]
    from vmsandbox import SandboxCore
    c = SandboxCore(config=e.config())
    try:
        names = [i.name for i in c.list_sandboxes()]
        assert all(n.startswith("farmbase-") for n in names), names
        assert len(virsh_domains(e.prefix)) == len(names)
    finally:
        c.close()


def test_submit_with_broker_down_exits_2(farm):
    d, url, w = farm
    srv = RedisServer()
    dead = srv.start()
    srv.stop()
    p = submit(d, dead)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the broker redis://127.0.0.1:") and "cannot be reached" in last
    assert "Traceback" not in err
