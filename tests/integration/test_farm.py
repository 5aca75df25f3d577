"""The test farm on real guests (tiny box): a job file with passing, failing, timing-out,
policy-blocked and artifact-producing jobs and a 4-way matrix, run through the CLI; JUnit,
HTML and artifacts on disk; the kept failed state cloned and inspected; base reuse; Ctrl-C."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xmlschema
import yaml
from junitparser import JUnitXml

from .conftest import assert_clean, virsh_domains

XSD = Path(__file__).parent.parent / "data" / "junit.xsd"
VMSANDBOX = [str(Path(sys.executable).parent / "vmsandbox")]

RUN_TESTS = """\
#!/bin/sh
case "$1" in
  unit) mkdir -p out; echo "unit ok" > out/result.txt
        printf '<?xml version="1.0"?><testsuite name="inner" tests="2"><testcase classname="pkg.mod" name="t1" time="0.1"/><testcase classname="pkg.mod" name="t2" time="0.2"/></testsuite>' > out/junit.xml
        echo "all good" ;;
  lint) echo "evidence of the failure" > /work/failure.txt; echo "lint: 1 error" >&2; exit 3 ;;
  shard) echo "shard $2 ok" ;;
  hang) echo "started"; sleep 600 ;;
esac
"""

FARM = """\
name: itest
base:
  box: tiny
  setup: "mkdir -p /work && echo ready > /work/base"
  upload: {"./src": "/work/src"}
defaults: {timeout: 60, memory: 256M, keep_failed_ttl: 3600}
jobs:
  - name: unit
    run: "cd /work/src && sh run-tests.sh unit"
    artifacts: ["/work/src/out/", "/work/not-there"]
  - name: lint
    run: "cd /work/src && sh run-tests.sh lint"
  - name: hang
    run: "cd /work/src && sh run-tests.sh hang"
    timeout: 3
  - name: wipe
    run: "rm -rf /"
matrix:
  - name: "shard-{SHARD}"
    run: "cd /work/src && sh run-tests.sh shard $SHARD"
    vars: {SHARD: [1, 2, 3, 4]}
"""


@pytest.fixture(scope="module")
def work(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("farm")
    (d / "src").mkdir()
    (d / "src" / "run-tests.sh").write_text(RUN_TESTS)
    (d / "farm.yaml").write_text(FARM)
    (d / "cfg.yaml").write_text(yaml.safe_dump(env.config()))
    return d


def vms(work, *args, **kw):
    return subprocess.run(VMSANDBOX + ["--config", str(work / "cfg.yaml"), *args], cwd=work, capture_output=True,
                          text=True, timeout=600, **kw)


def test_farm_run_reports_artifacts_kept_state_and_reuse(env, core, work):
    r = vms(work, "farm", "run", "farm.yaml", "--parallel", "4", "--junit", "report.xml", "--html", "report.html",
            "--json", "report.json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "base built" in r.stdout
    rep = json.loads((work / "report.json").read_text())
    by = {j["name"]: j for j in rep["jobs"]}
    assert {n: j["status"] for n, j in by.items()} == {
        "unit": "passed", "lint": "failed", "hang": "failed", "wipe": "failed",
        "shard-1": "passed", "shard-2": "passed", "shard-3": "passed", "shard-4": "passed"}
    assert by["lint"]["exit_code"] == 3 and "lint: 1 error" in by["lint"]["stderr_tail"]
    assert by["hang"]["timed_out"] and by["hang"]["command_seconds"] < 10 and "started" in by["hang"]["stdout_tail"]
    assert by["wipe"]["policy_blocked"] and "blocked" in by["wipe"]["reason"]
    assert by["shard-3"]["stdout_tail"].strip() == "shard 3 ok"
    # artifacts on disk, a missing one noted; the job's own JUnit file merged in
    run_dir = Path(rep["outdir"])
    assert (run_dir / "unit" / "artifacts" / "work" / "src" / "out" / "result.txt").read_text() == "unit ok\n"
    assert any("/work/not-there: missing" in n for n in by["unit"]["artifact_notes"])
    assert (run_dir / "lint" / "stderr.log").read_text() == "lint: 1 error\n"
    xmlschema.XMLSchema(str(XSD)).validate(str(work / "report.xml"))
    suites = {s.name: s for s in JUnitXml.fromfile(str(work / "report.xml"))}
    assert suites["itest"].tests == 8 and suites["itest"].failures == 3
    assert sorted(c.name for c in suites["itest.unit"]) == ["t1", "t2"]
    page = (work / "report.html").read_text()
    assert "shard-4" in page and "unit/artifacts/work/src/out" in page and "lint/stderr.log" in page
    # the failed states are kept: the one command in the report gets exactly that state
    kept = by["lint"]["kept"]
    assert kept["command"] in r.stdout and by["hang"]["kept"] and by["wipe"]["kept"] is None
    dbg = core.create_sandbox("debug-lint", {"clone_from": kept["snapshot"]})
    assert core.execute(dbg, "cat /work/failure.txt /work/base").stdout == "evidence of the failure\nready\n"
    core.destroy(dbg)
    # nothing else in libvirt: the base and the two kept clones
    names = sorted(i.name for i in core.list_sandboxes())
    assert names == sorted([rep["base"]["sandbox"], kept["sandbox"], by["hang"]["kept"]["sandbox"]])
    assert_clean(env, core)
    # history
    hist = json.loads(vms(work, "farm", "history", "--json").stdout)
    assert hist[0]["id"] == rep["run_id"] and hist[0]["status"] == "failed" and hist[0]["summary"]["failed"] == 3
    show = json.loads(vms(work, "farm", "show", rep["run_id"], "--json").stdout)
    assert {j["name"]: j["status"] for j in show["jobs"]} == {n: j["status"] for n, j in by.items()}

    # second run, same inputs: the base is reused; the passing subset exits 0
    r2 = vms(work, "farm", "run", "farm.yaml", "--only", "unit", "--only", "shard-1", "--json", "r2.json")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "base reused" in r2.stdout
    rep2 = json.loads((work / "r2.json").read_text())
    assert rep2["base"]["snapshots"] == rep["base"]["snapshots"] and len(rep["base"]["snapshots"]) == 4
    assert all(j["start_latency"] < 5 for j in rep2["jobs"])

    # gc of kept states (--all: they have not expired)
    g = vms(work, "farm", "gc", "--all")
    assert g.returncode == 0 and g.stdout.count("removed kept state") == 2
    assert [i.name for i in core.list_sandboxes()] == [rep["base"]["sandbox"]]
    assert_clean(env, core)


def test_ctrl_c_in_the_middle_leaves_nothing_behind(env, core, work):
    (work / "hang.yaml").write_text(FARM.split("jobs:")[0] + """jobs:
  - {name: h1, run: "cd /work/src && sh run-tests.sh hang"}
  - {name: h2, run: "cd /work/src && sh run-tests.sh hang"}
  - {name: h3, run: "cd /work/src && sh run-tests.sh hang"}
""")
    p = subprocess.Popen(VMSANDBOX + ["--config", str(work / "cfg.yaml"), "farm", "run", "hang.yaml",
                                      "--parallel", "2", "--junit", "hang.xml"],
                         cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = 0
    deadline = time.monotonic() + 180
    while running < 2 and time.monotonic() < deadline:       # wait until two jobs run their command
        line = p.stderr.readline()
        if not line:
            break
        running += line.rstrip().endswith(": running")
    assert running == 2
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 130, out + err
    assert "interrupted" in out
    doc = JUnitXml.fromfile(str(work / "hang.xml"))
    cases = {c.name: c for s in doc for c in s}
    assert cases["h1"].is_error and cases["h2"].is_error and cases["h3"].is_skipped
    left = [i.name for i in core.list_sandboxes()]
    assert len(left) == 1 and left[0].startswith("farmbase-")
    assert [d for d in virsh_domains(env.prefix) if "fm-" in d] == []
    assert_clean(env, core)
    hist = json.loads(vms(work, "farm", "history", "--json").stdout)
    assert hist[0]["status"] == "interrupted"
    assert vms(work, "farm", "gc").stdout.strip() == "nothing to remove"
