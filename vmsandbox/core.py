"""SandboxCore: the one façade over config, state store, provider, boxes, SSH and policy.

Owns the sandbox lifecycle (an explicit state machine, ``models.ALLOWED``), the order of the
steps of each operation and their clean-up on failure, and the audit record of every
operation. ``AsyncSandboxCore`` offers the same methods as coroutines.
"""
from __future__ import annotations

import asyncio
import fcntl
import functools
import importlib
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from . import disks
from .config import Config, Limits, load_config, parse_cpu, parse_size
from .exceptions import (CommandTimeout, ConfigError, NotFoundError, ProviderError, ResourceLimitError,
                         SandboxError, SecurityError, StateCorruptionError, StateError)
from .models import ALLOWED, ExecutionResult, SandboxInfo, SandboxState
from .providers import MachineSpec, Provider, ProviderCheck, load_provider
from .store import Store, default_db_path, ensure_state_dir

log = logging.getLogger("vmsandbox")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
SANDBOX_KEYS = {"box", "base_image", "resource_limits", "network_mode", "persistent", "isolation_type",
                "clone_from", "ttl_seconds"}
NETWORK_MODES = ("none", "nat")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SandboxRequest:
    """A validated ``create_sandbox`` config."""
    box: str
    limits: Limits
    network_mode: str
    persistent: bool
    clone_from: Optional[str] = None
    ttl_seconds: float = 3600.0


class SandboxCore:
    """Create, run commands in, snapshot, roll back and destroy VM sandboxes.

    ``SandboxCore()`` uses the defaults (or ``$VMSANDBOX_CONFIG``); ``config_path=`` a YAML file;
    ``config=`` a dict of sections (merged over the file). Raises ConfigError on bad config.
    """

    def __init__(self, config_path: str | os.PathLike | None = None, config: Mapping | Config | None = None,
                 provider: Provider | None = None, start_watchdog: bool = True) -> None:
        self.config = load_config(config_path, config)
        sb = self.config.sandbox
        self.state_dir = ensure_state_dir(sb.state_path)
        (self.state_dir / "sandboxes").mkdir(exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        (self.state_dir / "locks").mkdir(mode=0o700, exist_ok=True)
        for sub in ("layers", "memory"):            # read by QEMU (libvirt-qemu): traversable
            (self.state_dir / sub).mkdir(exist_ok=True)
            os.chmod(self.state_dir / sub, 0o711)
        self.store = Store(default_db_path(self.state_dir))
        self.provider = provider or load_provider(sb.provider, self.config)
        self._sessions: dict[str, Any] = {}
        self._sessions_lock = threading.Lock()
        self._boxes = None
        self._validator = None
        from .snapshots import SnapshotManager
        self.snapshots = SnapshotManager(self)
        self._recover()
        self.watchdog = None
        if self.config.monitoring.enabled and start_watchdog:
            from .watchdog import Watchdog
            self.watchdog = Watchdog(self)
            self.watchdog.start()

    def _recover(self) -> None:
        """Finish or undo operations a crashed process left half-done (journaled in the store)."""
        if not self.store.journal_entries():
            return
        with open(self.state_dir / "locks" / "recover.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            for line in self.snapshots.recover():
                log.warning("recovered: %s", line)

    # -- collaborators, loaded on first use ----------------------------------------------
    @property
    def boxes(self):
        if self._boxes is None:
            from .boxes import BoxStore
            self._boxes = BoxStore(self.config.sandbox.box_path)
        return self._boxes

    @property
    def validator(self):
        if self._validator is None:
            from .safety import SafetyValidator
            self._validator = SafetyValidator(self.config.safety)
        return self._validator

    def sandbox_dir(self, info: SandboxInfo | str) -> Path:
        return self.state_dir / "sandboxes" / (info.id if isinstance(info, SandboxInfo) else info)

    # -- lifecycle helpers ---------------------------------------------------------------
    @contextmanager
    def _locked(self, sandbox_id: str) -> Iterator[None]:
        """Exclusive per-sandbox lock, across threads and processes."""
        with open(self.state_dir / "locks" / f"{sandbox_id}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _require(self, info: SandboxInfo, operation: str) -> None:
        allowed = ALLOWED[operation]
        if info.state in allowed:
            return
        if info.state in (SandboxState.PAUSED, SandboxState.STOPPED) and info.reason.startswith("limit:"):
            raise ResourceLimitError(f"sandbox {info.name!r} is {info.state} because {info.reason[6:].strip()}; "
                                     f"{operation} is not possible until it is resumed")
        need = " or ".join(sorted(s.value for s in allowed))
        raise StateError(f"cannot {operation} sandbox {info.name!r}: it is {info.state} (needs {need})",
                         info.state, allowed)

    def _set_state(self, info: SandboxInfo, state: SandboxState, reason: str = "") -> SandboxInfo:
        return self.store.update_sandbox(info.id, state=state, reason=reason)

    def _spec(self, info: SandboxInfo, disk_path: Path | None = None, **override: Any) -> MachineSpec:
        """The machine of ``info``; ``override`` replaces fields (a rollback's new name, uuid, port...)."""
        box = self.boxes.get(info.box)
        cpu = parse_cpu(info.cpu)
        fields = dict(
            name=info.domain, uuid=info.extra["uuid"], vcpus=max(1, math.ceil(cpu)),
            cpu_quota=cpu if cpu < 1 else None, memory_bytes=parse_size(info.memory),
            disk_path=disk_path or self.active_disk(info), ssh_port=info.ssh_port, mac=info.extra["mac"],
            network_mode=info.network_mode, console_log=self.console_log(info), owner=str(self.state_dir),
            kernel=box.kernel,
            initrd=box.initrd, cmdline=f"{box.cmdline} hostname={info.name}" if box.cmdline else None)
        fields.update(override)
        return MachineSpec(**fields)

    def console_log(self, info: SandboxInfo, generation: int | None = None) -> Path:
        """Serial console log of the sandbox's current guest (each rollback starts a new generation)."""
        gen = info.extra.get("generation", 0) if generation is None else generation
        return self.sandbox_dir(info) / f"console-{gen}.log"

    def active_disk(self, info: SandboxInfo) -> Path:
        return Path(self.store.get_layer(info.extra["active_layer"])["path"])

    def layer_file(self, layer_id: str) -> Path:
        """The file of a frozen layer about to be built on; StateCorruptionError when it is gone."""
        path = Path(self.store.get_layer(layer_id)["path"])
        if not path.exists():
            raise StateCorruptionError(f"layer {layer_id} is recorded but its file {path} is missing; "
                                       "run `vmsandbox doctor`")
        return path

    def new_layer_path(self) -> tuple[str, Path]:
        lid = "L" + uuid.uuid4().hex[:15]
        return lid, self.state_dir / "layers" / f"{lid}.qcow2"

    def domain_name(self, name: str, sandbox_id: str, generation: int = 0) -> str:
        base = f"{self.config.sandbox.domain_prefix}{name}-{sandbox_id[-6:]}"
        return base if generation == 0 else f"{base}-g{generation}"

    def fault_point(self, point: str) -> None:
        """Crash-test hook: SIGKILL this process at ``point`` when $VMSANDBOX_CRASH_AT names it."""
        if os.environ.get("VMSANDBOX_CRASH_AT") == point:
            os.kill(os.getpid(), 9)

    # -- SSH -------------------------------------------------------------------------------
    def session(self, info: SandboxInfo):
        """The open SSH session to a sandbox (one per sandbox and port, reopened when dead)."""
        from .ssh import SSHSession
        with self._sessions_lock:
            s = self._sessions.get(info.id)
            if s is not None and s.port == info.ssh_port:
                return s
            if s is not None:
                s.close()
            box = self.boxes.get(info.box)
            host_key = box.host_key or info.extra.get("host_key")

            def remember(keyline: str, sid: str = info.id) -> None:
                self.store.update_sandbox(sid, extra={"host_key": keyline})

            s = SSHSession("127.0.0.1", info.ssh_port, box.ssh_user, box.ssh_key, host_key,
                           connect_timeout=self.config.ssh.connect_timeout, on_new_host_key=remember)
            self._sessions[info.id] = s
            return s

    def _drop_session(self, sandbox_id: str) -> None:
        with self._sessions_lock:
            s = self._sessions.pop(sandbox_id, None)
        if s is not None:
            s.close()

    def _wait_ready(self, info: SandboxInfo, progress: Optional[Progress]) -> float:
        cb = (lambda waited: progress(f"waiting for SSH ({waited:.0f} s)")) if progress else None
        return self.session(info).wait_ready(self.config.sandbox.boot_timeout_seconds,
                                             console_log=self.console_log(info), progress=cb)

    # -- create ----------------------------------------------------------------------------
    def parse_request(self, config: Mapping | None) -> SandboxRequest:
        """Validate a ``create_sandbox`` config dict; ConfigError names the bad key."""
        config = dict(config or {})
        for key in config:
            if key not in SANDBOX_KEYS:
                raise ConfigError(f"unknown key (known: {', '.join(sorted(SANDBOX_KEYS))})", f"sandbox config.{key}")
        iso = config.get("isolation_type", "vm")
        if iso != "vm":
            raise ConfigError(f"{iso!r} is not supported yet (only 'vm')", "sandbox config.isolation_type")
        if "box" in config and "base_image" in config and config["box"] != config["base_image"]:
            raise ConfigError("give box or base_image (its alias), not both", "sandbox config.box")
        box = str(config.get("box", config.get("base_image", self.config.sandbox.default_box)))
        net = config.get("network_mode", "none")
        if net == "bridge":
            raise ConfigError("'bridge' is not supported yet (use 'none' or 'nat')", "sandbox config.network_mode")
        if net not in NETWORK_MODES:
            raise ConfigError(f"{net!r} is not one of none, nat", "sandbox config.network_mode")
        persistent = config.get("persistent", False)
        if not isinstance(persistent, bool):
            raise ConfigError(f"{persistent!r} must be true or false", "sandbox config.persistent")
        rl = config.get("resource_limits") or {}
        if not isinstance(rl, Mapping):
            raise ConfigError(f"{rl!r} must be a mapping", "sandbox config.resource_limits")
        unknown = set(rl) - {"cpu", "memory", "disk"}
        if unknown:
            raise ConfigError("unknown key (known: cpu, disk, memory)", f"sandbox config.resource_limits.{sorted(unknown)[0]}")
        d = self.config.sandbox.default_limits
        limits = Limits(cpu=str(rl.get("cpu", d.cpu)), memory=str(rl.get("memory", d.memory)),
                        disk=str(rl.get("disk", d.disk)))
        limits.validate("resource_limits")
        cap = self.config.safety.limits
        for key, value, maximum in (("cpu", limits.cpu_count, cap.cpu_count),
                                    ("memory", limits.memory_bytes, cap.memory_bytes),
                                    ("disk", limits.disk_bytes, cap.disk_bytes)):
            if value > maximum:
                raise ResourceLimitError(f"resource_limits.{key} {getattr(limits, key)} exceeds "
                                         f"safety.limits.{key} {getattr(cap, key)}")
        if limits.memory_bytes < 64 << 20:
            raise ConfigError(f"{limits.memory!r} is too little memory (at least 64M)", "resource_limits.memory")
        ttl = config.get("ttl_seconds", self.config.sandbox.ttl_seconds)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ConfigError(f"{ttl!r} must be a number of seconds above 0", "sandbox config.ttl_seconds")
        return SandboxRequest(box=box, limits=limits, network_mode=net, persistent=persistent,
                              clone_from=config.get("clone_from"), ttl_seconds=float(ttl))

    def create_sandbox(self, name: str, config: Mapping | None = None, progress: Optional[Progress] = None) -> str:
        """Create and boot a sandbox; returns its id once a command can run in it.

        Raises ConfigError (bad name/config), NotFoundError (unknown box), ResourceLimitError (over
        safety.limits), ProviderError/GuestUnreachableError (boot failed). A failure leaves nothing behind.
        """
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{name!r} is not a valid sandbox name (1-40 of a-z 0-9 '-', starting with a letter or digit)", "name")
        req = self.parse_request(config)
        if req.clone_from:
            return self._clone(name, req, progress)
        box = self.boxes.get(req.box)
        if req.limits.disk_bytes < box.virtual_size:
            raise ConfigError(f"{req.limits.disk!r} is smaller than box {box.name!r} ({box.virtual_size >> 20} MiB)",
                              "resource_limits.disk")
        started = time.monotonic()
        info = self._reserve(name, box.name, req.limits.cpu, req.limits.memory, req.limits.disk, req)
        try:
            with self._locked(info.id):
                if progress:
                    progress("creating disk")
                disks.create_overlay(self.active_disk(info), box.image, req.limits.disk_bytes)
                if progress:
                    progress("booting guest")
                self.provider.start_machine(self._spec(info, self.active_disk(info)))
                self._wait_ready(info, progress)
                info = self._set_state(info, SandboxState.RUNNING)
        except BaseException as exc:
            self._discard_failed_create(info, exc)
            raise
        took = time.monotonic() - started
        self.store.audit("create", "ok", info, box=box.name, port=info.ssh_port, seconds=round(took, 3),
                         accelerator=self.provider.accelerator()[0])
        return info.id

    def _reserve(self, name: str, box: str, cpu: str, memory: str, disk: str, req: SandboxRequest,
                 parent_layer: str | None = None, **extra: Any) -> SandboxInfo:
        """Record a CREATING sandbox with a port, its directory and the record of its first layer."""
        sid = "sb-" + uuid.uuid4().hex[:12]
        layer_id, layer_path = self.new_layer_path()
        try:
            info = self.store.reserve_sandbox(
                id=sid, name=name, box=box, domain=self.domain_name(name, sid), cpu=cpu, memory=memory, disk=disk,
                network_mode=req.network_mode, persistent=req.persistent,
                port_range=tuple(self.config.sandbox.port_range),
                extra={"uuid": str(uuid.uuid4()), "mac": _mac_for(sid), "active_layer": layer_id, "generation": 0,
                       "ttl_seconds": req.ttl_seconds, **extra})
        except SandboxError as exc:
            self.store.audit("create", "rejected", sandbox_id=sid, sandbox_name=name, error=str(exc))
            raise ConfigError(str(exc), "name") from None
        self.store.add_layer(layer_id, str(layer_path), parent_layer, box, sid)
        d = self.sandbox_dir(info)
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)
        return info

    def _discard_failed_create(self, info: SandboxInfo, exc: BaseException) -> None:
        """Remove every trace of a half-made sandbox; keep only its console log for diagnosis."""
        self._drop_session(info.id)
        console = self.console_log(info)
        kept = None
        if console.exists() and console.stat().st_size:
            kept = self.state_dir / "logs" / f"{info.name}-{info.id}-console.log"
            shutil.copyfile(console, kept)
        try:
            self.provider.destroy_machine(info.domain)
        except SandboxError as cleanup_exc:
            log.error("clean-up of %s failed: %s", info.domain, cleanup_exc)
        self._remove_files(info)
        self.store.delete_sandbox(info.id)
        self.store.audit("create", "failed", info, error=str(exc) or type(exc).__name__,
                         console_log=str(kept) if kept else None)
        if kept is not None and getattr(exc, "console_log", None):
            exc.console_log = str(kept)
            if exc.args:
                exc.args = (str(exc.args[0]).replace(str(console), str(kept)),) + exc.args[1:]

    def _clone(self, name: str, req: SandboxRequest, progress: Optional[Progress]) -> str:
        return self.snapshots.clone(name, req.clone_from, req, progress)

    # -- snapshots -------------------------------------------------------------------------
    def create_snapshot(self, sandbox_id: str, name: str, memory: Optional[bool] = None,
                        metadata: Mapping | None = None) -> str:
        """Freeze the sandbox's disk (and, by default for a running guest, its memory); returns the
        snapshot id. The guest keeps running. Raises ConfigError (bad or duplicate name), StateError."""
        return self.snapshots.create(sandbox_id, name, memory, dict(metadata or {}))

    def rollback(self, sandbox_id: str, snapshot_id: str, preserve_logs: bool = True,
                 progress: Optional[Progress] = None) -> bool:
        """Return the sandbox to a snapshot: memory snapshots resume where they were, disk-only ones
        boot. Raises RollbackError (the sandbox is left usable, or BROKEN and says so), NotFoundError."""
        return self.snapshots.rollback(sandbox_id, snapshot_id, preserve_logs, progress)

    def list_snapshots(self, sandbox_id: str) -> list:
        return self.snapshots.list(sandbox_id)

    def delete_snapshot(self, sandbox_id: str, snapshot_id: str) -> None:
        """Forget a snapshot; its layer is freed when nothing else stands on it."""
        self.snapshots.delete(sandbox_id, snapshot_id)

    # -- ansible -----------------------------------------------------------------------------
    def provision(self, sandbox_id: str, playbook: str | os.PathLike, snapshot: Optional[str] = None,
                  **options: Any) -> Any:
        """Run an ansible playbook against a running sandbox; on failure roll it back and raise
        ProvisionError naming the task. Returns a ``ProvisionResult`` (see ``vmsandbox.provision``)."""
        from .provision import provision
        return provision(self, sandbox_id, playbook, snapshot=snapshot, **options)

    def inventory(self) -> dict:
        """An ansible inventory (the ``--list`` document) of every sandbox (see ``vmsandbox.inventory``)."""
        from .inventory import build_inventory
        return build_inventory(self)

    def on_rollback(self, callback: Callable[[Any], None]) -> None:
        """Register ``callback(RollbackEvent)`` for every rollback, successful or not."""
        self.snapshots.listeners.append(callback)

    # -- queries ---------------------------------------------------------------------------
    def get(self, sandbox: str) -> SandboxInfo:
        """A sandbox by id or name (NotFoundError if none), its state reconciled with the VM layer."""
        return self._reconcile(self.store.get_sandbox(sandbox))

    def list_sandboxes(self) -> list[SandboxInfo]:
        return [self._reconcile(i) for i in self.store.list_sandboxes()]

    def _reconcile(self, info: SandboxInfo) -> SandboxInfo:
        """Record what happened behind our back: a guest that powered off or vanished."""
        if info.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            return info
        try:
            actual = self.provider.machine_state(info.domain)
        except ProviderError:
            return info
        if actual in ("running", "paused") and actual != info.state.value and not info.reason.startswith("limit:"):
            return self._set_state(info, SandboxState(actual))
        if actual in ("shutoff", "crashed", None):
            why = "its domain is gone" if actual is None else f"the guest is {actual}"
            new = SandboxState.STOPPED if actual == "shutoff" else SandboxState.BROKEN
            info = self._set_state(info, new, why)
            self.store.audit("reconcile", new.value, info, reason=why)
        return info

    # -- commands --------------------------------------------------------------------------
    def execute(self, sandbox_id: str, command: str, timeout: float | None = None, working_dir: str | None = None,
                env: Mapping[str, str] | None = None, stdin: bytes | str | None = None, approve: bool = False,
                on_stdout: Callable[[bytes], None] | None = None,
                on_stderr: Callable[[bytes], None] | None = None, raise_on_timeout: bool = False) -> ExecutionResult:
        """Screen ``command`` with the policy, then run it in the sandbox over SSH.

        Raises SecurityError (blocked, or HIGH without approval), StateError / ResourceLimitError
        (sandbox not running), NotFoundError, ProviderError (transport). A non-zero exit is a normal
        result; so is a timeout (``timed_out``, the command killed) unless ``raise_on_timeout``,
        which raises CommandTimeout carrying the partial result.
        """
        if not isinstance(command, str) or not command.strip():
            raise ConfigError("the command is empty", "command")
        info = self.store.get_sandbox(sandbox_id)     # no libvirt round trip on the hot path
        self._require(info, "execute")
        self.screen(info, command, approve)
        to = timeout if timeout is not None else self.config.ssh.command_timeout
        if not to > 0:
            raise ConfigError(f"{timeout!r} must be above 0 seconds", "timeout")
        try:
            result = self.session(info).execute(command, timeout=to, working_dir=working_dir, env=env, stdin=stdin,
                                                max_output=self.config.ssh.max_output_bytes,
                                                on_stdout=on_stdout, on_stderr=on_stderr)
        except SandboxError as exc:
            self.store.audit("execute", "error", info, command=command, error=str(exc))
            if isinstance(exc, ProviderError):
                self._reconcile(info)                  # record a guest that died under the command
            raise
        self.store.touch(info.id)
        self.store.audit("execute", "timeout" if result.timed_out else "ok", info, command=command,
                         exit_code=result.exit_code, seconds=round(result.duration, 3),
                         truncated=result.truncated)
        if result.timed_out and raise_on_timeout:
            raise CommandTimeout(f"command timed out after {to:g} s and was killed: {command[:120]}", result, to)
        return result

    def screen(self, info: SandboxInfo, command: str, approve: bool = False):
        """Apply the command policy; returns the assessment or raises SecurityError."""
        if not self.config.safety.validation.enabled:
            return None
        a = self.validator.validate_command(command)
        decision = self.validator.decide(a)
        rules = [f.rule_id for f in a.findings]
        if decision == "needs_approval":
            approved = approve or self._approval_callback(a, info)
            decision = "approved" if approved else "needs_approval"
        self.store.audit("policy", decision, info, command=command, level=str(a.risk_level.value), rules=rules,
                         reason=a.reason)
        if decision == "block":
            raise SecurityError(f"blocked: {a.reason}", a)
        if decision == "needs_approval":
            raise SecurityError(f"needs approval: {a.reason} (pass approve=True, or `vmsandbox exec --approve`)", a)
        if decision in ("flag", "approved", "warn"):
            self._before_risky_command(info, a)
        return a

    def _approval_callback(self, assessment, info: SandboxInfo) -> bool:
        path = self.config.safety.approval_callback
        if not path:
            return False
        module, _, func = path.partition(":")
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load {path!r}: {exc}", "safety.approval_callback") from exc
        return bool(fn(assessment, info))

    def _before_risky_command(self, info: SandboxInfo, assessment) -> None:
        """Before a command rated MEDIUM or above: a disk-only automatic snapshot when
        ``rollback.auto_snapshot`` is on (disk-only keeps it at tens of milliseconds)."""
        if not self.config.rollback.auto_snapshot:
            return
        name = f"auto-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        self.snapshots.create(info.id, name, memory=False,
                              metadata={"automatic": True, "reason": f"before: {assessment.command[:200]}",
                                        "level": assessment.risk_level.value})

    def put_file(self, sandbox_id: str, local: str | os.PathLike, remote: str) -> None:
        """Copy a local file into the sandbox."""
        info = self.get(sandbox_id)
        self._require(info, "copy")
        if not Path(local).is_file():
            raise NotFoundError(f"no local file {str(local)!r}")
        self.session(info).put(Path(local), remote)
        self.store.audit("copy_in", "ok", info, local=str(local), remote=remote)

    def get_file(self, sandbox_id: str, remote: str, local: str | os.PathLike) -> None:
        """Copy a file out of the sandbox."""
        info = self.get(sandbox_id)
        self._require(info, "copy")
        self.session(info).get(remote, Path(local))
        self.store.audit("copy_out", "ok", info, remote=remote, local=str(local))

    # -- power -----------------------------------------------------------------------------
    def _power(self, sandbox_id: str, operation: str, target: SandboxState, action: Callable[[SandboxInfo], None],
               reason: str = "") -> SandboxInfo:
        info = self.get(sandbox_id)
        with self._locked(info.id):
            info = self.get(info.id)
            self._require(info, operation)
            try:
                action(info)
            except SandboxError as exc:
                self.store.audit(operation, "failed", info, error=str(exc))
                raise
            info = self._set_state(info, target, reason)
        self.store.audit(operation, "ok", info, **({"reason": reason} if reason else {}))
        return info

    def stop(self, sandbox_id: str, timeout: float = 30) -> SandboxInfo:
        """Power the guest off (ACPI, hard after ``timeout``); disk kept; ``start`` boots it again."""
        def act(info: SandboxInfo) -> None:
            self._drop_session(info.id)
            self.provider.shutdown_machine(info.domain, timeout)
        return self._power(sandbox_id, "stop", SandboxState.STOPPED, act)

    def start(self, sandbox_id: str, progress: Optional[Progress] = None) -> SandboxInfo:
        """Boot a stopped sandbox (also after a host restart) and wait until SSH answers."""
        def act(info: SandboxInfo) -> None:
            # Redefine every time: the active layer may have changed (a snapshot of the stopped
            # guest), or the definition may be gone (host restart).
            self.provider.start_machine(self._spec(info, self.layer_file(info.extra["active_layer"])))
            self._drop_session(info.id)
            self._wait_ready(info, progress)
        return self._power(sandbox_id, "start", SandboxState.RUNNING, act)

    def pause(self, sandbox_id: str, reason: str = "") -> SandboxInfo:
        """Freeze the guest's vCPUs (memory kept)."""
        return self._power(sandbox_id, "pause", SandboxState.PAUSED, lambda i: self.provider.pause_machine(i.domain), reason)

    def resume(self, sandbox_id: str) -> SandboxInfo:
        return self._power(sandbox_id, "resume", SandboxState.RUNNING, lambda i: self.provider.resume_machine(i.domain))

    def throttle(self, sandbox_id: str, fraction: float = 0.25, reason: str = "") -> SandboxInfo:
        """Cap each vCPU at ``fraction`` of a CPU (a libvirt CPU quota); ``unthrottle`` lifts it."""
        info = self.get(sandbox_id)
        self._require(info, "throttle")
        self.provider.set_cpu_quota(info.domain, fraction)
        info = self.store.update_sandbox(info.id, extra={"throttled": fraction, "throttle_reason": reason})
        self.store.audit("throttle", "ok", info, fraction=fraction, reason=reason)
        return info

    def unthrottle(self, sandbox_id: str) -> SandboxInfo:
        info = self.get(sandbox_id)
        self._require(info, "throttle")
        cpu = parse_cpu(info.cpu)
        self.provider.set_cpu_quota(info.domain, cpu if cpu < 1 else None)
        info = self.store.update_sandbox(info.id, extra={"throttled": None, "throttle_reason": None})
        self.store.audit("unthrottle", "ok", info)
        return info

    def emergency_shutdown(self, sandbox_id: str, reason: str = "emergency shutdown requested") -> SandboxInfo:
        """Pull the plug now; keep the disk, console and audit logs for forensics."""
        def act(info: SandboxInfo) -> None:
            self._drop_session(info.id)
            if self.provider.machine_state(info.domain) is not None:
                self.provider.kill_machine(info.domain)
        return self._power(sandbox_id, "emergency_shutdown", SandboxState.STOPPED, act, reason)

    def get_health_status(self, sandbox_id: str):
        """Current ``Health`` of a sandbox: status, metrics, alerts, recommendations."""
        info = self.get(sandbox_id)
        if self.watchdog is None:
            from .watchdog import Watchdog
            self.watchdog = Watchdog(self)          # sampled on demand, no thread
        return self.watchdog.health(info.id)

    # -- destroy and garbage collection ----------------------------------------------------
    def destroy(self, sandbox_id: str) -> bool:
        """Stop the guest and remove its domain, disks, logs and record. Idempotent per sandbox."""
        info = self.store.get_sandbox(sandbox_id)
        with self._locked(info.id):
            self._set_state(info, SandboxState.DESTROYING)
            self._drop_session(info.id)
            try:
                self.provider.destroy_machine(info.domain)
            except SandboxError as exc:
                self._set_state(info, SandboxState.BROKEN, f"destroy failed: {exc}")
                self.store.audit("destroy", "failed", info, error=str(exc))
                raise
            self._remove_files(info)
            self.store.delete_sandbox(info.id)
        try:
            os.unlink(self.state_dir / "locks" / f"{info.id}.lock")
        except FileNotFoundError:
            pass
        self.store.audit("destroy", "ok", info)
        return True

    def _remove_files(self, info: SandboxInfo) -> None:
        """The sandbox's directory, snapshots (records and memory files), active layer and every
        frozen layer that nothing else stands on any more."""
        self.snapshots.forget_sandbox(info)
        shutil.rmtree(self.sandbox_dir(info), ignore_errors=True)

    def gc(self, dry_run: bool = False) -> list[str]:
        """Destroy idle non-persistent sandboxes past ``sandbox.ttl_seconds`` and remove orphans
        (prefixed domains or sandbox directories with no record, records stuck half-created)."""
        done: list[str] = []
        now = time.time()
        records = self.store.list_sandboxes()
        for info in records:
            ttl = info.extra.get("ttl_seconds", self.config.sandbox.ttl_seconds)
            idle = now - info.last_used_at
            stuck = info.state in (SandboxState.CREATING, SandboxState.DESTROYING) and idle > 2 * self.config.sandbox.boot_timeout_seconds
            if stuck or (not info.persistent and idle > ttl):
                done.append(f"sandbox {info.name} ({'stuck ' + info.state.value if stuck else f'idle {idle:.0f} s'})")
                if not dry_run:
                    self.destroy(info.id)
        known_domains = {i.domain for i in self.store.list_sandboxes()}
        for dom in self.provider.list_machines(self.config.sandbox.domain_prefix, owner=str(self.state_dir)):
            if dom not in known_domains and not self._is_extra_domain(dom):
                done.append(f"domain {dom} (no record)")
                if not dry_run:
                    self.provider.destroy_machine(dom)
        for f in self.snapshots.orphan_files():
            done.append(f"file {f} (no record)")
            if not dry_run:
                f.unlink(missing_ok=True)
        if not dry_run:
            removed = self.snapshots.cleanup_older_than(self.config.rollback.retention_days)
            done.extend(f"snapshot {s} (past rollback.retention_days)" for s in removed)
        known_ids = {i.id for i in self.store.list_sandboxes()}
        for d in sorted((self.state_dir / "sandboxes").iterdir()):
            if d.name not in known_ids:
                done.append(f"directory {d} (no record)")
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True)
        self.store.audit("gc", "dry-run" if dry_run else "ok", removed=done)
        return done

    def _is_extra_domain(self, domain: str) -> bool:
        """Domains we own that are not a sandbox's current one (an old guest being retired)."""
        return domain in self.snapshots.retiring_domains()

    def box_users(self, box: str) -> list[str]:
        """Sandboxes whose disks stand on ``box`` (directly or through kept layers)."""
        owners = {l["owner"] for l in self.store.list_layers() if l["box"] == box}
        return sorted(i.name for i in self.store.list_sandboxes() if i.box == box or i.id in owners) or \
            sorted(owners)

    def require_box_unused(self, box: str) -> None:
        """Raise StateError when replacing or removing ``box`` would break sandbox disks."""
        users = self.box_users(box)
        if users:
            raise StateError(f"box {box!r} is in use by {', '.join(users)}; destroy them first")

    # -- diagnostics -----------------------------------------------------------------------
    def doctor(self) -> list[ProviderCheck]:
        checks = list(self.provider.checks())
        try:
            boxes = self.boxes.list()
            checks.append(ProviderCheck("boxes", bool(boxes), ", ".join(b.name for b in boxes) or "no boxes",
                                        "" if boxes else "vmsandbox box build tiny"))
        except SandboxError as exc:
            checks.append(ProviderCheck("boxes", False, str(exc), "vmsandbox box build tiny"))
        free = shutil.disk_usage(self.state_dir).free
        checks.append(ProviderCheck("disk space", free > 2 << 30, f"{free / (1 << 30):.1f} GiB free in {self.state_dir}",
                                    "" if free > 2 << 30 else "free some disk space"))
        writable = os.access(self.state_dir, os.W_OK)
        checks.append(ProviderCheck("state directory", writable, str(self.state_dir)))
        problems = self.snapshots.verify()
        checks.append(ProviderCheck("layer tree", not problems,
                                    "; ".join(problems) or f"{len(self.store.list_layers())} layers consistent",
                                    "" if not problems else "see docs/snapshots.md (recovery)"))
        return checks

    def audit_log(self, sandbox: str | None = None, limit: int = 100) -> list[dict]:
        return self.store.read_audit(sandbox, limit)

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.snapshots.wait_background()
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()
        self.provider.close()
        self.store.close()

    def __enter__(self) -> "SandboxCore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _mac_for(sandbox_id: str) -> str:
    h = uuid.uuid5(uuid.NAMESPACE_OID, sandbox_id).bytes
    return "52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2])


class AsyncSandboxCore:
    """``SandboxCore`` with every public operation as a coroutine (run in a worker thread)."""

    METHODS = ("create_sandbox", "execute", "destroy", "list_sandboxes", "get", "start", "stop", "pause",
               "resume", "put_file", "get_file", "gc", "doctor", "audit_log", "throttle", "unthrottle",
               "emergency_shutdown", "get_health_status", "create_snapshot", "rollback", "list_snapshots",
               "delete_snapshot")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sync = SandboxCore(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name not in self.METHODS and name not in getattr(self.sync, "ASYNC_EXTRA", ()):
            raise AttributeError(name)
        fn = getattr(self.sync, name)

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return call

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncSandboxCore":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
