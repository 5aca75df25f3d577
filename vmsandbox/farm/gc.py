"""Clean-up of what farm runs leave: expired kept failed states, clones of runs that died
(a second Ctrl-C, a kill -9, a host crash), and history rows of bases that no longer exist."""
from __future__ import annotations

import os
import time

from ..exceptions import NotFoundError, SandboxError
from .history import History, history_path
from ..snapshots import owner_alive as _alive
from .job import run_prefix


def farm_gc(core, dry_run: bool = False, all_kept: bool = False) -> list[str]:
    """Remove expired kept states (every kept state with ``all_kept``) and the clones of dead
    runs; returns one line per thing removed (or that would be, with ``dry_run``)."""
    done: list[str] = []
    history = History(history_path(core.state_dir))
    try:
        names = {i.name: i for i in core.list_sandboxes()}
        for k in history.kept(expired_only=not all_kept):
            when = "expired" if k["expires_at"] < time.time() else "not expired, --all"
            done.append(f"kept state {k['snapshot']} of job {k['job']} (run {k['run_id']}, {when})")
            if dry_run:
                continue
            info = names.get(k["sandbox"])
            if info is not None:
                _destroy(core, info.id)
            history.drop_kept(k["snapshot"])
        for k in history.kept():
            if k["sandbox"] not in names:
                done.append(f"record of kept state {k['snapshot']} (its sandbox is gone)")
                if not dry_run:
                    history.drop_kept(k["snapshot"])
        kept_sandboxes = {k["sandbox"] for k in history.kept()}
        for run in history.unfinished_runs():
            if _alive(run["pid"]) and run["pid"] != os.getpid():
                continue
            prefix = run_prefix(run["id"])
            for name, info in names.items():
                if name.startswith(prefix) and name not in kept_sandboxes:
                    done.append(f"clone {name} of dead run {run['id']}")
                    if not dry_run:
                        _destroy(core, info.id)
            done.append(f"run {run['id']} marked interrupted (its process {run['pid']} is gone)")
            if not dry_run:
                history.finish_run(run["id"], "interrupted", run["summary"] or {}, run["reports"] or {})
        for b in history.bases():
            if b["sandbox"] not in names:
                done.append(f"record of base {b['sandbox']} (its sandbox is gone)")
                if not dry_run:
                    history.drop_base(b["digest"])
    finally:
        history.close()
    core.audit("farm_gc", "dry-run" if dry_run else "ok", removed=done)
    return done


def _destroy(core, sid: str) -> None:
    try:
        core.destroy(sid)
    except NotFoundError:
        pass
    except SandboxError as exc:
        raise SandboxError(f"could not remove {sid}: {exc}") from exc
