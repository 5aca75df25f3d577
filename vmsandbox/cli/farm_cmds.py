"""CLI commands of the test farm: farm run | history | show | gc."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import datetime

import click
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ._context import console, get_core, print_json, table

STYLE = {"queued": "dim", "starting": "cyan", "running": "blue", "retrying": "yellow", "passed": "green",
         "failed": "red", "error": "magenta", "skipped": "dim"}


class _Progress:
    """One row per job (queued, starting, running with elapsed time, passed, failed, error):
    a live table on a terminal, one line per change otherwise (cron mails, CI logs)."""

    def __init__(self, live: bool) -> None:
        from ..farm.text import one_line
        self.one_line = one_line
        self.rows: dict[str, dict] = {}
        self.base = ""
        self.lock = threading.Lock()
        self.live = Live(get_renderable=self.render, console=console, refresh_per_second=4) if live else None

    def event(self, job: str, state: str, info: dict) -> None:
        with self.lock:
            if not job:
                self.base = info.get("message") or ("base reused" if info.get("reused") else
                                                    f"base ready ({info.get('seconds', 0):.1f} s)")
                if self.live is None:
                    click.echo(f"farm: {self.one_line(self.base)}", err=True)
                return
            row = self.rows.setdefault(job, {"state": "queued", "since": None, "detail": ""})
            if state == "running" and row["since"] is None:
                row["since"] = time.monotonic()
            row["state"] = state
            if info.get("worker"):
                row["worker"] = info["worker"]
            if state in ("passed", "failed", "error"):
                row["detail"] = f"{info.get('duration', 0):.1f} s" + (" flaky" if info.get("flaky") else "") + \
                    (f"  {self.one_line(info['reason'], 80)}" if info.get("reason") else "")
            elif state == "retrying":
                row["detail"] = self.one_line(info.get("reason", ""), 80)
            if self.live is None and state != "queued":
                on = f" on {self.one_line(row['worker'], 64)}" if row.get("worker") else ""
                click.echo(f"farm: {job}: {state}{on} {row['detail']}".rstrip(), err=True)

    def render(self) -> Table:
        t = Table(title=escape(self.one_line(self.base)) or None, show_edge=False)
        with self.lock:
            workers = any(r.get("worker") for r in self.rows.values())
            for c in ("JOB", "STATE", "TIME") + (("WORKER",) if workers else ()) + ("DETAIL",):
                t.add_column(c)
            for name, r in self.rows.items():
                elapsed = "" if r["since"] is None or r["state"] not in ("running", "retrying") else \
                    f"{time.monotonic() - r['since']:.0f} s"
                style = STYLE.get(r["state"], "")
                cells = [escape(name), f"[{style}]{r['state']}[/]", elapsed]
                if workers:
                    cells.append(escape(self.one_line(r.get("worker") or "", 32)))
                t.add_row(*cells, escape(r["detail"]))
        return t


def _interrupt_handlers() -> None:
    """First Ctrl-C or SIGTERM: a KeyboardInterrupt (the run stops its jobs and cleans up);
    the second: exit at once (``vmsandbox farm gc`` finishes the clean-up)."""
    hits = {"n": 0}

    def handler(signum, frame):
        hits["n"] += 1
        if hits["n"] == 1:
            raise KeyboardInterrupt
        os.write(2, b"interrupted again: exiting now; run `vmsandbox farm gc` to clean up\n")
        os._exit(130)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@click.group("farm")
def farm():
    """Nightly test farm: many jobs in clones of one prepared snapshot."""


@farm.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--parallel", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Jobs running at once.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write a JUnit XML report here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write an HTML report here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write a JSON report here.")
@click.option("--outdir", default="farm-out", show_default=True, type=click.Path(file_okay=False),
              help="Artifacts and logs go to OUTDIR/<run>/<job>/.")
@click.option("--rebuild-base", is_flag=True, help="Prepare the base again even when its inputs did not change.")
@click.option("--only", multiple=True, help="Run only this job (repeatable).")
@click.option("--broker", default=None, help="Run on the Celery workers of this Redis broker (redis://HOST:PORT/DB).")
@click.pass_context
def farm_run(ctx, job_file, parallel, junit_path, html_path, json_path, outdir, rebuild_base, only, broker):
    """Run every job of JOB_FILE; exit 0 all passed, 1 a job failed, 2 the farm could not run, 130 interrupted."""
    from ..farm import Farm
    from ..farm.text import one_line
    farm_ = Farm.from_file(job_file)
    core = get_core(ctx)
    progress = _Progress(live=sys.stderr.isatty())
    _interrupt_handlers()
    reports = {"junit": junit_path, "html": html_path, "json": json_path}
    if broker:
        from ..farm.distributed import run_distributed

        def go():
            return run_distributed(farm_, core, broker, outdir=outdir, only=list(only) or None,
                                   on_event=progress.event, reports=reports)
    else:
        def go():
            return farm_.run(core, parallel=parallel, outdir=outdir, rebuild_base=rebuild_base,
                             only=list(only) or None, on_event=progress.event, reports=reports)
    from ..farm.errors import FarmError
    try:
        if progress.live is not None:
            with progress.live:
                result = go()
        else:
            result = go()
    except FarmError as exc:            # raised before any job ran: the farm could not run
        click.echo(f"error: {one_line(str(exc), 300)}", err=True)
        ctx.exit(2)
    c = result.counts()
    if result.base:
        click.echo("base reused" if result.base["reused"] else f"base built in {result.base['seconds']:.1f} s")
    click.echo(f"farm {result.farm} run {result.run_id}: {result.status}: {c['passed']} passed, {c['failed']} failed, "
               f"{c['error']} errors, {c['skipped']} skipped, {c['flaky']} flaky in {result.duration:.1f} s")
    if result.error:
        click.echo(f"error: {one_line(result.error, 300)}", err=True)
    for j in result.jobs:
        if j["status"] != "passed":
            click.echo(f"  {j['name']}: {j['status']}: {one_line(j.get('reason') or '', 160)}")
        for n in j.get("artifact_notes", []):
            click.echo(f"  {j['name']}: note: {one_line(n, 160)}")
        if j.get("kept"):
            click.echo(f"  {j['name']}: debug its failed state: {j['kept']['command']}")
        if j.get("worker"):
            click.echo(f"  {j['name']}: ran on worker {one_line(j['worker'], 64)}"
                       + (" (retried after worker loss)" if j.get("retried_after_worker_loss") else ""))
    for kind, path in result.reports.items():
        click.echo(f"{'json' if kind == 'json_run' else kind} report: {path}")
    ctx.exit(result.exit_code)


@farm.command("history")
@click.option("--farm", "farm_name", default=None, help="Only runs of this farm.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def farm_history(ctx, farm_name, limit, json_out):
    """Recent farm runs."""
    from ..farm.history import History, history_path
    h = History(history_path(get_core(ctx).state_dir))
    try:
        runs = h.runs(farm_name, limit)
    finally:
        h.close()
    if json_out:
        print_json(runs)
        return
    table(["RUN", "FARM", "STATUS", "STARTED", "SECONDS", "PASSED", "FAILED", "ERRORS", "BASE"],
          [[r["id"], r["farm"], r["status"], datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S"),
            r["summary"].get("duration", ""), r["summary"].get("passed", ""), r["summary"].get("failed", ""),
            r["summary"].get("error", ""), {True: "reused", False: "built", None: ""}[r["base_reused"]]]
           for r in runs])


@farm.command("show")
@click.argument("run_ref")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def farm_show(ctx, run_ref, json_out):
    """One run: each job's status, duration and kept state (RUN is an id or a unique prefix)."""
    from ..farm.history import History, history_path
    from ..farm.text import one_line
    h = History(history_path(get_core(ctx).state_dir))
    try:
        run = h.run(run_ref)
    finally:
        h.close()
    if json_out:
        print_json(run)
        return
    click.echo(f"run {run['id']} of farm {run['farm']}: {run['status']}  (outdir {run['outdir']})")
    for kind, path in run["reports"].items():
        click.echo(f"  {'json' if kind == 'json_run' else kind} report: {path}")
    table(["JOB", "STATUS", "SECONDS", "START", "REASON", "KEPT STATE"],
          [[j["name"], j["status"] + (" (flaky)" if j.get("flaky") else ""), j.get("duration", ""),
            j.get("start_latency") or "", one_line(j.get("reason") or "", 60),
            (j.get("kept") or {}).get("command", "")] for j in run["jobs"]])


@farm.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--all", "all_kept", is_flag=True, help="Also remove kept failed states that have not expired.")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def farm_gc_cmd(ctx, dry_run, all_kept, json_out):
    """Remove expired kept failed states and the clones of runs that died."""
    from ..farm.gc import farm_gc
    done = farm_gc(get_core(ctx), dry_run=dry_run, all_kept=all_kept)
    if json_out:
        print_json(done)
        return
    for line in done:
        click.echo(("would remove " if dry_run else "removed ") + line)
    if not done:
        click.echo("nothing to remove")


@farm.command("worker")
@click.option("--broker", required=True, help="The Redis broker (redis://HOST:PORT/DB).")
@click.option("--slots", type=click.IntRange(1, 64), default=4, show_default=True, help="Jobs running at once.")
@click.option("--tags", default="", help="Comma-separated tags; the worker takes jobs whose tags it all has.")
@click.option("--name", default=None, help="Worker name (default: the host name).")
@click.option("--visibility-timeout", type=click.IntRange(60, 7 * 86400), default=7200, show_default=True,
              help="Seconds after which a dead worker's job runs again elsewhere; keep it above the longest "
                   "base preparation plus job timeout.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.pass_context
def farm_worker(ctx, broker, slots, tags, name, visibility_timeout, metrics_port):
    """Serve farm jobs from BROKER on this libvirt host (Ctrl-C or SIGTERM: finish running jobs, stop)."""
    import socket
    from ..farm.distributed import run_worker
    run_worker(get_core(ctx), broker, name or socket.gethostname().split(".")[0], slots,
               [t.strip() for t in tags.split(",") if t.strip()], visibility_timeout, metrics_port,
               say=lambda m: click.echo(m, err=True))


@farm.command("workers")
@click.option("--broker", required=True, help="The Redis broker (redis://HOST:PORT/DB).")
@click.option("--json", "json_out", is_flag=True)
def farm_workers(broker, json_out):
    """The farm workers alive on BROKER: slots in use, tags, last heartbeat."""
    from ..farm.distributed import list_workers
    ws = list_workers(broker)
    if json_out:
        print_json(ws)
        return
    table(["WORKER", "SLOTS", "BUSY", "TAGS", "PASSED", "FAILED", "REJECTED", "HEARTBEAT"],
          [[w["name"], w["slots"], w["busy"], ",".join(w.get("tags", [])), w.get("done", 0), w.get("failed", 0),
            w.get("rejected", 0), f"{w['age']:.0f} s ago"] for w in ws])


COMMANDS = [farm]
