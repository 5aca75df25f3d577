"""SandboxCore: the public façade of vmsandbox, and the place its collaborators are wired.

Every public operation of the library is a method here; each delegates to the module that owns
it: ``lifecycle`` (create, destroy), ``snapshots`` (snapshot, rollback, clone), ``operations``
(the lock/state/audit context every operation runs in), ``sessions`` (command sessions),
``maintenance`` (recovery, gc, doctor, box usage), the provider (the machine layer), the policy
(``safety``) and the watchdog. ``AsyncSandboxCore`` (``async_core``) offers the same API as
coroutines.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping as MappingABC
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .api_guard import guard_methods
from .config import Config, load_config
from .exceptions import CommandTimeout, ConfigError, ProviderError, SandboxError, SecurityError, StateError
from .layers import LayerTree
from .layout import Layout
from .lifecycle import Lifecycle
from .maintenance import Maintenance
from .models import ExecutionResult, SandboxInfo, SandboxState, Snapshot
from .operations import Operations, require
from .providers import Capability, Endpoint, Provider, ProviderCheck, load_provider, provider_class
from .request import SandboxRequest, check_name, parse_request
from .schema import Seconds, validate
from .providers.router import BoxSources, ProviderRouter, scheme
from .sessions import SessionPool
from .snapshots import SnapshotManager
from .standby import StandbyManager
from .store import Store, default_db_path

log = logging.getLogger("vmsandbox")

Progress = Callable[[str], None]


class SandboxCore:
    """Create, run commands in, snapshot, roll back and destroy sandboxes.

    ``SandboxCore()`` uses the defaults (or ``$VMSANDBOX_CONFIG``); ``config_path=`` a YAML file;
    ``config=`` a dict of sections (merged over the file). Raises ConfigError on bad config.
    ``provider=``, ``boxes=`` and ``sessions=`` replace the machine layer, the box store and the
    session pool (test doubles: ``vmsandbox.testing``).
    """

    def __init__(self, config_path: str | os.PathLike | None = None, config: Mapping | Config | None = None,
                 provider: Provider | None = None, boxes: Any = None, sessions: SessionPool | None = None,
                 start_watchdog: bool = True) -> None:
        self.config = load_config(config_path, config)
        sb = self.config.sandbox
        self.layout = Layout(sb.state_path, sb.domain_prefix)
        self.layout.create(sb.box_path)
        self.state_dir = self.layout.state_dir
        self.store = Store(default_db_path(self.state_dir))
        self.provider = provider or load_provider(sb.provider, self.config, self.layout)
        # Every collaborator holds the router: each sandbox's calls reach its own provider
        # (record field ``provider``); ``self.providers`` are those loaded so far, by name.
        self.router = ProviderRouter(self.provider, self.config, self.layout, self._providers_in_use,
                                     offered=[sb.container_provider] if provider is None else [])
        self.providers = self.router.providers
        self._boxes = boxes
        sources = BoxSources(lambda: self.boxes, self.router)
        self._validator = None
        self.sessions = sessions or SessionPool(self.router, self.store, lambda: sources,
                                                sb.boot_timeout_seconds, self.layout.sandbox_dir)
        self.ops = Operations(self.store, self.layout, lock_wait=float(sb.boot_timeout_seconds))
        self.tree = LayerTree(self.store, self.router, self.layout)
        self.lifecycle = Lifecycle(self.config, self.store, self.layout, self.router, self.sessions, self.tree,
                                   self.ops, lambda: sources)
        self.snapshots = SnapshotManager(self.config, self.store, self.router, self.sessions, self.layout,
                                         self.ops, self.tree, self.lifecycle)
        self.maintenance = Maintenance(self.config, self.store, self.layout, self.router, self.tree,
                                       self.lifecycle, self.snapshots, lambda: sources)
        self.standbys = StandbyManager(self.config, self.store, self.router, self.sessions, self.layout,
                                       self.lifecycle, self.tree, self.snapshots)
        self.snapshots.standbys = self.maintenance.standbys = self.standbys
        self.maintenance.recover()
        self.watchdog = None
        if self.config.monitoring.enabled and start_watchdog:
            self.start_watchdog()

    # -- providers per sandbox -------------------------------------------------------------
    def _providers_in_use(self) -> set[str]:
        """Providers the records name: of sandboxes, and of layers a crash may have left behind."""
        from .providers.router import scheme
        return ({i.provider for i in self.store.list_sandboxes()}
                | {scheme(l.ref) for l in self.store.list_layers()} | ({self.config.sandbox.container_provider}
                   if self.config.sandbox.default_isolation == "container" else set())) - {None, ""}

    def provider_of(self, sandbox: str) -> Provider:
        """The provider of sandbox ``sandbox`` (id or name)."""
        return self.router.get(self.store.get_sandbox(_ref(sandbox)).provider or self.provider.name)

    def _on(self, sandbox: str):
        """Route this thread's provider calls to the provider of ``sandbox`` while the context lasts."""
        return self.router.using(self.store.get_sandbox(_ref(sandbox)).provider or None)

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

    def start_watchdog(self):
        """Start the watchdog thread (sampling, alerts, limit actions) if it is not running."""
        from .watchdog import Watchdog
        if self.watchdog is None:
            self.watchdog = Watchdog(self)
        self.watchdog.start()
        return self.watchdog

    def session(self, info: SandboxInfo):
        """The open command session to a sandbox (the watchdog's in-guest probes use it)."""
        return self.sessions.get(info)

    def console_log(self, info: SandboxInfo) -> Path:
        """The serial console log of the sandbox's current guest."""
        return self.layout.console_log(info.id, info.generation)

    def parse_request(self, config: Mapping | None) -> SandboxRequest:
        """Validate a ``create_sandbox`` config dict (see ``vmsandbox.request``); ConfigError names the bad key.
        A VM request names a VM provider; a provider that finds its own boxes gets ``<provider>:<box>``."""
        req = parse_request(self.config, config)
        if req.isolation_type == "vm" and provider_class(req.provider).ref_scheme:
            from .providers import PROVIDERS
            vms = ", ".join(n for n in PROVIDERS if not provider_class(n).ref_scheme)
            raise ConfigError(f"{req.provider!r} is not a VM provider (known: {vms})", "sandbox config.provider")
        if provider_class(req.provider).resolves_boxes and not scheme(req.box):
            req = replace(req, box=f"{req.provider}:{req.box}")     # the provider finds it (its own boxes, or the store's)
        return req

    # -- create ----------------------------------------------------------------------------
    def create_sandbox(self, name: str, config: Mapping | None = None, progress: Optional[Progress] = None) -> str:
        """Create and boot a sandbox; returns its id once a command can run in it.

        Raises ConfigError (bad name/config), NotFoundError (unknown box), ResourceLimitError (over
        safety.limits), ProviderError/GuestUnreachableError (boot failed). A failure leaves nothing behind.
        """
        check_name(name)
        req = self.parse_request(config)
        if req.clone_from:        # a clone lives where its snapshot does
            origin = self.store.get_sandbox(self.snapshots.resolve(req.clone_from).sandbox_id)
            with self._on(origin.id):
                return (self.standbys.clone(name, self.snapshots.resolve(req.clone_from), req, progress)
                        or self.snapshots.clone(name, req.clone_from, req, progress))
        with self.router.using(req.provider):
            return self.lifecycle.create(name, req, progress)

    # -- snapshots -------------------------------------------------------------------------
    def create_snapshot(self, sandbox_id: str, name: str, memory: Optional[bool] = None,
                        metadata: Mapping | None = None, standby: Optional[bool] = None) -> str:
        """Freeze the sandbox's disk (and, by default for a running guest, its memory); returns the
        snapshot id. The guest keeps running. ``standby=True`` keeps a warm standby of it, so a
        rollback to it is a swap (None: as ``rollback.standby`` says). Raises ConfigError (bad or
        duplicate name), StateError, SandboxError (the provider keeps no standbys)."""
        if standby is not None and not isinstance(standby, bool):
            raise ConfigError(f"{standby!r} must be true or false", "standby")
        with self._on(sandbox_id):
            if standby:
                self.standbys.check_snapshot_standby(_ref(sandbox_id), memory)
            snap_id = self.snapshots.create(sandbox_id, name, memory, dict(metadata or {}))
            self.standbys.after_snapshot(snap_id, standby)
            return snap_id

    def rollback(self, sandbox_id: str, snapshot_id: str, preserve_logs: bool = True,
                 progress: Optional[Progress] = None, notify: bool = True) -> bool:
        """Return the sandbox to a snapshot: memory snapshots resume where they were, disk-only ones
        boot. Raises RollbackError (the sandbox is left as it was, or BROKEN and says so), NotFoundError.
        ``notify=False``: rollback callbacks are not called for this one."""
        with self._on(sandbox_id):
            return self.snapshots.rollback(sandbox_id, snapshot_id, preserve_logs, progress, notify)

    def list_snapshots(self, sandbox_id: str) -> list[Snapshot]:
        return self.snapshots.list(sandbox_id)

    def delete_snapshot(self, sandbox_id: str, snapshot_id: str) -> None:
        """Forget a snapshot; its layer is freed when nothing else stands on it."""
        with self._on(sandbox_id):
            row = self.snapshots._own_snapshot(self.store.get_sandbox(_ref(sandbox_id)), snapshot_id)
            self.standbys.drop_for_snapshot(row.id)
            self.snapshots.delete(sandbox_id, snapshot_id)

    def pin_snapshot(self, sandbox_id: str, snapshot_id: str, pinned: bool = True) -> Snapshot:
        """Pin a snapshot (``pinned=False``: unpin it): pinned ones survive retention by age, count
        and memory size, and ``delete_snapshot`` refuses them. Returns the updated record."""
        if not isinstance(pinned, bool):
            raise ConfigError(f"{pinned!r} must be true or false", "pinned")
        with self._on(sandbox_id):
            return self.snapshots.pin(sandbox_id, snapshot_id, pinned)

    def cleanup_snapshots(self, days: float) -> list[str]:
        """Delete snapshots older than ``days`` (0 keeps all); returns their ids."""
        return self.snapshots.cleanup_older_than(days)

    # -- warm standbys ----------------------------------------------------------------------
    def set_pool(self, snapshot: str, size: int) -> dict:
        """Keep ``size`` paused standbys of memory snapshot ``snapshot`` (``SANDBOX:NAME`` or an id)
        ready for ``create_sandbox(name, {"clone_from": snapshot})``; 0 removes the pool. Filled in
        the background, within ``rollback.standby_max`` / ``standby_memory`` (ConfigError beyond)."""
        return self.standbys.set_pool(snapshot, size)

    def list_pools(self) -> list[dict]:
        """Every standby target (pools and rollback standbys) with how many are ready."""
        return self.standbys.pools()

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
        """A sandbox by id or name (NotFoundError if none), its state reconciled with the machine layer."""
        return self._reconcile(self.store.get_sandbox(_ref(sandbox)))

    def list_sandboxes(self) -> list[SandboxInfo]:
        return [self._reconcile(i) for i in self.store.list_sandboxes()]

    def _reconcile(self, info: SandboxInfo) -> SandboxInfo:
        """Record what happened behind our back: a guest that powered off or vanished. Checked
        again under the sandbox's lock, so an operation in flight is never mistaken for it."""
        if info.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            return info
        provider = self.router.get(info.provider or self.provider.name)
        try:
            actual = provider.machine_state(info.domain)
        except ProviderError:
            return info
        if actual in ("running", "paused") and actual != info.state.value and not info.reason.startswith("limit:"):
            return self.store.update_sandbox(info.id, state=SandboxState(actual))
        if actual not in ("shutoff", "crashed", None):
            return info
        try:
            with self.layout.lock(info.id, "reconcile", wait=0):
                current = self.store.find_sandbox(info.id)
                if current is None or (current.domain, current.state) != (info.domain, info.state):
                    return current or info        # an operation changed it meanwhile
                actual = provider.machine_state(info.domain)
                if actual not in ("shutoff", "crashed", None):
                    return current
                why = "its machine is gone" if actual is None else f"the guest is {actual}"
                new = SandboxState.STOPPED if actual == "shutoff" else SandboxState.BROKEN
                info = self.store.update_sandbox(info.id, state=new, reason=why)
                self.store.audit("reconcile", new.value, info, reason=why)
                return info
        except (StateError, ProviderError):       # an operation holds it, or the provider is down
            return info

    # -- commands --------------------------------------------------------------------------
    def execute(self, sandbox_id: str, command: str, timeout: float | None = None, working_dir: str | None = None,
                env: Mapping[str, str] | None = None, stdin: bytes | str | None = None, approve: bool = False,
                on_stdout: Callable[[bytes], None] | None = None,
                on_stderr: Callable[[bytes], None] | None = None, raise_on_timeout: bool = False) -> ExecutionResult:
        """Screen ``command`` with the policy, then run it in the sandbox.

        Every argument is checked before anything happens (ConfigError names the bad one). Raises
        SecurityError (blocked, or HIGH without approval), StateError / ResourceLimitError (sandbox
        not running), NotFoundError, ProviderError (transport). A non-zero exit is a normal result;
        so is a timeout (``timed_out``, the command killed) unless ``raise_on_timeout``, which
        raises CommandTimeout carrying the partial result. The policy's assessment is on the result.
        """
        self._check_execute_args(sandbox_id, command, timeout, working_dir, env, stdin, approve)
        to = self.config.ssh.command_timeout if timeout is None else validate(Seconds, timeout, "timeout")
        info = self.store.get_sandbox(sandbox_id)
        require(info, "execute")
        assessment = self.screen(command)
        decision = self._decide(info, command, assessment, approve)
        if decision in ("flag", "approved", "warn"):
            self._auto_snapshot(info, assessment)
        with self.layout.lock(info.id, "execute", shared=True, wait=self.ops.lock_wait):
            info = self.store.get_sandbox(info.id)        # act on what is current under the lock
            require(info, "execute")
            session = self.sessions.get(info)
        started_at = time.time()
        try:
            result = session.execute(command, timeout=to, working_dir=working_dir, env=env, stdin=stdin,
                                     max_output=self.config.ssh.max_output_bytes,
                                     on_stdout=on_stdout, on_stderr=on_stderr)
        except SandboxError as exc:
            self.store.audit("execute", "error", info, command=command, error=str(exc))
            if isinstance(exc, ProviderError):
                self._reconcile(info)                  # record a guest that died under the command
            raise
        result = replace(result, command=command, sandbox=info.name, started_at=started_at,
                         assessment=assessment.to_dict() if assessment is not None else None)
        with self.store.transaction(immediate=True):        # one commit for both (hot path)
            self.store.touch(info.id)
            self.store.audit("execute", "timeout" if result.timed_out else "ok", info, command=command,
                             exit_code=result.exit_code, seconds=round(result.duration, 3), truncated=result.truncated)
        if result.timed_out and raise_on_timeout:
            raise CommandTimeout(f"command timed out after {to:g} s and was killed: {command[:120]}", result, to)
        return result

    @staticmethod
    def _check_execute_args(sandbox_id: Any, command: Any, timeout: Any, working_dir: Any, env: Any, stdin: Any,
                            approve: Any) -> None:
        if not isinstance(sandbox_id, str):
            raise ConfigError(f"{type(sandbox_id).__name__} is not a sandbox id or name", "sandbox_id")
        if not isinstance(command, str) or not command.strip():
            raise ConfigError("the command is empty" if isinstance(command, str)
                              else f"{type(command).__name__} is not a command string", "command")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or not timeout > 0):
            raise ConfigError(f"{timeout!r} must be a finite number of seconds above 0", "timeout")
        if working_dir is not None and not isinstance(working_dir, str):
            raise ConfigError(f"{working_dir!r} is not a path", "working_dir")
        if env is not None and (not isinstance(env, MappingABC)
                                or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise ConfigError("must map names to string values", "env")
        if stdin is not None and not isinstance(stdin, (bytes, str)):
            raise ConfigError(f"{type(stdin).__name__} is not bytes or str", "stdin")
        if not isinstance(approve, bool):
            raise ConfigError(f"{approve!r} must be true or false", "approve")

    def screen(self, command: str):
        """The policy's assessment of ``command`` (None when validation is off); no side effect."""
        if not self.config.safety.validation.enabled:
            return None
        return self.validator.validate_command(command)

    def _decide(self, info: SandboxInfo, command: str, assessment, approve: bool) -> str:
        """Apply the policy's decision: audit it; raise SecurityError when blocked or not approved."""
        if assessment is None:
            return "allow"
        decision = self.validator.decide(assessment)
        if decision == "needs_approval":
            approved = approve or self._approval_callback(assessment, info)
            decision = "approved" if approved else "needs_approval"
        self.store.audit("policy", decision, info, command=command, level=str(assessment.risk_level.value),
                         rules=[f.rule_id for f in assessment.findings], reason=assessment.reason)
        if decision == "block":
            raise SecurityError(f"blocked: {assessment.reason}", assessment)
        if decision == "needs_approval":
            raise SecurityError(f"needs approval: {assessment.reason} (pass approve=True, or `vmsandbox exec --approve`)",
                                assessment)
        return decision

    def _approval_callback(self, assessment, info: SandboxInfo) -> bool:
        path = self.config.safety.approval_callback
        if not path:
            return False
        module, _, func = path.partition(":")
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load {path!r}: {exc}", "safety.approval_callback") from exc
        try:
            return bool(fn(assessment, info))
        except Exception as exc:     # a broken callback denies; the operator sees which one and why
            self.store.audit("policy", "callback_failed", info, command=assessment.command, callback=path,
                             error=f"{type(exc).__name__}: {exc}")
            raise SecurityError(f"approval callback {path!r} failed ({type(exc).__name__}: {exc}); "
                                f"the command was not run", assessment) from exc

    def _auto_snapshot(self, info: SandboxInfo, assessment) -> None:
        """Before a command rated MEDIUM or above: a disk-only automatic snapshot when
        ``rollback.auto_snapshot`` is on (disk-only keeps it at tens of milliseconds)."""
        if not self.config.rollback.auto_snapshot or Capability.DISK_SNAPSHOTS not in self.provider_of(info.id).capabilities:
            return
        name = f"auto-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        self.create_snapshot(info.id, name, memory=False,
                              metadata={"automatic": True, "reason": f"before: {assessment.command[:200]}",
                                        "level": assessment.risk_level.value})

    def put_file(self, sandbox_id: str, local: str | os.PathLike, remote: str, max_size: int | None = None,
                 recursive: bool = False) -> None:
        """Copy a local file (a directory with ``recursive``) into the sandbox; at most ``max_size``
        bytes (default ``ssh.max_copy``). See ``filecopy.put``."""
        self._copy("copy_in", sandbox_id, lambda s, cap: s.put(Path(local), remote, max_size=cap, recursive=recursive),
                   max_size, local=str(local), remote=remote)

    def get_file(self, sandbox_id: str, remote: str, local: str | os.PathLike, max_size: int | None = None,
                 recursive: bool = False) -> None:
        """Copy a file (a directory with ``recursive``) out of the sandbox, to ``local`` or into it
        when it is a directory; at most ``max_size`` bytes (default ``ssh.max_copy``); nothing is
        left behind on failure. See ``filecopy.get``."""
        self._copy("copy_out", sandbox_id, lambda s, cap: s.get(remote, Path(local), max_size=cap, recursive=recursive),
                   max_size, remote=remote, local=str(local))

    def _copy(self, operation: str, sandbox_id: str, run: Callable, max_size: int | None, **detail: Any) -> None:
        cap = self.config.ssh.max_copy_bytes if max_size is None else max_size
        if isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
            raise ConfigError(f"{max_size!r} must be a positive number of bytes", "max_size")
        with self.layout.lock(self.store.get_sandbox(_ref(sandbox_id)).id, "copy", shared=True,
                              wait=self.ops.lock_wait):
            info = self.store.get_sandbox(_ref(sandbox_id))
            require(info, "copy")
            session = self.sessions.get(info)
        try:
            run(session, cap)
        except SandboxError as exc:
            self.store.audit(operation, "failed", info, error=str(exc), **detail)
            raise
        self.store.audit(operation, "ok", info, **detail)

    def ssh_target(self, sandbox_id: str, purpose: str = "ssh") -> tuple[SandboxInfo, Endpoint]:
        """Where an outside client (ssh, scp, ansible) connects to a running sandbox now; audited
        as ``purpose``."""
        info = self.get(sandbox_id)
        require(info, "execute")
        endpoint = self.sessions.endpoint(info)
        self.store.audit(purpose, "ok", info)
        return info, endpoint

    # -- power -----------------------------------------------------------------------------
    def _power(self, sandbox_id: str, operation: str, target: SandboxState, action: Callable[[SandboxInfo], None],
               reason: str = "", **detail: Any) -> SandboxInfo:
        with self._on(sandbox_id), self.ops.run(_ref(sandbox_id), operation) as op:
            action(op.info)
            op.update(state=target, reason=reason)
            op.detail.update(detail, **({"reason": reason} if reason else {}))
        return op.info

    def stop(self, sandbox_id: str, timeout: float = 30) -> SandboxInfo:
        """Power the guest off (ACPI, hard after ``timeout``); disk kept; ``start`` boots it again."""
        def act(info: SandboxInfo) -> None:
            self.sessions.drop(info.id)
            self.router.shutdown_machine(info.domain, timeout)
        self.provider_of(sandbox_id).require_capability(Capability.STOP_START, "stop a sandbox")
        return self._power(sandbox_id, "stop", SandboxState.STOPPED, act)

    def start(self, sandbox_id: str, progress: Optional[Progress] = None) -> SandboxInfo:
        """Boot a stopped sandbox (also after a host restart) and wait until a command runs."""
        def act(info: SandboxInfo) -> None:
            # Redefine every time: the active layer may have changed (a snapshot of the stopped
            # guest), or the definition may be gone (host restart).
            self.router.start_machine(self.lifecycle.spec(info))
            self.sessions.drop(info.id)
            self.lifecycle.wait_ready(info, progress)
        info = self._power(sandbox_id, "start", SandboxState.RUNNING, act)
        self.snapshots.rotate_console_logs(info)
        return info

    def pause(self, sandbox_id: str, reason: str = "") -> SandboxInfo:
        """Freeze the guest's vCPUs (memory kept)."""
        self.provider_of(sandbox_id).require_capability(Capability.PAUSE, "pause a sandbox")
        return self._power(sandbox_id, "pause", SandboxState.PAUSED, lambda i: self.router.pause_machine(i.domain),
                           reason)

    def resume(self, sandbox_id: str) -> SandboxInfo:
        self.provider_of(sandbox_id).require_capability(Capability.PAUSE, "resume a sandbox")
        return self._power(sandbox_id, "resume", SandboxState.RUNNING, lambda i: self.router.resume_machine(i.domain))

    def throttle(self, sandbox_id: str, fraction: float = 0.25, reason: str = "") -> SandboxInfo:
        """Cap each vCPU at ``fraction`` of a CPU (a CPU quota); ``unthrottle`` lifts it."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"{fraction!r} must be a fraction of one CPU in (0, 1]", "fraction")
        self.provider_of(sandbox_id).require_capability(Capability.CPU_QUOTA, "throttle a sandbox")
        with self._on(sandbox_id), self.ops.run(_ref(sandbox_id), "throttle") as op:
            self.router.set_cpu_quota(op.info.domain, fraction)
            op.update(throttled=fraction, throttle_reason=reason)
            op.detail.update(fraction=fraction, reason=reason)
        return op.info

    def unthrottle(self, sandbox_id: str) -> SandboxInfo:
        self.provider_of(sandbox_id).require_capability(Capability.CPU_QUOTA, "unthrottle a sandbox")
        with self._on(sandbox_id), self.ops.run(_ref(sandbox_id), "unthrottle") as op:
            cpu = float(op.info.cpu)
            self.router.set_cpu_quota(op.info.domain, cpu if cpu < 1 else None)
            op.update(throttled=None, throttle_reason="")
        return op.info

    def emergency_shutdown(self, sandbox_id: str, reason: str = "emergency shutdown requested") -> SandboxInfo:
        """Pull the plug now; keep the disk, console and audit logs for forensics."""
        def act(info: SandboxInfo) -> None:
            self.sessions.drop(info.id)
            if self.router.machine_state(info.domain) is not None:
                self.router.kill_machine(info.domain)
        return self._power(sandbox_id, "emergency_shutdown", SandboxState.STOPPED, act, reason)

    def get_health_status(self, sandbox_id: str):
        """Current ``Health`` of a sandbox: status, metrics, alerts, recommendations."""
        info = self.get(sandbox_id)
        if self.watchdog is None:
            from .watchdog import Watchdog
            self.watchdog = Watchdog(self)          # sampled on demand, no thread
        return self.watchdog.health(info.id)

    # -- destroy and upkeep ----------------------------------------------------------------
    def destroy(self, sandbox_id: str) -> bool:
        """Stop the guest and remove its machine, disks, logs and record. Waits (bounded) for an
        operation in progress on it; with the provider's daemon down, changes nothing and says so."""
        with self._on(sandbox_id):
            self.standbys.drop_for_sandbox(self.store.get_sandbox(_ref(sandbox_id)).id)
            return self.lifecycle.destroy(_ref(sandbox_id))

    def gc(self, dry_run: bool = False) -> list[str]:
        """Destroy idle non-persistent sandboxes past their ttl, finish what crashed processes left,
        and remove orphans (machines, files or directories no record accounts for)."""
        return self.maintenance.gc(dry_run)

    def box_users(self, box: str) -> list[str]:
        return self.maintenance.box_users(box)

    def require_box_unused(self, box: str) -> None:
        self.maintenance.require_box_unused(box)

    def remove_box(self, box: str) -> None:
        """Remove a stored box; StateError while sandboxes stand on it."""
        self.require_box_unused(box)
        self.boxes.remove(box)

    def doctor(self) -> list[ProviderCheck]:
        return self.maintenance.doctor()

    def label(self, sandbox_id: str, labels: Mapping[str, str], remove: Any = ()) -> dict:
        """Set ``labels`` and drop the keys in ``remove`` (checked by ``inventory.parse_labels``);
        returns the sandbox's labels. Audited."""
        with self.ops.run(_ref(sandbox_id), "label", check=False) as op:
            current = {k: v for k, v in {**op.info.labels, **labels}.items() if k not in set(remove)}
            op.update(labels=current)
            op.detail.update(labels=current)
        return current

    def audit(self, operation: str, outcome: str, sandbox: str | None = None, **detail: Any) -> None:
        """Append a record to the audit log (for tools built on the core, such as the farm)."""
        info = self.store.find_sandbox(sandbox) if sandbox else None
        self.store.audit(operation, outcome, info, **detail)

    def audit_log(self, sandbox: str | None = None, limit: int = 100) -> list[dict]:
        return self.store.read_audit(sandbox, limit)

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.snapshots.wait_background()
        self.standbys.close()
        self.sessions.close()
        self.router.close()
        self.store.close()

    def __enter__(self) -> "SandboxCore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ref(sandbox: Any) -> str:
    """A sandbox reference checked at the API boundary."""
    if not isinstance(sandbox, str) or not sandbox:
        raise ConfigError(f"{type(sandbox).__name__} {sandbox!r:.60} is not a sandbox id or name", "sandbox_id")
    return sandbox


#: the public operations, synchronous here and coroutines in ``AsyncSandboxCore``
PUBLIC_METHODS = ("create_sandbox", "execute", "destroy", "list_sandboxes", "get", "start", "stop", "pause",
                  "resume", "put_file", "get_file", "gc", "doctor", "audit_log", "throttle", "unthrottle",
                  "emergency_shutdown", "get_health_status", "create_snapshot", "rollback", "list_snapshots",
                  "delete_snapshot", "cleanup_snapshots", "set_pool", "list_pools", "pin_snapshot")

# Refuse a synchronous call inside an event loop, and wrong arguments, before anything happens.
guard_methods(SandboxCore, PUBLIC_METHODS)
