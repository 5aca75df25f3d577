"""The farm run: prepare the base, schedule every job, record and report.

Owns the local scheduler (a thread pool of ``parallel`` workers, each running ``job.run_job``
for one job), the run's record in the history, interruption (Ctrl-C or SIGTERM: running jobs
stopped, their clones destroyed, the partial report written) and ``FarmResult``. Running a job
is ``job.run_job``'s business alone, so another scheduler (Celery workers on several hosts)
can hand out the same job specs and collect the same outcomes.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..exceptions import ConfigError, NotFoundError, SandboxError
from .base import prepare_base
from .history import History, history_path
from .job import Control, destroy_clone, run_job
from .spec import FarmSpec, load_farm

log = logging.getLogger("vmsandbox.farm")

#: ``on_event(job, state, info)``: job is "" for farm-level events (base preparation)
EventFn = Callable[[str, str, dict], None]


@dataclass
class FarmResult:
    """What a farm run did: every job's outcome (dicts, as ``run_job`` returns them)."""
    run_id: str
    farm: str
    status: str                              # passed | failed | interrupted | error
    started_at: float
    duration: float
    outdir: str
    base: dict
    jobs: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)
    error: str = ""
    source: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def exit_code(self) -> int:
        """0 all passed, 1 a job failed, 2 the farm could not run, 130 interrupted."""
        return {"passed": 0, "failed": 1, "interrupted": 130}.get(self.status, 2)

    def counts(self) -> dict:
        c = {s: 0 for s in ("passed", "failed", "error", "skipped")}
        for j in self.jobs:
            c[j["status"]] = c.get(j["status"], 0) + 1
        c["flaky"] = sum(1 for j in self.jobs if j.get("flaky"))
        c["total"] = len(self.jobs)
        return c

    def job(self, name: str) -> dict:
        for j in self.jobs:
            if j["name"] == name:
                return j
        raise NotFoundError(f"no job {name!r} in run {self.run_id}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts()
        d["exit_code"] = self.exit_code
        return d


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def debug_prefix(core) -> str:
    """How the printed debug command must call vmsandbox to see this core's state directory."""
    from ..config import SandboxSection
    default = SandboxSection().state_directory
    return "vmsandbox" if str(core.state_dir) == default else f"vmsandbox --state-dir {core.state_dir}"


class Farm:
    """A farm job file, ready to run: ``Farm.from_file("farm.yaml").run(core, parallel=4)``."""

    def __init__(self, spec: FarmSpec) -> None:
        self.spec = spec

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Farm":
        return cls(load_farm(path))

    def run(self, core, parallel: int = 4, outdir: str | os.PathLike = "farm-out", rebuild_base: bool = False,
            only: list[str] | None = None, on_event: EventFn | None = None,
            reports: dict[str, str] | None = None) -> FarmResult:
        """Prepare the base, run every job in its own clone (at most ``parallel`` at once), write
        ``reports`` (``{"junit": path, "html": path, "json": path}``) and return the result.

        A KeyboardInterrupt stops the running jobs, destroys their clones, writes the partial
        report and returns a result with status ``interrupted``; a second one during that
        clean-up propagates at once (``vmsandbox farm gc`` then finishes the clean-up)."""
        if not isinstance(parallel, int) or parallel < 1:
            raise ConfigError(f"{parallel!r} must be a whole number of at least 1", "parallel")
        jobs = list(self.spec.jobs)
        if only:
            unknown = [n for n in only if n not in {j.name for j in jobs}]
            if unknown:
                raise ConfigError(f"no job named {unknown[0]!r} (jobs: {', '.join(j.name for j in jobs)})", "only")
            jobs = [j for j in jobs if j.name in only]
        emit = on_event or (lambda *_a: None)
        run_id = new_run_id()
        run_dir = Path(outdir).resolve() / run_id
        run_dir.mkdir(parents=True)
        history = History(history_path(core.state_dir))
        history.start_run(run_id, self.spec.name, self.spec.source, str(run_dir), [j.name for j in jobs])
        core.audit("farm_run", "started", run=run_id, farm=self.spec.name, jobs=len(jobs))
        started, t0 = time.time(), time.monotonic()
        result = FarmResult(run_id=run_id, farm=self.spec.name, status="error", started_at=started, duration=0.0,
                            outdir=str(run_dir), base={}, source=self.spec.source)
        outcomes: dict[str, dict] = {}
        try:
            try:
                emit("", "base", {"message": "preparing the base"})
                base = prepare_base(core, history, self.spec, rebuild=rebuild_base,
                                    progress=lambda m: emit("", "base", {"message": m}))
                result.base = {"digest": base.digest, "sandbox": base.sandbox, "snapshot": base.snapshots[0],
                               "snapshots": list(base.snapshots),
                               "reused": base.reused, "seconds": round(base.seconds, 3)}
                history.set_base(run_id, base.digest, base.reused)
                emit("", "base-ready", dict(result.base))
            except SandboxError as exc:
                result.error = f"the base could not be prepared: {exc}"
                raise
            ctx = {"run_id": run_id, "snapshots": list(base.snapshots), "outdir": str(run_dir),
                   "debug_prefix": debug_prefix(core)}
            interrupted = _schedule(core, jobs, ctx, parallel, history, emit, outcomes)
            result.status = "interrupted" if interrupted else (
                "passed" if all(o["status"] == "passed" for o in outcomes.values()) else "failed")
        except KeyboardInterrupt:
            result.status = "interrupted"
        except SandboxError as exc:
            result.status = "error"
            result.error = result.error or str(exc)
        finally:
            result.jobs = [outcomes.get(j.name) or _skipped(j) for j in jobs]
            result.duration = round(time.monotonic() - t0, 3)
            result.reports = _write_reports(result, reports or {})
            history.finish_run(run_id, result.status, {**result.counts(), "duration": result.duration,
                                                       "message": result.error}, result.reports)
            for j in result.jobs:
                if j["status"] == "skipped":
                    history.job_update(run_id, j["name"], "skipped", outcome=j)
            history.close()
            core.audit("farm_run", result.status, run=run_id, farm=self.spec.name, **result.counts())
        return result


def _skipped(job) -> dict:
    return {"name": job.name, "status": "skipped", "reason": "not run (the run was interrupted or could not start)",
            "flaky": False, "exit_code": None, "timed_out": False, "policy_blocked": False, "started_at": None,
            "duration": 0.0, "command_seconds": 0.0, "start_latency": None, "attempts": [], "infra_retries": 0,
            "stdout_tail": "", "stderr_tail": "", "logs": {}, "artifacts": [], "artifact_notes": [],
            "junit_files": [], "kept": None, "sandbox": "", "run": job.run, "line": job.line}


def _schedule(core, jobs: list, ctx: dict, parallel: int, history: History, emit: EventFn,
              outcomes: dict[str, dict]) -> bool:
    """Run ``jobs`` on a pool of ``parallel`` threads; returns True when interrupted."""
    live: dict[str, str] = {}
    live_lock = threading.Lock()

    def on_sandbox(job: str, sid: Optional[str]) -> None:
        with live_lock:
            if sid:
                live[job] = sid
            else:
                live.pop(job, None)
        if sid:
            history.job_update(ctx["run_id"], job, "starting", sandbox=sid)

    def on_state(job: str, state: str, info: dict) -> None:
        if state in ("starting", "running", "retrying"):
            history.job_update(ctx["run_id"], job, state)
        emit(job, state, info)

    reaper = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="farm-reap")
    control = Control(on_state=on_state, on_sandbox=on_sandbox,
                      dispose=lambda sid: reaper.submit(destroy_clone, core, sid))
    for j in jobs:
        emit(j.name, "queued", {})
    try:
        return _run_pool(core, jobs, ctx, parallel, history, emit, outcomes, control, live, live_lock)
    finally:
        reaper.shutdown(wait=True)           # every clone handed over is gone before the report


def _run_pool(core, jobs: list, ctx: dict, parallel: int, history: History, emit: EventFn,
              outcomes: dict[str, dict], control: Control, live: dict, live_lock: threading.Lock) -> bool:
    pool = cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="farm-job")
    # jobs that start together use different snapshots of the base (see base.SLOTS)
    slots = ctx["snapshots"]
    futures = {pool.submit(run_job, core, j.to_dict(), {**ctx, "index": i, "snapshot": slots[i % len(slots)]}, control):
               j.name for i, j in enumerate(jobs)}
    pending = set(futures)
    try:
        while pending:
            done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            for f in done:
                _record(core, history, ctx, futures[f], f, outcomes)
        pool.shutdown(wait=True)
        return False
    except KeyboardInterrupt:
        emit("", "interrupted", {"message": "interrupted: stopping running jobs and removing their clones"})
        control.cancelled.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with live_lock:
            sids = list(live.values())
        # The jobs' commands are blocked in SSH: destroying their clones ends them at once.
        killers = [threading.Thread(target=destroy_clone, args=(core, s), daemon=True) for s in sids]
        for t in killers:
            t.start()
        for t in killers:
            t.join(120)
        for f in list(pending):
            try:
                f.result(timeout=180)
            except (cf.CancelledError, cf.TimeoutError):
                continue
            except Exception as exc:          # a worker's own bug must not hide the interrupt
                log.error("farm job %s: %s", futures[f], exc)
                continue
            _record(core, history, ctx, futures[f], f, outcomes)
        return True


def _record(core, history: History, ctx: dict, name: str, fut: cf.Future, outcomes: dict[str, dict]) -> None:
    try:
        outcome = fut.result()
    except Exception as exc:                  # run_job reports job failures; this is a bug or a crash
        log.exception("farm job %s crashed", name)
        outcome = {**_skipped(type("J", (), {"name": name, "run": "", "line": 0})()), "status": "error",
                   "reason": f"the job runner crashed: {type(exc).__name__}: {exc}"}
    outcomes[name] = outcome
    if outcome.get("kept"):
        k = outcome["kept"]
        history.keep(k["snapshot"], k["sandbox"], ctx["run_id"], name, k["expires_at"])
    history.job_update(ctx["run_id"], name, outcome["status"], outcome=outcome)


def _write_reports(result: FarmResult, wanted: dict[str, str]) -> dict:
    """Write the requested reports, plus ``report.json`` in the run directory (what ``show`` links to)."""
    from .reports import write_html, write_json, write_junit
    out = {}
    writers = {"junit": write_junit, "html": write_html, "json": write_json}
    targets = dict(wanted)
    targets.setdefault("json_run", str(Path(result.outdir) / "report.json"))
    for kind, path in targets.items():
        if not path:
            continue
        try:
            writers["json" if kind == "json_run" else kind](result, Path(path))
            out[kind] = str(Path(path).resolve())
        except OSError as exc:
            log.error("could not write the %s report %s: %s", kind, path, exc)
            result.error = result.error or f"could not write {path}: {exc}"
    return out
