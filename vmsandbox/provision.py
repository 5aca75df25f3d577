"""Provisioning a sandbox with an ansible playbook: prepare once, snapshot, clone per job.

Owns one provisioning run: an automatic snapshot just before the playbook, an inventory for the
one sandbox (its name, the connection variables of ``inventory.host_vars``), ``ansible-playbook``
run with its output streamed line by line, and then either the named snapshot of the result or,
when the playbook fails, a rollback to the automatic snapshot and a ``ProvisionError`` that names
the failed task. Every run is audited. ansible-core is a dependency of the project; its
``ansible-playbook`` is looked up next to this interpreter first, then on PATH.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from .exceptions import ConfigError, ProviderError, ProvisionError, RollbackError, StateError
from .inventory import build_inventory
from .models import SandboxState

Output = Callable[[str], None]

_TASK_RE = re.compile(r"^TASK \[(?P<task>.*)\] \**\s*$")
_FAILED_RE = re.compile(r"^(fatal|failed): \[(?P<host>[^\]]+)\]")
_TAIL_LINES = 40
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


@dataclass(frozen=True)
class ProvisionResult:
    """What a provisioning run did. ``snapshot`` is the id of the snapshot taken on success."""
    sandbox: str
    playbook: str
    ok: bool
    exit_code: int
    duration: float
    failed_task: Optional[str]
    snapshot: Optional[str]
    output_tail: str

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def printable(line: str) -> str:
    """A line of playbook output made safe for a terminal: the guest controls much of what
    ansible prints (command output, error messages), so control characters are shown escaped."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def ansible_playbook_command() -> str:
    """The ``ansible-playbook`` of this environment (ProviderError when ansible-core is missing)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise ProviderError("ansible-playbook not found: install ansible-core (pip install ansible-core)")
    return found


def provision(core, sandbox: str, playbook: str | os.PathLike, snapshot: Optional[str] = None,
              extra_vars: Optional[Mapping] = None, output: Optional[Output] = None,
              timeout: Optional[float] = None, config_path: Optional[str] = None,
              ansible_args: tuple[str, ...] = ()) -> ProvisionResult:
    """Run ``playbook`` against the running sandbox ``sandbox`` (name or id).

    Takes an automatic snapshot first. On success it is deleted and, with ``snapshot``, the
    result is snapshotted under that name. On failure (or timeout) the sandbox is rolled back to
    it and ``ProvisionError`` is raised naming the failed task. ``output`` receives each line of
    ansible's output, already made printable. Raises ConfigError (no such playbook, bad snapshot
    name), NotFoundError, StateError (not running), ProviderError (no ansible-playbook),
    ProvisionError, RollbackError (the rollback after a failure failed too).
    """
    playbook = Path(playbook)
    if not playbook.is_file():
        raise ConfigError(f"playbook {str(playbook)!r} does not exist", "playbook")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"{timeout!r} must be a number of seconds above 0", "timeout")
    if snapshot is not None:
        _check_snapshot_name_free(core, sandbox, snapshot)
    command = ansible_playbook_command()
    info = core.get(sandbox)
    if info.state is not SandboxState.RUNNING:
        raise StateError(f"sandbox {info.name!r} is {info.state}; provisioning needs it running", info.state)
    emit = output or (lambda _line: None)
    started = time.monotonic()
    before = core.create_snapshot(info.id, f"pre-provision-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
                                  metadata={"automatic": True, "reason": f"before provisioning {playbook.name}"})
    with tempfile.TemporaryDirectory(prefix="vmsandbox-provision-") as work:
        inventory = Path(work) / "inventory.json"
        doc = build_inventory(core, config_path, names=[info.name])
        if info.name not in doc["_meta"]["hostvars"]:
            _discard(core, info.id, before)
            raise ProviderError(f"sandbox {info.name!r} has no SSH host key yet; cannot provision it")
        inventory.write_text(_static_inventory(doc))
        argv = [command, "-i", str(inventory), "--limit", info.name, str(playbook.resolve()), *ansible_args]
        if extra_vars:
            argv += ["--extra-vars", json.dumps(dict(extra_vars))]
        try:
            code, failed_task, tail = _run(argv, _ansible_env(work), emit, timeout)
        except BaseException:
            # ansible did not run to its end (could not start, or interrupted): back to where we were.
            core.rollback(info.id, before)
            _discard(core, info.id, before)
            core.audit("provision", "failed", info.id, playbook=str(playbook), reason="interrupted")
            raise
    duration = time.monotonic() - started
    if code != 0:
        reason = "timed out" if code is None else f"failed (exit {code})"
        where = f" at task {failed_task!r}" if failed_task else ""
        result = ProvisionResult(info.name, str(playbook), False, -1 if code is None else code, duration,
                                 failed_task, None, tail)
        emit(f"playbook {reason}{where}; rolling {info.name} back to its state before provisioning")
        try:
            core.rollback(info.id, before)
        except RollbackError as exc:
            core.audit("provision", "failed", info.id, playbook=str(playbook), failed_task=failed_task,
                             rollback=str(exc))
            raise
        _discard(core, info.id, before)
        core.audit("provision", "failed", info.id, playbook=str(playbook), failed_task=failed_task,
                         exit_code=result.exit_code, duration=round(duration, 3))
        raise ProvisionError(f"playbook {playbook.name} {reason}{where}; sandbox {info.name!r} was rolled back "
                             "to its state before provisioning", result)
    _discard(core, info.id, before)
    snap_id = core.create_snapshot(info.id, snapshot, metadata={"provisioned_with": str(playbook)}) if snapshot else None
    core.audit("provision", "ok", info.id, playbook=str(playbook), snapshot=snapshot, duration=round(duration, 3))
    return ProvisionResult(info.name, str(playbook), True, 0, duration, None, snap_id, tail)


def _check_snapshot_name_free(core, sandbox: str, name: str) -> None:
    """Fail before the playbook runs, not after it, when the snapshot name is taken."""
    for snap in core.list_snapshots(sandbox):
        if getattr(snap, "name", None) == name:
            raise ConfigError(f"sandbox {sandbox!r} already has a snapshot named {name!r}", "snapshot")


def _discard(core, sandbox_id: str, snapshot_id: str) -> None:
    """Forget the automatic snapshot (its layer stays while the sandbox stands on it)."""
    core.delete_snapshot(sandbox_id, snapshot_id)


def _static_inventory(doc: dict) -> str:
    """The dynamic-inventory document as a static JSON inventory file (ansible's yaml plugin
    reads JSON): every host with its variables, every group with its hosts."""
    hostvars = doc["_meta"]["hostvars"]
    groups = {name: {"hosts": {h: {} for h in body["hosts"]}}
              for name, body in doc.items() if name not in ("_meta", "all")}
    return json.dumps({"all": {"hosts": hostvars, "children": groups}}, indent=2)


def _ansible_env(work: str) -> dict:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_HOST_KEY_CHECKING": "True",       # the inventory's known_hosts file pins the guest's key
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": os.path.join(work, "tmp"),
        # Master connections of this run only: never reuse a stale one from another run.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(work, "cp"),
        "ANSIBLE_PIPELINING": "True",              # fewer round trips per task
        "ANSIBLE_NOCOLOR": "True",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _run(argv: list[str], env: dict, emit: Output, timeout: Optional[float]) -> tuple[Optional[int], Optional[str], str]:
    """Run ansible-playbook, streaming its lines; (exit code or None on timeout, failed task, tail)."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        raise ProviderError(f"cannot run {argv[0]}: {exc}") from exc
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.start()
    task, failures = None, []        # tasks that failed, in order; "...ignoring" takes one back
    tail: deque = deque(maxlen=_TAIL_LINES)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = printable(raw.rstrip("\n"))
            tail.append(line)
            emit(line)
            m = _TASK_RE.match(line)
            if m:
                task = m.group("task")
            elif _FAILED_RE.match(line):
                failures.append(task)
            elif line.strip() == "...ignoring" and failures:
                failures.pop()
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:          # interrupted: no ansible left behind
            kill()
            proc.wait()
    return (None if timed_out.is_set() else code), (failures[-1] if failures else None), "\n".join(tail)


__all__ = ["ProvisionResult", "provision", "ansible_playbook_command", "printable"]
