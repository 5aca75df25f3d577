"""Snapshots, rollback and linked clones on the layer tree (the tree's rules: ``layers``).

A snapshot freezes the sandbox's active layer (and may save the guest's memory) and gives the
sandbox a new active layer on top; rollback and clone both put a new active layer on a frozen
one. Every multi-step operation runs in the operation context (``operations``) and is journaled
before it creates anything, so ``recover()`` can finish or undo it after a crash.

Rollback starts the new machine under a new name, uuid and port while the old one still runs
(for libvirt see ``providers/libvirt/savefile.py``); the old one is retired in the background.
The provider makes and reads every artifact; this module only keeps their references.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .hostkeys import rotate as rotate_host_key
from .config import Config
from .exceptions import ConfigError, NotFoundError, RollbackError, SandboxError, StateError
from .layers import LayerTree
from .layout import Layout, fault_point
from .lifecycle import Lifecycle
from .models import SandboxInfo, SandboxState, Snapshot
from .operations import Operations
from .providers import Capability, Provider, SnapshotPlan
from .retention import next_victim, rotate_console_logs
from .sessions import SessionPool
from .store import Store

log = logging.getLogger("vmsandbox.snapshots")
SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,79}")


@dataclass(frozen=True)
class RollbackEvent:
    """What rollback callbacks receive."""
    sandbox_id: str
    snapshot_id: str
    ok: bool
    seconds: float
    error: str = ""


class SnapshotManager:
    standbys = None          # the StandbyManager (standby.py), set by the core: rollback swaps to a ready standby

    def __init__(self, config: Config, store: Store, provider: Provider, sessions: SessionPool, layout: Layout,
                 ops: Operations, tree: LayerTree, lifecycle: Lifecycle) -> None:
        self.config = config
        self.store = store
        self.provider = provider
        self.sessions = sessions
        self.layout = layout
        self.ops = ops
        self.tree = tree
        self.lifecycle = lifecycle
        self.listeners: list[Callable[[RollbackEvent], None]] = []
        self._background_threads: list[threading.Thread] = []

    def snapshot_lock(self, snapshot_id: str, operation: str, wait: float = 120.0):
        """Held while a snapshot's memory state is read or rewritten (restore, compaction, delete)."""
        return self.layout.lock(f"snapshot-{snapshot_id}", operation, wait=wait)

    def resolve(self, ref: str, sandbox: SandboxInfo | None = None) -> Snapshot:
        """A snapshot by id (from any sandbox: callers check ownership), by name within
        ``sandbox``, or as ``SANDBOX:NAME``."""
        if sandbox is None and ":" in ref and not ref.startswith("sn-"):
            sb, _, name = ref.partition(":")
            sandbox = self.store.get_sandbox(sb)
            ref = name
        return self.store.get_snapshot(ref, sandbox.id if sandbox else None)

    def _own_snapshot(self, info: SandboxInfo, ref: str) -> Snapshot:
        """Snapshot ``ref`` of sandbox ``info``; NotFoundError (naming its owner) for another's."""
        row = self.resolve(ref, info)
        if row.sandbox_id != info.id:
            owner = self.store.find_sandbox(row.sandbox_id)
            raise NotFoundError(f"snapshot {row.name!r} belongs to sandbox {owner.name if owner else row.sandbox_id!r}, "
                                f"not {info.name!r} (use it with clone_from instead)")
        return row

    # -- create ----------------------------------------------------------------------------
    def create(self, sandbox_ref: str, name: str, memory: Optional[bool] = None, metadata: dict | None = None) -> str:
        if not isinstance(name, str) or not SNAPSHOT_NAME_RE.fullmatch(name):
            raise ConfigError(f"{name!r} is not a valid snapshot name (1-80 of A-Z a-z 0-9 . _ : -)", "name")
        self.provider.require_capability(Capability.DISK_SNAPSHOTS, "take a snapshot")
        if memory:
            self.provider.require_capability(Capability.MEMORY_SNAPSHOTS, "take a snapshot with memory")
        with self.ops.run(sandbox_ref, "snapshot") as op:
            info = op.info
            if self._name_taken(info.id, name):
                raise ConfigError(f"sandbox {info.name!r} already has a snapshot named {name!r}", "name")
            live = info.state in (SandboxState.RUNNING, SandboxState.PAUSED)
            want_memory = self.config.rollback.memory if memory is None else memory
            with_memory = bool(want_memory and live and Capability.MEMORY_SNAPSHOTS in self.provider.capabilities)
            disk_live = live and not with_memory
            snap_id = self.layout.new_snapshot_id()
            new_layer = self.layout.new_layer_id()
            old_layer = self.store.get_layer(info.active_layer)
            spare = self.tree.spares.take(info.id, old_layer.id) if disk_live else None
            plan = self.provider.plan_snapshot(old_layer.ref, with_memory)
            if spare is not None:
                plan = dataclasses.replace(plan, active_ref=spare.ref, reuse=True)
            with self.store.transaction(immediate=True):        # the spare changes hands atomically
                op.journal("snapshot", snapshot=snap_id, name=name, new_layer=new_layer, old_layer=old_layer.id,
                           domain=info.domain, live=live, metadata=metadata or {}, **plan.to_dict())
                if spare is not None:
                    self.store.journal_end(spare.entry)
            fault_point("snapshot:begun")
            try:
                if live:
                    if disk_live and info.state is SandboxState.RUNNING and self.config.rollback.guest_sync:
                        started = time.perf_counter()
                        self._guest_sync(info)
                        op.detail.update(flush_ms=round((time.perf_counter() - started) * 1000, 1))
                    started = time.perf_counter()
                    self.provider.snapshot_machine(info.domain, plan)
                    op.detail.update(switch_ms=round((time.perf_counter() - started) * 1000, 1), reused=plan.reuse)
                else:
                    self.provider.snapshot_stopped(plan)
            except BaseException:
                self.provider.discard_snapshot(plan)
                op.done()
                raise
            fault_point("snapshot:switched")
            self._commit_snapshot(info, op.journal_id, snap_id, name, new_layer, old_layer.id, plan,
                                  plan.memory_ref, metadata or {})
            op.journal_id = None
            fault_point("snapshot:committed")
            op.detail.update(snapshot=snap_id, name=name, memory=with_memory)
        if with_memory and self.config.rollback.compression:
            self._background(lambda: self._compact(snap_id), f"compact-{snap_id}")
        if disk_live:        # the next disk-only snapshot's overlay, off its hot path
            self.tree.spares.make_later(info.id, new_layer, plan.active_ref)
        else:                # the sandbox writes a new layer: a spare on the old one is stale
            self.tree.spares.discard(info.id, keep_layer=new_layer)
        self.cleanup_older_than(self.config.rollback.retention_days, info.id, keep=snap_id)
        self.enforce_retention(info.id, keep=snap_id)
        return snap_id

    def _name_taken(self, sandbox_id: str, name: str) -> bool:
        try:          # by name within the sandbox (one row, not the whole list)
            return self.store.get_snapshot(name, sandbox_id).sandbox_id == sandbox_id
        except NotFoundError:
            return False

    def _commit_snapshot(self, info: SandboxInfo, journal_id: str, snap_id: str, name: str, new_layer: str,
                         old_layer: str, plan: SnapshotPlan, memory_ref: Optional[str], metadata: dict) -> None:
        """One transaction: the old active layer becomes a frozen snapshot layer; the new one is active."""
        with self.store.transaction(immediate=True):
            self.store.update_layer(old_layer, ref=plan.frozen_ref, frozen=True)
            self.store.add_layer(new_layer, plan.active_ref, old_layer, info.box, info.id)
            self.store.add_snapshot(snap_id, info.id, name, old_layer, memory_ref, info.cpu, info.memory, metadata)
            self.store.update_sandbox(info.id, active_layer=new_layer)
            self.store.journal_end(journal_id)

    def _guest_sync(self, info: SandboxInfo) -> None:
        """Flush the guest's page cache before a disk-only snapshot of a running guest (best effort)."""
        try:
            self.sessions.get(info).execute("sync", timeout=10)
        except SandboxError as exc:
            log.warning("sync before snapshot of %s failed: %s", info.name, exc)

    def _compact(self, snap_id: str) -> None:
        try:
            with self.snapshot_lock(snap_id, "compact its memory state"):
                snap = self.store.find_snapshot(snap_id)
                if snap is None or not snap.memory_ref:
                    return
                new_ref = self.provider.compact_memory(snap.memory_ref)
                if new_ref != snap.memory_ref:
                    self.store.update_snapshot(snap_id, memory_ref=new_ref)
                    self.provider.delete_memory(snap.memory_ref)
        except Exception as exc:          # keep the raw state; never lose a snapshot
            log.error("compacting the memory state of %s failed: %s", snap_id, exc)

    # -- rollback --------------------------------------------------------------------------
    def rollback(self, sandbox_ref: str, snapshot_ref: str, preserve_logs: bool = True,
                 progress: Callable[[str], None] | None = None, notify: bool = True) -> bool:
        started = time.monotonic()
        target = self.resolve(snapshot_ref, self.store.get_sandbox(sandbox_ref))   # NotFoundError: bad input

        def failed(info: SandboxInfo, exc: BaseException) -> None:
            if notify:
                self._notify(RollbackEvent(info.id, target.id, False, time.monotonic() - started, str(exc)))

        with self.ops.run(sandbox_ref, "rollback", error=RollbackError, on_failure=failed) as op:
            row = self._own_snapshot(op.info, target.id)
            self._rollback_locked(op, row, progress)
            # a sandbox that had a spare takes disk-only snapshots: make one for its new layer
            if self.tree.spares.discard(op.info.id, keep_layer=op.info.active_layer):
                self.tree.spares.make_later(op.info.id, op.info.active_layer,
                                            self.store.get_layer(op.info.active_layer).ref)
            op.detail.update(snapshot=row.id, name=row.name, memory=row.has_memory)
        self.rotate_console_logs(op.info, keep=None if preserve_logs else 1)
        if notify:
            self._notify(RollbackEvent(op.info.id, row.id, True, time.monotonic() - started))
        return True

    def _rollback_locked(self, op, row: Snapshot, progress) -> None:
        if self.standbys is not None and self.standbys.swap(op, row, progress):
            return               # a ready standby of ``row`` took over
        info = op.info
        gen = info.generation + 1
        new_layer = self.layout.new_layer_id()
        new_domain = self.layout.machine_name(info.name, info.id, gen)
        new_uuid = str(uuid.uuid4())
        base = self.store.get_layer(row.layer)
        new_port = self.store.hold_port(info.id, tuple(self.config.sandbox.port_range))
        op.journal("rollback", snapshot=row.id, new_layer=new_layer, new_domain=new_domain, new_port=new_port,
                   old_domain=info.domain, old_layer=info.active_layer, generation=gen, prior_state=info.state.value)
        fault_point("rollback:begun")
        op.update(state=SandboxState.ROLLING_BACK)
        new_ref = None
        frozen = False
        try:
            frozen = self.freeze_old_guest(info)
            new_ref = self.provider.new_layer(base.ref)
            op.step("layer", new_ref=new_ref)
            fault_point("rollback:overlay")
            if progress:
                progress("starting the guest from the snapshot")
            spec = self.lifecycle.spec(info, name=new_domain, uuid=new_uuid, ssh_port=new_port, layer=new_ref,
                                       console_log=self.layout.console_log(info.id, gen))
            self._start_from(row, spec)
            fault_point("rollback:started")
        except BaseException:
            self._undo_start(new_domain, new_ref, new_port)
            if frozen:
                self.thaw_old_guest(info.domain)
            op.done()
            raise
        # Commit point: from here on the new machine is the sandbox.
        with self.store.transaction(immediate=True):
            self.store.add_layer(new_layer, new_ref, row.layer, info.box, info.id)
            op.update(domain=new_domain, ssh_port=new_port, state=SandboxState.RUNNING, reason="",
                      active_layer=new_layer, uuid=new_uuid, generation=gen)
            self.store.release_port(new_port)
            op.step("committed")
        fault_point("rollback:committed")
        self.sessions.drop(info.id)
        journal_id, op.journal_id = op.journal_id, None
        self.retire(journal_id, info.domain, info.active_layer)
        try:
            self.lifecycle.wait_ready(op.info, progress)
            if row.has_memory:
                self.provider.after_restore(self.sessions.get(op.info), spec, clone=False)
        except SandboxError as exc:
            op.broken_reason = f"rollback: {exc}"
            raise RollbackError(f"{info.name!r} was rolled back to {row.name!r} but does not answer: {exc}; "
                                f"destroy it or use emergency_shutdown") from exc

    def _start_from(self, row: Snapshot, spec) -> None:
        """Start ``spec``'s machine from snapshot ``row``: resume its memory, or boot its disk."""
        if row.memory_ref:
            with self.snapshot_lock(row.id, f"start a guest from snapshot {row.name!r}"):
                memory_ref = self.store.get_snapshot(row.id).memory_ref   # compaction may have moved it
                self.provider.restore_machine(memory_ref, spec)
        else:
            self.provider.start_machine(spec)

    def freeze_old_guest(self, info: SandboxInfo) -> bool:
        """Pause the guest a rollback replaces, so that it takes no CPU from its successor's start
        (it may be the runaway the rollback is for); whether it was paused."""
        if info.state is not SandboxState.RUNNING or Capability.PAUSE not in self.provider.capabilities:
            return False
        try:
            self.provider.pause_machine(info.domain)
        except SandboxError as exc:       # a guest that cannot be paused is replaced all the same
            log.warning("could not pause %s before its rollback: %s", info.domain, exc)
            return False
        return True

    def thaw_old_guest(self, domain: str) -> None:
        try:
            self.provider.resume_machine(domain)
        except SandboxError as exc:
            log.error("could not resume %s after a failed rollback: %s", domain, exc)

    def _undo_start(self, domain: str, layer_ref: Optional[str], port: int) -> None:
        try:
            self.provider.destroy_machine(domain)
        except SandboxError as exc:
            log.error("could not remove half-started %s: %s", domain, exc)
        if layer_ref:
            self.provider.delete_layer(layer_ref)
        self.store.release_port(port)

    def retire(self, journal_id: str, domain: str, layer: str) -> None:
        """Destroy the sandbox's previous machine and drop its (unfrozen) active layer, in the background."""
        def work() -> None:
            try:
                self.provider.destroy_machine(domain)
                self.tree.drop_active(layer)
                self.tree.collect()
                self.store.journal_end(journal_id)
            except Exception as exc:      # recover() retries at the next start
                log.error("retiring %s failed (will retry): %s", domain, exc)
        self._background(work, f"retire-{domain}")

    def _background(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=False)
        t.start()
        self._background_threads = [r for r in self._background_threads if r.is_alive()] + [t]

    def wait_background(self, timeout: float = 60) -> None:
        for t in list(self._background_threads):
            t.join(timeout)
        self.tree.spares.wait(timeout)

    def retiring_domains(self) -> set[str]:
        """Machines that operations in flight are starting or retiring."""
        out = set()
        for j in self.store.journal_entries():
            if j["operation"] in ("rollback", "clone", "create", "destroy"):
                out |= {j["data"].get("old_domain"), j["data"].get("new_domain"), j["data"].get("domain")}
        return out - {None}

    def _notify(self, event: RollbackEvent) -> None:
        for cb in list(self.listeners):
            try:
                cb(event)
            except Exception as exc:
                log.error("rollback listener %r failed: %s", cb, exc)

    # -- clone -----------------------------------------------------------------------------
    def clone(self, name: str, snapshot_ref: str, req: Any, progress=None) -> str:
        self.provider.require_capability(Capability.CLONES, "clone a snapshot")
        row = self.resolve(snapshot_ref)
        origin = self.store.get_sandbox(row.sandbox_id)
        base = self.store.get_layer(row.layer)
        started = time.monotonic()
        op = self.layout.new_operation_id()
        info = self.lifecycle.reserve(name, origin.box, row.cpu, row.memory, origin.disk, req, (op, "clone"),
                                      cloned_from=row.id, host_key=origin.host_key)
        try:
            with self.layout.lock(info.id, f"clone of {name!r}"):
                ref = self.provider.new_layer(base.ref)
                with self.store.transaction(immediate=True):
                    self.store.add_layer(info.active_layer, ref, row.layer, origin.box, info.id)
                    self.store.journal_step(op, "layer", new_ref=ref)
                fault_point("clone:overlay")
                if progress:
                    progress("starting the clone")
                spec = self.lifecycle.spec(info)
                self._start_from(row, spec)
                fault_point("clone:started")
                self.lifecycle.wait_ready(info, progress)
                if row.has_memory:
                    self.provider.after_restore(self.sessions.get(info), spec, clone=True)
                rotate_host_key(self.config, self.sessions, self.store, info, progress)  # not its origin's key
                with self.store.transaction(immediate=True):
                    self.store.update_sandbox(info.id, state=SandboxState.RUNNING)
                    self.store.journal_end(op)
        except BaseException as exc:
            self.lifecycle.discard_failed_create(info, exc)
            self.store.journal_end(op)
            raise
        self.store.audit("clone", "ok", self.store.get_sandbox(info.id), snapshot=row.id, origin=origin.name,
                         memory=row.has_memory, seconds=round(time.monotonic() - started, 3))
        return info.id

    # -- delete, retention -----------------------------------------------------------------
    def delete(self, sandbox_ref: str, snapshot_ref: str) -> None:
        info = self.store.get_sandbox(sandbox_ref)
        row = self._own_snapshot(info, snapshot_ref)
        if row.pinned:
            raise StateError(f"snapshot {row.name!r} of {info.name!r} is pinned; "
                             f"`vmsandbox snapshot unpin {info.name} {row.name}` first")
        with self.snapshot_lock(row.id, f"delete snapshot {row.name!r}", wait=0):
            self.tree.delete_snapshot_record(row)
        self.store.audit("delete_snapshot", "ok", info, snapshot=row.id, name=row.name)

    def cleanup_older_than(self, days: float, sandbox_id: str | None = None, keep: str | None = None) -> list[str]:
        """Delete snapshots older than ``days`` (0 keeps everything), the safe way."""
        if not days or days <= 0:
            return []
        cutoff = time.time() - days * 86400
        removed = []
        for row in self.store.list_snapshots(sandbox_id):
            if row.created_at < cutoff and row.id != keep and not row.pinned:
                try:
                    with self.snapshot_lock(row.id, "retention", wait=0):
                        self.tree.delete_snapshot_record(row)
                    removed.append(row.id)
                    self.store.audit("delete_snapshot", "ok", sandbox_id=row.sandbox_id, snapshot=row.id,
                                     name=row.name, reason=f"older than {days:g} days")
                except StateError:
                    continue
        return removed

    def enforce_retention(self, sandbox_id: str, keep: str | None = None) -> list[str]:
        """Delete the sandbox's oldest unpinned snapshots while it is over ``rollback.max_snapshots``
        or ``rollback.max_memory_bytes`` (``retention``), the safe way; never ``keep``, never one
        whose memory state is in use (its lock is busy). Each removal is audited with its reason."""
        cfg = self.config.rollback
        if not cfg.max_snapshots and not cfg.memory_cap:
            return []
        spared, removed = {keep} - {None}, []
        while True:
            pick = next_victim(self.store.list_snapshots(sandbox_id), spared, cfg.max_snapshots, cfg.memory_cap,
                               self.provider.memory_size)
            if pick is None:
                return removed
            row, reason = pick
            try:
                with self.snapshot_lock(row.id, "retention", wait=0):
                    self.tree.delete_snapshot_record(row)
            except StateError:
                spared.add(row.id)
                continue
            removed.append(row.id)
            self.store.audit("delete_snapshot", "ok", self.store.find_sandbox(sandbox_id), sandbox_id=sandbox_id,
                             snapshot=row.id, name=row.name, reason=reason)

    def pin(self, sandbox_ref: str, snapshot_ref: str, pinned: bool = True) -> Snapshot:
        """Pin (or unpin) a snapshot: a pinned one survives every retention rule and ``delete``."""
        with self.ops.run(sandbox_ref, "pin_snapshot" if pinned else "unpin_snapshot", check=False) as op:
            row = self._own_snapshot(op.info, snapshot_ref)
            self.store.update_snapshot(row.id, pinned=pinned)
            op.detail.update(snapshot=row.id, name=row.name)
        return self.store.get_snapshot(row.id)

    def rotate_console_logs(self, info: SandboxInfo, keep: int | None = None) -> None:
        """Keep the newest ``keep`` (default ``sandbox.console_logs_keep``) console logs of the
        sandbox, always its current guest's."""
        keep = self.config.sandbox.console_logs_keep if keep is None else keep
        rotate_console_logs(self.layout.sandbox_dir(info.id), self.layout.console_log(info.id, info.generation), keep)

    def list(self, sandbox_ref: str) -> list[Snapshot]:
        return self.store.list_snapshots(self.store.get_sandbox(sandbox_ref).id)

    # -- crash recovery --------------------------------------------------------------------
    def recover_entry(self, e: dict) -> str:
        d, op = e["data"], e["operation"]
        if op == "snapshot":
            info = self.store.find_sandbox(e["sandbox_id"])
            plan = SnapshotPlan(d["frozen_ref"], d["active_ref"], d["memory_ref"])
            switched, memory_ref = (self.provider.snapshot_completed(d["domain"], plan)
                                    if info is not None and d["live"] else (False, None))
            if switched:
                if plan.memory_ref and memory_ref is None:
                    self.provider.delete_memory(plan.memory_ref)
                self._commit_snapshot(info, e["id"], d["snapshot"], d["name"], d["new_layer"], d["old_layer"],
                                      plan, memory_ref, d.get("metadata", {}))
                return f"snapshot {d['name']} of {info.name}: completed"
            self.provider.discard_snapshot(plan)
            self.store.journal_end(e["id"])
            return f"snapshot {d['name']}: undone"
        if op == "rollback":
            info = self.store.find_sandbox(e["sandbox_id"])
            if e["step"] == "committed" or (info is not None and info.domain == d["new_domain"]):
                self.provider.destroy_machine(d["old_domain"])
                self.tree.drop_active(d["old_layer"])
                self.tree.collect()
                self.store.journal_end(e["id"])
                return f"rollback of {e['sandbox_id']}: old guest {d['old_domain']} retired"
            self._undo_start(d["new_domain"], d.get("new_ref"), d["new_port"])
            if d["prior_state"] == SandboxState.RUNNING.value and self.provider.machine_state(d["old_domain"]) == "paused":
                self.thaw_old_guest(d["old_domain"])          # paused by freeze_old_guest
            if info is not None:
                self.store.update_sandbox(info.id, state=SandboxState(d["prior_state"]))
            self.store.journal_end(e["id"])
            return f"rollback of {e['sandbox_id']}: undone"
        if op == "clone":
            info = self.store.find_sandbox(e["sandbox_id"])
            if info is not None and info.state is SandboxState.RUNNING:
                self.store.journal_end(e["id"])
                return f"clone {info.name}: completed"
            self.provider.destroy_machine(d["domain"])
            if info is not None:
                self.lifecycle.remove(info)
            elif d.get("new_ref"):
                self.provider.delete_layer(d["new_ref"])
            self.store.journal_end(e["id"])
            return f"clone {e['sandbox_id']}: undone"
        raise KeyError(op)


def owner_alive(pid: int) -> bool:
    """Whether process ``pid`` (a journal entry's owner) still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
