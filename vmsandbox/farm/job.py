"""Run one farm job in one linked clone of the base snapshot: ``run_job``.

This is the unit a scheduler hands out (a local thread pool here; a Celery task later): its
inputs are a JSON-serialisable job spec and run context, its output a JSON-serialisable outcome
dict. Everything goes through the public ``SandboxCore`` API (``create_sandbox`` with
``clone_from``, ``execute``, ``get_file``, ``create_snapshot``, ``stop``, ``destroy``), so the
command policy, the audit log and the watchdog apply to jobs as to any command.

Infrastructure faults (a clone that does not answer, a libvirt error, a guest that dies under
the command) are retried in a fresh clone with exponential backoff, ``retries`` times. A test
failure is re-run only when the job says ``retry_on_failure``; a later pass is marked flaky. A
failed job's clone is snapshotted with its memory and stopped (kept for ``keep_failed_ttl``);
a passed job's clone is destroyed at once.
"""
from __future__ import annotations

import logging
import re
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..exceptions import NotFoundError, ProviderError, SandboxError, SecurityError, StateError
from .spec import JobSpec
from .text import tail

log = logging.getLogger("vmsandbox.farm")

#: faults of the machinery, not of the job: retried in a fresh clone
INFRA_ERRORS = (ProviderError, StateError)
GUEST_TMP = "/tmp/.vmsandbox-farm.tar"
KEEP_SNAPSHOT = "farm-failed"


class Interrupted(Exception):
    """The run was interrupted; the job stops at the next step."""


class Control:
    """How a scheduler watches and stops a running job (``None`` fields: nobody is watching).

    ``cancelled`` is set to stop the job; ``on_state(job, state, info)`` reports progress;
    ``on_sandbox(job, sandbox_id)`` names each clone as soon as it exists, so an interrupted
    scheduler can destroy it from outside; ``dispose(sandbox_id)`` takes clones to destroy."""

    def __init__(self, on_state: Callable[[str, str, dict], None] | None = None,
                 on_sandbox: Callable[[str, str | None], None] | None = None,
                 dispose: Callable[[str], None] | None = None) -> None:
        self.cancelled = threading.Event()
        self._on_state = on_state
        self._on_sandbox = on_sandbox
        self._dispose = dispose

    def dispose(self, core, sandbox_id: str) -> None:
        """Destroy a clone that is no longer needed: inline, or handed to the scheduler's reaper
        (a destroy waits 1-2 s for QEMU to be reaped; the job's slot need not wait with it)."""
        if self._dispose:
            self._dispose(sandbox_id)
        else:
            destroy_clone(core, sandbox_id)

    def state(self, job: str, state: str, **info: Any) -> None:
        if self._on_state:
            self._on_state(job, state, info)

    def sandbox(self, job: str, sandbox_id: str | None) -> None:
        if self._on_sandbox:
            self._on_sandbox(job, sandbox_id)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Interrupted()


@dataclass
class _Attempt:
    status: str                      # passed | failed
    reason: str = ""
    exit_code: Optional[int] = None
    timed_out: bool = False
    policy_blocked: bool = False
    duration: float = 0.0
    start_latency: Optional[float] = None
    stdout: str = ""
    stderr: str = ""
    artifacts: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    junit_files: list = field(default_factory=list)
    kept: Optional[dict] = None
    sandbox: str = ""


def clone_name(run_id: str, index: int, job_name: str, attempt: int = 0) -> str:
    """A sandbox name for a job's clone: ``fm-<run>-<index>-<job>`` (a-z 0-9 -, at most 40)."""
    slug = re.sub(r"[^a-z0-9]+", "-", job_name.lower()).strip("-") or "job"
    prefix = f"{run_prefix(run_id)}{index:02d}{'r%d' % attempt if attempt else ''}-"
    return (prefix + slug)[:40].rstrip("-")


def run_prefix(run_id: str) -> str:
    """Every clone of a run has a name starting with this (``farm gc`` finds them by it)."""
    return f"fm-{run_id[-6:]}-"


def run_job(core, job: Mapping | JobSpec, ctx: Mapping, control: Control | None = None) -> dict:
    """Run ``job`` in a clone of ``ctx["snapshot"]``; returns its outcome (a JSON-serialisable dict).

    ``ctx``: ``run_id``, ``index`` (the job's position), ``snapshot`` (the base snapshot id),
    ``outdir`` (the run's output directory; the job writes ``<outdir>/<job>/``), and optionally
    ``debug_prefix`` (how the printed debug command calls vmsandbox). Never raises for a job's
    own failure: the outcome's ``status`` is ``passed``, ``failed`` or ``error`` (infrastructure,
    after its retries, or interrupted).
    """
    spec = job if isinstance(job, JobSpec) else JobSpec.from_dict(job)
    control = control or Control()
    job_dir = Path(ctx["outdir"]) / spec.name
    started_at = time.time()
    t0 = time.monotonic()
    attempts: list[dict] = []
    infra_retries = 0
    final: _Attempt | None = None
    error = ""
    try:
        for test_try in range(spec.retry_on_failure + 1):
            # only the last test run's failure is kept; earlier failed clones are destroyed
            actx = {**ctx, "keep": ctx.get("keep", True) and test_try == spec.retry_on_failure}

            def one() -> _Attempt:
                nonlocal infra_retries
                control.check()
                n = len(attempts)
                try:
                    return _attempt(core, spec, actx, control, job_dir, n)
                except INFRA_ERRORS as exc:
                    if control.cancelled.is_set():      # the scheduler destroyed the clone
                        raise Interrupted() from exc
                    infra_retries += 1
                    attempts.append({"status": "error", "reason": f"infrastructure: {exc}"})
                    control.state(spec.name, "retrying", reason=str(exc))
                    raise
            retrying = Retrying(retry=retry_if_exception_type(INFRA_ERRORS), stop=stop_after_attempt(spec.retries + 1),
                                wait=wait_exponential(multiplier=1, min=1, max=20), reraise=True,
                                sleep=lambda s: control.cancelled.wait(s))
            final = retrying(one)
            attempts.append({"status": final.status, "reason": final.reason, "exit_code": final.exit_code})
            if final.status == "passed" or final.policy_blocked:
                break
            if test_try < spec.retry_on_failure:
                control.state(spec.name, "retrying", reason=final.reason)
        status = final.status
    except Interrupted:
        status, error = "error", "interrupted"
    except INFRA_ERRORS as exc:
        status, error = "error", f"infrastructure error after {spec.retries + 1} attempt(s): {exc}"
    except RetryError as exc:       # pragma: no cover - reraise=True makes tenacity raise the cause
        status, error = "error", f"infrastructure error: {exc}"
    except SandboxError as exc:     # anything else the API raised is not the test's fault either
        status, error = "error", f"{type(exc).__name__}: {exc}"
    if control.cancelled.is_set() and status != "passed":
        status, error = "error", "interrupted"
    a = final or _Attempt(status=status)
    flaky = status == "passed" and any(x["status"] == "failed" for x in attempts)
    outcome = {
        "name": spec.name, "status": status, "reason": error or a.reason, "flaky": flaky,
        "exit_code": a.exit_code, "timed_out": a.timed_out, "policy_blocked": a.policy_blocked,
        "started_at": started_at, "duration": round(time.monotonic() - t0, 3),
        "command_seconds": round(a.duration, 3),
        "start_latency": None if a.start_latency is None else round(a.start_latency, 3),
        "attempts": attempts, "infra_retries": infra_retries,
        "stdout_tail": tail(a.stdout), "stderr_tail": tail(a.stderr),
        "logs": {k: str(job_dir / f"{k}.log") for k in ("stdout", "stderr") if (job_dir / f"{k}.log").exists()},
        "artifacts": a.artifacts, "artifact_notes": a.notes, "junit_files": a.junit_files,
        "kept": a.kept, "sandbox": a.sandbox, "run": spec.run, "line": spec.line,
    }
    control.state(spec.name, status, duration=outcome["duration"], reason=outcome["reason"], flaky=flaky)
    return outcome


def _attempt(core, spec: JobSpec, ctx: Mapping, control: Control, job_dir: Path, n: int) -> _Attempt:
    """One clone, one run of the command, its artifacts, then keep or destroy the clone."""
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    name = clone_name(ctx["run_id"], ctx["index"], spec.name, n)
    control.state(spec.name, "starting", attempt=n)
    t0 = time.monotonic()
    ttl = max(spec.keep_failed_ttl, spec.timeout + 600)    # core gc must not take a clone mid-job
    sid = core.create_sandbox(name, {"clone_from": ctx["snapshot"], "network_mode": spec.network,
                                     "ttl_seconds": ttl})
    control.sandbox(spec.name, sid)
    keep = False
    try:
        control.check()
        result = _run(core, sid, spec, control, job_dir, t0)
        result.sandbox = name
        if not result.policy_blocked:
            try:
                _collect_artifacts(core, sid, spec, job_dir, result)
            except SandboxError as exc:     # the job's result stands; its artifacts are incomplete
                control.check()
                result.notes.append(f"artifacts could not be copied: {exc}")
        control.check()
        if result.status == "failed" and spec.keep_failed and not result.policy_blocked and ctx.get("keep", True):
            try:
                result.kept = _keep(core, sid, name, spec, ctx)
                keep = True
            except SandboxError as exc:
                control.check()
                result.notes.append(f"the failed state could not be kept: {exc}")
        return result
    finally:
        control.sandbox(spec.name, None)
        if not keep:
            control.dispose(core, sid)


def _run(core, sid: str, spec: JobSpec, control: Control, job_dir: Path, t0: float) -> _Attempt:
    out_log = open(job_dir / "stdout.log", "wb")
    err_log = open(job_dir / "stderr.log", "wb")
    first = [None]

    def writer(f):
        def w(chunk: bytes) -> None:
            if first[0] is None:
                first[0] = time.monotonic()
            f.write(chunk)
            f.flush()
        return w
    control.state(spec.name, "running")
    called = time.monotonic()
    try:
        r = core.execute(sid, spec.run, timeout=spec.timeout, working_dir=spec.workdir, env=spec.env or None,
                         on_stdout=writer(out_log), on_stderr=writer(err_log))
    except SecurityError as exc:
        err_log.write(f"vmsandbox: {exc}\n".encode())
        return _Attempt(status="failed", reason=f"policy: {exc}", policy_blocked=True,
                        start_latency=time.monotonic() - t0, stderr=str(exc))
    finally:
        out_log.close()
        err_log.close()
    # clone requested -> command started: the time until execute was called plus the exec overhead
    # (the whole call minus the command's own run time).
    latency = (called - t0) + max(0.0, (time.monotonic() - called) - r.duration)
    a = _Attempt(status="passed" if r.succeeded else "failed", exit_code=r.exit_code, timed_out=r.timed_out,
                 duration=r.duration, start_latency=latency, stdout=r.stdout, stderr=r.stderr)
    if r.timed_out:
        a.reason = f"timed out after {spec.timeout:g} s; its processes were killed"
    elif r.exit_code != 0:
        a.reason = f"exit code {r.exit_code}"
    if r.truncated:
        a.notes.append("output truncated at ssh.max_output_bytes")
    return a


def _collect_artifacts(core, sid: str, spec: JobSpec, job_dir: Path, result: _Attempt) -> None:
    """Copy each artifact path (file or directory) to ``<job_dir>/artifacts/<guest path>``.

    A path is packed with the guest's tar, measured, and copied only while the job's total stays
    within ``artifacts_max``; missing paths and skipped ones are noted, never fatal."""
    budget = spec.artifacts_max
    dest_root = job_dir / "artifacts"
    for path in spec.artifacts:
        p = path.rstrip("/")
        parent, leaf = p.rsplit("/", 1)
        parent = parent or "/"
        q = shlex.quote
        r = core.execute(sid, f"if [ -e {q(p)} ]; then cd {q(parent)} && tar -cf {GUEST_TMP} {q(leaf)} && "
                              f"wc -c < {GUEST_TMP}; else echo missing; fi", timeout=120)
        size_text = r.stdout.strip()
        if size_text == "missing":
            result.notes.append(f"artifact {path}: missing")
            continue
        if r.exit_code != 0 or not size_text.isdigit():
            result.notes.append(f"artifact {path}: could not be packed (exit {r.exit_code}: {tail(r.stderr, 200)})")
            continue
        size = int(size_text)
        if size > budget:
            result.notes.append(f"artifact {path}: {size} bytes would pass the job's artifacts_max "
                                f"({spec.artifacts_max} bytes, {budget} left); not copied")
            continue
        with tempfile.TemporaryDirectory(prefix="farm-art-") as tmp:
            local = Path(tmp) / "a.tar"
            core.get_file(sid, GUEST_TMP, local)
            target = dest_root / parent.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            refused = []
            try:
                with tarfile.open(local) as tar:
                    for member in tar:
                        try:        # the guest made this archive: no absolute paths, links out, devices
                            tar.extract(member, target, filter="data")
                        except tarfile.FilterError:
                            refused.append(member.name)
            except (tarfile.TarError, OSError) as exc:
                result.notes.append(f"artifact {path}: unreadable archive ({exc})")
                continue
            if refused:
                result.notes.append(f"artifact {path}: refused {len(refused)} archive member(s) (outside the "
                                    f"destination, links or special files): {', '.join(refused[:5])}")
        budget -= size
        result.artifacts.append({"path": path, "local": str(target / leaf), "bytes": size})
    if spec.artifacts:
        core.execute(sid, f"rm -f {GUEST_TMP}", timeout=30)
        result.junit_files = _junit_files(dest_root)


def _junit_files(root: Path) -> list[str]:
    """XML files among the artifacts whose root element is a JUnit testsuite(s)."""
    out = []
    if not root.is_dir():
        return out
    for f in sorted(root.rglob("*.xml")):
        try:
            with open(f, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            continue
        if re.search(rb"<testsuites?[\s>]", head):
            out.append(str(f))
    return out


def _keep(core, sid: str, name: str, spec: JobSpec, ctx: Mapping) -> dict:
    """Snapshot the failed clone with its memory, stop it, and say how to get a shell in that state."""
    snap = core.create_snapshot(sid, KEEP_SNAPSHOT, memory=True,
                                metadata={"reason": f"farm run {ctx['run_id']}: job {spec.name} failed"})
    core.stop(sid)
    expires = time.time() + spec.keep_failed_ttl
    debug = ("debug-" + re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-"))[:40].rstrip("-")
    vm = ctx.get("debug_prefix") or "vmsandbox"
    return {"sandbox": name, "snapshot": snap, "expires_at": expires,
            "command": f"{vm} clone {snap} {debug} && {vm} ssh {debug}"}


def destroy_clone(core, sid: str) -> None:
    try:
        core.destroy(sid)
    except NotFoundError:
        pass
    except SandboxError as exc:
        log.error("could not destroy farm clone %s: %s (run `vmsandbox farm gc`)", sid, exc)
