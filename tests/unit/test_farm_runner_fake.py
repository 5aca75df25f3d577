"""The farm's runner on the fake core (no VM): statuses, retries, flaky jobs, kept states,
policy blocks, history, reports. Real guests are in tests/integration/test_farm.py."""
import io
import json
import os
import stat
import tarfile
import threading

import pytest

from vmsandbox import testing
from vmsandbox.exceptions import ProviderError
from vmsandbox.farm import Farm, loads_farm, run_job
from vmsandbox.farm.gc import farm_gc
from vmsandbox.farm.history import History, history_path
from vmsandbox.farm.job import Control
from vmsandbox.models import ExecutionResult
from vmsandbox.testing import fake_core

FARM = """\
name: unit
base: {box: tiny, setup: "mkdir -p /work"}
defaults: {timeout: 30, retries: 2}
jobs:
  - {name: good, run: "true"}
  - {name: bad, run: "exit 3"}
  - {name: flaky, run: "FLAKY", retry_on_failure: 2}
  - {name: wobbly, run: "INFRA"}
  - {name: deleter, run: "rm -rf /"}
"""


class ScriptedSession(testing.FakeSession):
    """Answers by command: 'exit N' fails, 'FLAKY' fails once, 'INFRA' loses the connection once."""
    seen: dict = {}
    lock = threading.Lock()

    def execute(self, command, timeout=None, working_dir=None, env=None, stdin=None, max_output=0,
                on_stdout=None, on_stderr=None):
        self.commands.append(command)
        with self.lock:
            n = self.seen[command] = self.seen.get(command, 0) + 1
        if command.startswith("if [ -e "):             # the farm packing an artifact
            path = command.split()[3]
            if path == "/missing":
                return ExecutionResult(stdout="missing\n", stderr="", exit_code=0, duration=0.01)
            if path == "/big":
                return ExecutionResult(stdout="999999999\n", stderr="", exit_code=0, duration=0.01)
            self.files["/tmp/.vmsandbox-farm.tar"] = make_tar(path.rsplit("/", 1)[1], b"result\n")
            return ExecutionResult(stdout="10240\n", stderr="", exit_code=0, duration=0.01)
        if command == "INFRA" and n == 1:
            raise ProviderError("connection to 127.0.0.1:1 lost while a command was running")
        code = 0
        if command.startswith("exit "):
            code = int(command.split()[1])
        if command == "FLAKY" and n == 1:
            code = 1
        if on_stdout:
            on_stdout(b"out \x1b[31mred\n")
        return ExecutionResult(stdout="out \x1b[31mred\n", stderr="" if code == 0 else "it broke\n",
                               exit_code=code, duration=0.01)


def make_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"{name}/out.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../../escape.txt")     # a hostile guest's archive member
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    return buf.getvalue()


@pytest.fixture
def fcore(tmp_path, monkeypatch):
    monkeypatch.setattr(testing, "FakeSession", ScriptedSession)
    ScriptedSession.seen = {}
    c = fake_core(tmp_path)          # the command policy on: rm -rf / must be blocked
    yield c
    c.close()


def test_run_statuses_retries_kept_state_and_reports(fcore, tmp_path):
    spec = loads_farm(FARM, tmp_path, "farm.yaml")
    out = tmp_path / "out"
    res = Farm(spec).run(fcore, parallel=2, outdir=out,
                         reports={"junit": str(tmp_path / "r.xml"), "html": str(tmp_path / "r.html")})
    by = {j["name"]: j for j in res.jobs}
    assert res.status == "failed" and res.exit_code == 1
    assert by["good"]["status"] == "passed" and not by["good"]["flaky"]
    assert by["bad"]["status"] == "failed" and by["bad"]["exit_code"] == 3 and by["bad"]["reason"] == "exit code 3"
    assert by["flaky"]["status"] == "passed" and by["flaky"]["flaky"]
    assert [a["status"] for a in by["flaky"]["attempts"]] == ["failed", "passed"]
    assert by["wobbly"]["status"] == "passed" and by["wobbly"]["infra_retries"] == 1
    assert by["deleter"]["status"] == "failed" and by["deleter"]["policy_blocked"]
    assert by["deleter"]["reason"].startswith("policy: blocked") and by["deleter"]["kept"] is None
    # the failed job's clone is kept (stopped, with a memory snapshot); every other clone is gone
    kept = by["bad"]["kept"]
    assert kept["command"] == (f"vmsandbox --state-dir {fcore.state_dir} clone {kept['snapshot']} debug-bad && "
                               f"vmsandbox --state-dir {fcore.state_dir} ssh debug-bad")
    left = {i.name: i for i in fcore.list_sandboxes()}
    base = [n for n in left if n.startswith("farmbase-")]
    assert set(left) == set(base) | {kept["sandbox"]} and len(base) == 1
    assert left[kept["sandbox"]].state.value == "stopped"
    assert [s.id for s in fcore.list_snapshots(kept["sandbox"]) if s.has_memory] == [kept["snapshot"]]
    # logs on disk; the JSON report in the run directory; history recorded with 0600
    assert (out / res.run_id / "good" / "stdout.log").read_bytes() == b"out \x1b[31mred\n"
    assert json.loads((out / res.run_id / "report.json").read_text())["counts"]["failed"] == 2
    db = history_path(fcore.state_dir)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    h = History(db)
    run = h.run(res.run_id[:10] if len(h.runs()) == 1 else res.run_id)
    assert {j["name"]: j["status"] for j in run["jobs"]} == {j["name"]: j["status"] for j in res.jobs}
    assert [k["snapshot"] for k in h.kept()] == [kept["snapshot"]]
    h.close()
    # the guest's escape sequence never reaches the HTML or the JUnit file raw
    assert "\x1b" not in (tmp_path / "r.html").read_text() and "\\x1b[31mred" in (tmp_path / "r.html").read_text()
    assert "\x1b" not in (tmp_path / "r.xml").read_text()


def test_base_is_reused_while_inputs_do_not_change(fcore, tmp_path):
    spec = loads_farm("name: reuse\nbase: {box: tiny, setup: 'true'}\njobs: [{name: a, run: 'true'}]\n", tmp_path)
    first = Farm(spec).run(fcore, parallel=1, outdir=tmp_path / "o")
    second = Farm(spec).run(fcore, parallel=1, outdir=tmp_path / "o")
    assert first.base["reused"] is False and second.base["reused"] is True
    assert first.base["snapshot"] == second.base["snapshot"]
    rebuilt = Farm(spec).run(fcore, parallel=1, outdir=tmp_path / "o", rebuild_base=True)
    assert rebuilt.base["reused"] is False and rebuilt.base["snapshot"] != first.base["snapshot"]
    changed = loads_farm("name: reuse\nbase: {box: tiny, setup: 'echo 2'}\njobs: [{name: a, run: 'true'}]\n", tmp_path)
    other = Farm(changed).run(fcore, parallel=1, outdir=tmp_path / "o")
    assert other.base["reused"] is False
    # the farm's older base was replaced, not left behind
    assert [i.name for i in fcore.list_sandboxes()] == [other.base["sandbox"]]


def test_setup_failure_is_a_farm_error_exit_2_and_leaves_nothing(fcore, tmp_path):
    spec = loads_farm("name: s\nbase: {box: tiny, setup: 'exit 7'}\njobs: [{name: a, run: 'true'}]\n", tmp_path)
    res = Farm(spec).run(fcore, parallel=1, outdir=tmp_path / "o")
    assert res.status == "error" and res.exit_code == 2
    assert "base setup failed (exit code 7)" in res.error
    assert [j["status"] for j in res.jobs] == ["skipped"]
    assert fcore.list_sandboxes() == []


def test_infrastructure_errors_give_up_after_retries(fcore, tmp_path, monkeypatch):
    spec = loads_farm(FARM, tmp_path)
    fcore.provider.fail_on["restore_machine"] = ProviderError("libvirt hiccup")
    monkeypatch.setattr("vmsandbox.farm.job.wait_exponential", lambda **k: (lambda rs: 0))
    job = spec.job("good").to_dict() | {"retries": 1}
    snap_owner = fcore.create_sandbox("origin", {"box": "tiny"})
    snap = fcore.create_snapshot(snap_owner, "s")
    out = run_job(fcore, job, {"run_id": "r-abcdef", "index": 0, "snapshot": snap, "outdir": str(tmp_path)})
    assert out["status"] == "error" and out["infra_retries"] == 2
    assert out["reason"].startswith("infrastructure error after 2 attempt(s): ") and "libvirt hiccup" in out["reason"]
    assert [i.name for i in fcore.list_sandboxes()] == ["origin"]
    json.dumps(out)


def test_a_cancelled_job_stops_and_cleans_up(fcore, tmp_path):
    owner = fcore.create_sandbox("origin", {"box": "tiny"})
    snap = fcore.create_snapshot(owner, "s")
    control = Control()
    control.cancelled.set()
    out = run_job(fcore, {"name": "x", "run": "true"}, {"run_id": "r-abcdef", "index": 0, "snapshot": snap,
                                                         "outdir": str(tmp_path)}, control)
    assert out["status"] == "error" and out["reason"] == "interrupted"
    assert [i.name for i in fcore.list_sandboxes()] == ["origin"]


def test_farm_gc_removes_expired_kept_states_and_clones_of_dead_runs(fcore, tmp_path):
    spec = loads_farm(FARM, tmp_path)
    res = Farm(spec).run(fcore, parallel=2, outdir=tmp_path / "o")
    kept = res.job("bad")["kept"]
    assert farm_gc(fcore) == []                         # not expired yet
    h = History(history_path(fcore.state_dir))
    h.keep(kept["snapshot"], kept["sandbox"], res.run_id, "bad", 1.0)     # expired long ago
    # a run whose process died, with a clone left behind
    h.start_run("20260101-000000-dead01", "unit", "", str(tmp_path), ["a"])
    with h._tx() as db:
        db.execute("UPDATE runs SET pid=? WHERE id=?", (2 ** 22 + 7, "20260101-000000-dead01"))
    h.close()
    fcore.create_sandbox("fm-dead01-00-a", {"box": "tiny"})
    done = farm_gc(fcore)
    assert any("kept state" in d for d in done) and any("clone fm-dead01-00-a" in d for d in done)
    assert sorted(i.name for i in fcore.list_sandboxes()) == [res.base["sandbox"]]
    h = History(history_path(fcore.state_dir))
    assert h.kept() == [] and h.run("20260101-000000-dead01")["status"] == "interrupted"
    h.close()


def test_artifacts_copied_missing_noted_cap_respected(fcore, tmp_path):
    owner = fcore.create_sandbox("origin", {"box": "tiny"})
    snap = fcore.create_snapshot(owner, "s")
    job = {"name": "art", "run": "true", "artifacts": ["/missing", "/big", "/work/small/"], "artifacts_max": 1 << 20}
    out = run_job(fcore, job, {"run_id": "r-abcdef", "index": 0, "snapshot": snap, "outdir": str(tmp_path / "o")})
    assert out["status"] == "passed"
    assert out["artifacts"] == [{"path": "/work/small/", "local": str(tmp_path / "o/art/artifacts/work/small"),
                                 "bytes": 10240}]
    assert (tmp_path / "o/art/artifacts/work/small/out.txt").read_bytes() == b"result\n"
    notes = out["artifact_notes"]
    assert notes[0] == "artifact /missing: missing"
    assert notes[1].startswith("artifact /big: 999999999 bytes would pass the job's artifacts_max (1048576 bytes")
    assert notes[2] == "artifact /work/small/: refused 1 archive member(s) (outside the destination, links " \
        "or special files): ../../escape.txt"
    assert not (tmp_path / "o" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
