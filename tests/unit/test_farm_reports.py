"""Farm reports: JUnit valid against the shipped XSD and readable by junitparser, job JUnit files
merged in, guest text escaped in XML and HTML; the history's run lookup."""
from pathlib import Path

import pytest
import xmlschema
from junitparser import Failure, JUnitXml

from vmsandbox.exceptions import NotFoundError
from vmsandbox.farm.history import History
from vmsandbox.farm.reports import html_page, junit, write_html, write_junit
from vmsandbox.farm.runner import FarmResult

XSD = xmlschema.XMLSchema(str(Path(__file__).parent.parent / "data" / "junit.xsd"))


def outcome(name, status, **kw):
    base = {"name": name, "status": status, "reason": "", "flaky": False, "exit_code": 0, "timed_out": False,
            "policy_blocked": False, "started_at": 0.0, "duration": 1.5, "command_seconds": 1.0,
            "start_latency": 0.8, "attempts": [], "infra_retries": 0, "stdout_tail": "", "stderr_tail": "",
            "logs": {}, "artifacts": [], "artifact_notes": [], "junit_files": [], "kept": None, "sandbox": "",
            "run": "true", "line": 1}
    return {**base, **kw}


@pytest.fixture
def result(tmp_path):
    inner = tmp_path / "inner.xml"
    inner.write_text('<?xml version="1.0"?><testsuites><testsuite name="in" tests="2">'
                     '<testcase classname="pkg.mod" name="ok" time="0.1"/>'
                     '<testcase classname="pkg.mod" name="bad"><failure message="boom">x</failure></testcase>'
                     '</testsuite></testsuites>')
    log = tmp_path / "run" / "a" / "stdout.log"
    log.parent.mkdir(parents=True)
    log.write_text("hello")
    jobs = [
        outcome("a", "passed", junit_files=[str(inner)], logs={"stdout": str(log)},
                stdout_tail="<script>alert(1)</script>\x1b[2J\x00"),
        outcome("b<i>", "failed", exit_code=3, reason="exit code 3", stderr_tail="it & broke\x07",
                kept={"sandbox": "fm-x-01-b", "snapshot": "sn-1", "expires_at": 2e9,
                      "command": "vmsandbox clone sn-1 debug-b && vmsandbox ssh debug-b"}),
        outcome("c", "failed", timed_out=True, exit_code=None, reason="timed out after 3 s"),
        outcome("d", "error", reason="infrastructure error after 3 attempt(s): boom"),
        outcome("e", "skipped", reason="not run"),
        outcome("f", "passed", flaky=True, attempts=[{"status": "failed"}, {"status": "passed"}]),
    ]
    return FarmResult(run_id="20261202-000000-abcdef", farm="nightly", status="failed", started_at=1.8e9,
                      duration=12.5, outdir=str(tmp_path / "run"), base={"reused": True, "sandbox": "farmbase-x",
                                                                          "seconds": 0.1}, jobs=jobs)


def test_junit_is_valid_and_readable(result, tmp_path):
    path = tmp_path / "report.xml"
    write_junit(result, path)
    XSD.validate(str(path))
    doc = JUnitXml.fromfile(str(path))
    suites = {s.name: s for s in doc}
    main = suites["nightly"]
    cases = {c.name: c for c in main}
    assert set(cases) == {"a", "b<i>", "c", "d", "e", "f"}
    assert all(c.classname == "nightly" for c in cases.values())
    assert cases["a"].is_passed and cases["f"].is_passed and "flaky" in cases["f"].system_out
    (fail,) = cases["b<i>"].result
    assert isinstance(fail, Failure) and fail.type == "exit code 3" and "it & broke" in fail.text
    assert "vmsandbox clone sn-1 debug-b" in cases["b<i>"].system_out
    assert cases["c"].result[0].type == "timeout"
    assert cases["d"].is_error and cases["e"].is_skipped
    assert main.tests == 6 and main.failures == 2 and main.errors == 1 and main.skipped == 1
    merged = suites["nightly.a"]
    assert [(c.classname, c.name, c.is_passed) for c in merged] == [
        ("nightly.a.pkg.mod", "ok", True), ("nightly.a.pkg.mod", "bad", False)]
    text = path.read_text()
    assert "\x1b" not in text and "\x00" not in text and "\x07" not in text


def test_the_schema_check_can_fail(result, tmp_path):
    doc = junit(result)
    path = tmp_path / "bad.xml"
    doc.write(str(path))
    path.write_text(path.read_text().replace('<testcase name="c"', '<testcase nom="c"'))
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        XSD.validate(str(path))


def test_html_escapes_guest_and_job_file_text_and_links_logs(result, tmp_path):
    path = tmp_path / "report.html"
    write_html(result, path)
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "b&lt;i&gt;" in page and "<i>" not in page
    assert "\x1b" not in page and "\\x1b[2J" in page and "\\x00" in page
    assert '<a href="run/a/stdout.log">stdout</a>' in page
    assert "vmsandbox clone sn-1 debug-b &amp;&amp; vmsandbox ssh debug-b" in page
    assert "1 flaky" in page and "base farmbase-x (reused" in page
    assert html_page(result, path) == page


def test_history_run_lookup(tmp_path):
    h = History(tmp_path / "farm.db")
    h.start_run("20261202-000000-abcdef", "n", "f.yaml", "/o", ["a", "b"])
    h.start_run("20261202-000001-123456", "n", "f.yaml", "/o", ["a"])
    assert h.run("20261202-000000")["id"] == "20261202-000000-abcdef"
    assert [j["name"] for j in h.run("20261202-000000-abcdef")["jobs"]] == ["a", "b"]
    with pytest.raises(NotFoundError, match="matches 2 runs"):
        h.run("20261202")
    with pytest.raises(NotFoundError, match="no farm run"):
        h.run("zzzz")
    h.finish_run("20261202-000001-123456", "passed", {"passed": 1}, {"junit": "/x.xml"})
    assert [r["status"] for r in h.runs()] == ["passed", "running"]
    assert h.unfinished_runs()[0]["id"] == "20261202-000000-abcdef"
    h.close()
