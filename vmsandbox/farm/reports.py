"""Reports of a farm run: JUnit XML (Jenkins, GitLab), one HTML page, JSON.

JUnit is built with junitparser: one testsuite named after the farm with one testcase per job
(classname = farm name; failure, error or skipped with the reason, exit code and output tail;
system-out/err). JUnit files a job left among its artifacts are parsed with the same library and
merged in as a suite ``<farm>.<job>`` whose cases' classnames start with ``<farm>.<job>``. Every
string that came from a guest or a job file is escaped (XML-safe, and HTML-escaped in the page).
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from junitparser import Error, Failure, JUnitXml, JUnitXmlError, Skipped, TestCase, TestSuite

from .text import printable

# ``result`` below is a ``runner.FarmResult`` (not imported: the runner imports this module)

log = logging.getLogger("vmsandbox.farm")
_XML_BAD = re.compile("[\ufffe\uffff\ud800-\udfff]")


def xml_text(s: str | None) -> str:
    """A string XML 1.0 can hold: control characters become visible escapes."""
    return _XML_BAD.sub("?", printable(s or ""))


def _case(result, job: dict) -> TestCase:
    case = TestCase(xml_text(job["name"]), xml_text(result.farm), float(job.get("duration") or 0.0))
    reason = xml_text(job.get("reason") or "")
    out_tail = xml_text(job.get("stdout_tail"))
    err_tail = xml_text(job.get("stderr_tail"))
    status = job["status"]
    if status == "failed":
        kind = "policy" if job.get("policy_blocked") else "timeout" if job.get("timed_out") else \
            f"exit code {job.get('exit_code')}"
        f = Failure(reason or "failed", kind)
        f.text = f"{reason}\n--- output tail ---\n{err_tail or out_tail}"
        case.result = [f]
    elif status == "error":
        e = Error(reason or "error", "infrastructure")
        e.text = reason
        case.result = [e]
    elif status == "skipped":
        case.result = [Skipped(reason or "skipped")]
    notes = []
    if job.get("flaky"):
        notes.append(f"flaky: passed after {sum(1 for a in job['attempts'] if a['status'] == 'failed')} failed run(s)")
    notes += [xml_text(n) for n in job.get("artifact_notes", [])]
    if job.get("worker"):
        notes.append(f"ran on worker {xml_text(job['worker'])}")
    if job.get("kept"):
        notes.append(f"failed state kept: {xml_text(job['kept']['command'])}")
    case.system_out = "\n".join(notes + ([out_tail] if out_tail else [])) or None
    if err_tail:
        case.system_err = err_tail
    return case


def junit(result) -> JUnitXml:
    doc = JUnitXml(xml_text(result.farm))
    suite = TestSuite(xml_text(result.farm))
    suite.timestamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(result.started_at))
    suite.hostname = socket.gethostname()
    for job in result.jobs:
        suite.add_testcase(_case(result, job))
    suite.add_property("run", result.run_id)
    suite.add_property("base_reused", str(result.base.get("reused")))
    suite.update_statistics()
    suite.time = float(result.duration)
    doc.add_testsuite(suite)
    for job in result.jobs:
        merged = _merged_suite(result, job)
        if merged is not None:
            doc.add_testsuite(merged)
    doc.update_statistics()
    return doc


def _merged_suite(result, job: dict):
    files = job.get("junit_files") or []
    if not files:
        return None
    prefix = f"{result.farm}.{job['name']}"
    suite = TestSuite(xml_text(prefix))
    for path in files:
        try:
            parsed = JUnitXml.fromfile(path)
        except (JUnitXmlError, OSError, SyntaxError, ValueError) as exc:
            log.warning("job %s: %s is not readable JUnit: %s", job["name"], path, exc)
            continue
        suites = [parsed] if isinstance(parsed, TestSuite) else list(parsed)
        for s in suites:
            for c in s:
                cls = c.classname or s.name or ""
                c.classname = xml_text(f"{prefix}.{cls}" if cls else prefix)
                suite.add_testcase(c)
    if not len(list(suite)):
        return None
    suite.update_statistics()
    return suite


def write_junit(result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    junit(result).write(str(path), pretty=True)


def write_json(result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    os.replace(tmp, path)


# -- HTML ------------------------------------------------------------------------------------
_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.passed{background:#e6f4ea}.failed{background:#fce8e6}.error{background:#fef7e0}.skipped{background:#f1f3f4}
pre{white-space:pre-wrap;word-break:break-all;max-height:20em;overflow:auto;background:#f8f8f8;padding:6px;margin:4px 0}
code{background:#f1f1f1;padding:1px 4px}.summary span{margin-right:1.5em}details{margin:2px 0}"""


def _e(s) -> str:
    return html.escape(printable("" if s is None else str(s)), quote=True)


def _link(target: str, base: Path, label: str) -> str:
    try:
        rel = os.path.relpath(target, base)
    except ValueError:
        rel = target
    href = "/".join(html.escape(part, quote=True) for part in Path(rel).parts)
    return f'<a href="{href}">{_e(label)}</a>'


def html_page(result, where: Path) -> str:
    base = where.parent.resolve()
    c = result.counts()
    rows = []
    for j in result.jobs:
        links = [_link(p, base, k) for k, p in sorted(j.get("logs", {}).items())]
        links += [_link(a["local"], base, a["path"]) for a in j.get("artifacts", [])]
        details = []
        if j.get("reason"):
            details.append(f"<div>{_e(j['reason'])}</div>")
        for n in j.get("artifact_notes", []):
            details.append(f"<div>note: {_e(n)}</div>")
        if j.get("worker"):
            details.append(f"<div>ran on worker {_e(j['worker'])}</div>")
        if j.get("kept"):
            k = j["kept"]
            details.append(f"<div>failed state kept until {_e(time.strftime('%Y-%m-%d %H:%M', time.localtime(k['expires_at'])))}:"
                           f" <code>{_e(k['command'])}</code></div>")
        if j.get("stdout_tail"):
            details.append(f"<details><summary>stdout (tail)</summary><pre>{_e(j['stdout_tail'])}</pre></details>")
        if j.get("stderr_tail"):
            details.append(f"<details><summary>stderr (tail)</summary><pre>{_e(j['stderr_tail'])}</pre></details>")
        status = j["status"] + (" (flaky)" if j.get("flaky") else "")
        latency = "" if j.get("start_latency") is None else f"{j['start_latency']:.2f} s"
        rows.append(f'<tr class="{_e(j["status"])}"><td>{_e(j["name"])}</td><td>{_e(status)}</td>'
                    f'<td>{j.get("duration", 0):.1f} s</td><td>{_e(latency)}</td>'
                    f'<td>{_e(j.get("exit_code"))}</td><td>{" ".join(links)}</td><td>{"".join(details)}</td></tr>')
    b = result.base
    base_line = (f"base {_e(b.get('sandbox'))} ({'reused' if b.get('reused') else 'built'} in "
                 f"{b.get('seconds', 0):.1f} s)") if b else "base not prepared"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.started_at))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>farm {_e(result.farm)} run {_e(result.run_id)}: {_e(result.status)}</title><style>{_CSS}</style></head>
<body><h1>farm {_e(result.farm)}: {_e(result.status)}</h1>
<p class="summary"><span>run {_e(result.run_id)}</span><span>started {_e(started)}</span>
<span>{result.duration:.1f} s</span><span>{base_line}</span></p>
<p class="summary"><span>{c['total']} jobs</span><span>{c['passed']} passed</span><span>{c['failed']} failed</span>
<span>{c['error']} errors</span><span>{c['skipped']} skipped</span><span>{c['flaky']} flaky</span></p>
{f'<p class="error">{_e(result.error)}</p>' if result.error else ''}
<table><thead><tr><th>job</th><th>status</th><th>duration</th><th>start latency</th><th>exit</th>
<th>logs and artifacts</th><th>details</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def write_html(result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(result, path.resolve()))
