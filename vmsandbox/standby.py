"""Warm standbys: guests already restored from a memory snapshot and paused, each on its own
layer (standing on the snapshot's frozen layer), port, name, uuid and MAC, ready to take over.

Two kinds, both kept by *targets* (snapshot, kind, size) in the store:
- ``rollback``: a standby of one of a sandbox's own snapshots (``create_snapshot(standby=True)``,
  or ``rollback.standby: latest`` for each sandbox's newest memory snapshot). A rollback to that
  snapshot *swaps*: the standby becomes the sandbox's machine (one transaction, as a rollback's
  commit), is resumed, reconnected and gets the host's clock; the old guest is retired and a fresh
  standby made in the background.
- ``pool``: standbys of a snapshot for clones (``set_pool``, config ``pool``); ``create_sandbox(name,
  {"clone_from": snapshot})`` takes one (resume, clone fix-ups, its own host key) instead of
  starting a guest, and the pool is refilled in the background.

Memory is the cost: every standby holds its guest's memory. ``rollback.standby_max`` and
``rollback.standby_memory`` cap them; over a cap a standby is not made and the reason is logged
and audited. Making, dropping and swapping are journaled (``standby``, ``standby_drop``,
``standby_swap``) so ``recover()`` finishes or undoes each after a crash; taking a standby is
deleting its record, so two takers never get the same one. Only providers with
``Capability.STANDBYS`` (libvirt) keep standbys.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .config import Config, parse_size
from .exceptions import ConfigError, NotFoundError, RollbackError, SandboxError, StateError
from .hostkeys import fingerprint, rotate as rotate_host_key, rotate_session
from .layers import LayerTree
from .layout import Layout, fault_point
from .lifecycle import Lifecycle
from .models import SandboxInfo, SandboxState, Snapshot, Standby
from .perms import private_dir
from .providers import Capability, Endpoint, Provider, ProviderCheck
from .sessions import SessionPool
from .store import Store

if TYPE_CHECKING:
    from .snapshots import SnapshotManager

log = logging.getLogger("vmsandbox.standby")

ROLLBACK, POOL = "rollback", "pool"
#: journal operations of this module (``Maintenance`` sends their recovery here)
JOURNAL_KINDS = ("standby", "standby_drop", "standby_swap")


class StandbyManager:
    def __init__(self, config: Config, store: Store, provider: Provider, sessions: SessionPool, layout: Layout,
                 lifecycle: Lifecycle, tree: LayerTree, snapshots: "SnapshotManager") -> None:
        self.config = config
        self.store = store
        self.provider = provider
        self.sessions = sessions
        self.layout = layout
        self.lifecycle = lifecycle
        self.tree = tree
        self.snapshots = snapshots
        self.directory = layout.state_dir / "standbys"        # standbys' console logs until taken over
        self._refill_lock = threading.Lock()
        self._warm: dict[str, Any] = {}      # standby id -> its open session (made by this process)

    # -- targets ---------------------------------------------------------------------------
    def _require(self, origin: SandboxInfo, doing: str) -> Provider:
        provider = self.provider.get(origin.provider or self.provider.default.name) \
            if hasattr(self.provider, "get") else self.provider
        provider.require_capability(Capability.STANDBYS, doing)
        return provider

    def _memory_snapshot(self, ref: str) -> tuple[Snapshot, SandboxInfo]:
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{ref!r} is not a snapshot (SANDBOX:NAME or an id)", "snapshot")
        row = self.snapshots.resolve(ref)
        origin = self.store.get_sandbox(row.sandbox_id)
        if not row.has_memory:
            raise ConfigError(f"snapshot {row.name!r} of {origin.name!r} has no memory state: a standby "
                              f"resumes a memory snapshot", "snapshot")
        return row, origin

    def set_pool(self, snapshot_ref: str, size: int) -> dict:
        """Keep ``size`` ready standbys of ``snapshot_ref`` for clones (0 removes the pool); filled
        in the background. ConfigError for a bad size or one the caps can never hold."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"{size!r} must be a whole number of standbys, 0 or more", "size")
        row, origin = self._memory_snapshot(snapshot_ref)
        if size:
            self._require(origin, "keep warm standbys")
            self._check_fits(size, parse_size(row.memory), "pool size")
        self.store.set_standby_target(row.id, POOL, size)
        self.store.audit("pool", "set", origin, snapshot=row.id, name=row.name, size=size)
        self.refill_later(row.id)
        return {"snapshot": row.id, "name": f"{origin.name}:{row.name}", "size": size}

    def _check_fits(self, count: int, memory: int, what: str) -> None:
        cap_n, cap_mem = self.config.rollback.standby_max, parse_size(self.config.rollback.standby_memory)
        if count > cap_n:
            raise ConfigError(f"{count} standbys is over rollback.standby_max ({cap_n})", what)
        if count * memory > cap_mem:
            raise ConfigError(f"{count} standbys of {memory >> 20} MiB need {count * memory >> 20} MiB, over "
                              f"rollback.standby_memory ({self.config.rollback.standby_memory})", what)

    def check_snapshot_standby(self, sandbox_ref: str, memory: Optional[bool]) -> None:
        """Before ``create_snapshot(standby=True)``: refuse what can never have a standby."""
        info = self.store.get_sandbox(sandbox_ref)
        self._require(info, "keep warm standbys")
        if memory is False:
            raise ConfigError("a standby resumes a memory snapshot: do not ask for memory=False", "standby")

    def after_snapshot(self, snap_id: str, standby: Optional[bool]) -> None:
        """After a snapshot: keep a rollback standby of it when asked (``standby=True``) or by
        ``rollback.standby: latest`` (which also drops the standbys of that sandbox's older snapshots)."""
        auto = standby is None and self.config.rollback.standby == "latest"
        if not (standby or auto):
            return
        row = self.store.find_snapshot(snap_id)
        if row is None:
            return
        if not row.has_memory:           # latest: only memory snapshots count (not automatic disk-only ones)
            if standby:
                log.warning("snapshot %s has no memory state (the guest was not running): no standby", row.name)
            return
        origin = self.store.get_sandbox(row.sandbox_id)
        if Capability.STANDBYS not in self._provider_caps(origin):
            return          # latest on a provider without standbys: nothing to keep
        if auto:
            for t in self.store.standby_targets():
                old = self.store.find_snapshot(t["snapshot_id"])
                if t["auto"] and t["kind"] == ROLLBACK and old is not None and old.sandbox_id == row.sandbox_id:
                    self.store.set_standby_target(t["snapshot_id"], ROLLBACK, 0)
                    for s in self.store.list_standbys(snapshot_id=t["snapshot_id"], kind=ROLLBACK):
                        self.drop(s, "a newer snapshot is the latest")
        self.store.set_standby_target(row.id, ROLLBACK, 1, auto=auto)
        self.refill_later(row.id)

    def _provider_caps(self, origin: SandboxInfo) -> frozenset:
        get = getattr(self.provider, "get", None)
        return (get(origin.provider or self.provider.default.name) if get else self.provider).capabilities

    def targets(self) -> dict[tuple[str, str], int]:
        """(snapshot id, kind) -> size: the store's targets, with config ``pool`` entries over them."""
        out = {(t["snapshot_id"], t["kind"]): t["size"] for t in self.store.standby_targets()}
        for entry in self.config.pool:
            try:
                row = self.snapshots.resolve(entry.snapshot)
            except NotFoundError:
                log.warning("pool: no snapshot %r (config entry skipped)", entry.snapshot)
                continue
            out[(row.id, POOL)] = entry.size
        return out

    # -- filling and draining ----------------------------------------------------------------
    def refill_later(self, snapshot_id: Optional[str] = None) -> None:
        self.snapshots._background(lambda: self.refill(snapshot_id), f"standby-refill-{snapshot_id or 'all'}")

    def refill(self, snapshot_id: Optional[str] = None) -> list[str]:
        """Make or drop standbys until each target (of ``snapshot_id``, or all) has its size.
        Never raises: a failure is logged (the next refill tries again)."""
        made: list[str] = []
        with self._refill_lock:
            for (snap, kind), size in self.targets().items():
                if snapshot_id and snap != snapshot_id:
                    continue
                try:
                    made += self._fill(snap, kind, size)
                except Exception as exc:          # background work: say why, keep the others going
                    log.error("keeping %s standbys of %s failed: %s", kind, snap, exc)
            wanted = self.targets()
            for stb in self.store.list_standbys(snapshot_id=snapshot_id):
                if (stb.snapshot_id, stb.kind) not in wanted:
                    self.drop(stb, "no longer wanted")
        return made

    def _fill(self, snap_id: str, kind: str, size: int) -> list[str]:
        row = self.store.find_snapshot(snap_id)
        if row is None:
            self.store.set_standby_target(snap_id, kind, 0)
            return []
        have = self.store.list_standbys(snapshot_id=snap_id, kind=kind)
        for extra in have[size:]:
            self.drop(extra, "more than the target size")
        made = []
        for _ in range(size - len(have)):
            stb = self.make(row, kind, size)
            if stb is None:
                break
            made.append(stb.id)
        return made

    def make(self, row: Snapshot, kind: str, size: int = 1) -> Optional[Standby]:
        """Restore a paused standby of ``row``; None (logged, audited) when a cap or the target
        size forbids it. Raises what the provider raises (everything it made is removed)."""
        origin = self.store.get_sandbox(row.sandbox_id)
        with self.provider.using(origin.provider or None) if hasattr(self.provider, "using") else _null():
            return self._make(row, origin, kind, size)

    def _make(self, row: Snapshot, origin: SandboxInfo, kind: str, size: int) -> Optional[Standby]:
        provider = self._require(origin, "keep warm standbys")
        sid = "st-" + uuid.uuid4().hex[:12]
        memory = parse_size(row.memory)
        private_dir(self.directory)
        domain = (self.layout.machine_name(f"{origin.name}-s", sid) if kind == ROLLBACK
                  else f"{self.layout.domain_prefix}pool-{row.id[-6:]}-{sid[-6:]}")
        mac = origin.mac if kind == ROLLBACK else _mac(sid)
        op = self.layout.new_operation_id()
        with self.store.transaction(immediate=True):
            full = len(self.store.list_standbys(snapshot_id=row.id, kind=kind)) >= size
            skipped = "" if full else self._over_cap(memory)
            if not (full or skipped):
                port = self.store.hold_port(sid, tuple(self.config.sandbox.port_range))
                stb = Standby(id=sid, snapshot_id=row.id, kind=kind, sandbox_id=origin.id, state="starting",
                              domain=domain, uuid=str(uuid.uuid4()), mac=mac, ssh_port=port, layer="",
                              memory_bytes=memory, network_mode=origin.network_mode,
                              console_log=str(self.directory / f"{sid}.log"), created_at=time.time())
                self.store.add_standby(stb)
                self.store.journal_begin(op, "standby", origin.id, {"standby": stb.to_dict()})
        if full:
            return None
        if skipped:
            log.warning("no %s standby of %s:%s: %s", kind, origin.name, row.name, skipped)
            self.store.audit("standby", "skipped", origin, snapshot=row.id, kind=kind, reason=skipped)
            return None
        fault_point("standby:begun")
        ref = None
        started = time.monotonic()
        try:
            ref = provider.new_layer(self.store.get_layer(row.layer).ref)
            self.store.journal_step(op, "layer", new_ref=ref)
            fault_point("standby:overlay")
            holder = dataclasses.replace(origin, cpu=row.cpu, memory=row.memory, network_mode=stb.network_mode)
            spec = self.lifecycle.spec(holder, name=domain, uuid=stb.uuid, ssh_port=stb.ssh_port, layer=ref,
                                       mac=mac, console_log=Path(stb.console_log))
            self.snapshots._start_from(row, spec)
            host_key = self._warm_up(stb, origin)
            provider.pause_machine(domain)
            fault_point("standby:started")
            layer_id = self.layout.new_layer_id()
            with self.store.transaction(immediate=True):
                if self.store.find_snapshot(row.id) is None or self.store.find_standby(sid) is None:
                    raise StateError(f"snapshot {row.name!r} or its standby was removed meanwhile")
                self.store.add_layer(layer_id, ref, row.layer, origin.box, origin.id)
                self.store.mark_standby_ready(sid, layer_id, host_key)
                self.store.journal_end(op)
        except BaseException as exc:
            self._unmake(stb, ref)
            self.store.journal_end(op)
            self.store.audit("standby", "failed", origin, snapshot=row.id, kind=kind, error=str(exc))
            raise
        self.store.audit("standby", "ready", origin, snapshot=row.id, kind=kind, standby=sid, domain=domain,
                         seconds=round(time.monotonic() - started, 3))
        return self.store.find_standby(sid)

    def _warm_up(self, stb: Standby, origin: SandboxInfo) -> str:
        """Before the standby pauses: open its command session (kept by this process for whoever
        takes it, so that needs no new SSH handshake: ~0.4 s under TCG) and give a pool standby
        its own host key (the clone it becomes must not share its origin's). Returns that key
        ('' for a rollback standby, which keeps its sandbox's). The guest runs for this ~0.5 s
        after the restore; the clock is set from the host when it is taken anyway."""
        endpoint = self.sessions.endpoint(dataclasses.replace(origin, ssh_port=stb.ssh_port))
        if not isinstance(endpoint, Endpoint) or not endpoint.host_key:
            return ""
        session = self.sessions.open(endpoint)
        try:
            session.wait_ready(float(self.config.sandbox.boot_timeout_seconds))
            key = ""
            if stb.kind == POOL and self.config.ssh.own_host_key:
                key = rotate_session(session, timeout=max(30.0, self.config.ssh.connect_timeout))
        except BaseException:
            session.close()
            raise
        self._warm[stb.id] = session
        return key

    def _forget_session(self, standby_id: str) -> None:
        session = self._warm.pop(standby_id, None)
        if session is not None:
            session.close()

    def close(self) -> None:
        """Close the sessions of standbys nobody took (the standbys stay)."""
        for sid in list(self._warm):
            self._forget_session(sid)

    def _over_cap(self, memory: int) -> str:
        """Why one more standby of ``memory`` bytes is over a cap ('' when it fits)."""
        rb = self.config.rollback
        all_ = self.store.list_standbys()
        if len(all_) + 1 > rb.standby_max:
            return f"rollback.standby_max ({rb.standby_max}) standbys exist"
        used = sum(s.memory_bytes for s in all_)
        if used + memory > parse_size(rb.standby_memory):
            return (f"{used >> 20} MiB held + {memory >> 20} MiB is over rollback.standby_memory "
                    f"({rb.standby_memory})")
        return ""

    def _unmake(self, stb: Standby, ref: Optional[str]) -> None:
        """Remove a standby that never became ready (machine, overlay, port, record, log)."""
        self._forget_session(stb.id)
        try:
            self.provider.destroy_machine(stb.domain)
        except SandboxError as exc:
            log.error("could not remove half-made standby %s: %s", stb.domain, exc)
        if ref:
            self.provider.delete_layer(ref)
        self.store.release_port(stb.ssh_port)
        self.store.remove_standby(stb.id)
        Path(stb.console_log).unlink(missing_ok=True)

    def drop(self, stb: Standby, reason: str) -> None:
        """Destroy a standby. One still starting only loses its record: its maker sees that and
        removes what it made."""
        op = self.layout.new_operation_id()
        with self.store.transaction(immediate=True):
            if not self.store.remove_standby(stb.id):
                return
            if stb.state == "ready":
                self.store.journal_begin(op, "standby_drop", stb.sandbox_id, {"standby": stb.to_dict()})
        if stb.state != "ready":
            return
        self._destroy(stb)
        self.store.journal_end(op)
        self.store.audit("standby", "dropped", sandbox_id=stb.sandbox_id, standby=stb.id, kind=stb.kind,
                         snapshot=stb.snapshot_id, reason=reason)

    def _destroy(self, stb: Standby) -> None:
        self._forget_session(stb.id)
        self.provider.destroy_machine(stb.domain)
        if stb.layer:
            self.tree.drop_active(stb.layer)
            self.tree.collect()           # its snapshot's layer may be free now (the snapshot went first)
        self.store.release_port(stb.ssh_port)
        Path(stb.console_log).unlink(missing_ok=True)

    def drop_for_sandbox(self, sandbox_id: str) -> None:
        """Before a sandbox goes: its snapshots' standbys (both kinds) and targets."""
        for stb in self.store.list_standbys(sandbox_id=sandbox_id):
            self.drop(stb, "its sandbox is destroyed")
        for snap in self.store.list_snapshots(sandbox_id):
            for kind in (ROLLBACK, POOL):
                self.store.set_standby_target(snap.id, kind, 0)

    def drop_for_snapshot(self, snapshot_id: str) -> None:
        """Before a snapshot goes: its standbys and targets."""
        for kind in (ROLLBACK, POOL):
            self.store.set_standby_target(snapshot_id, kind, 0)
        for stb in self.store.list_standbys(snapshot_id=snapshot_id):
            self.drop(stb, "its snapshot is deleted")

    # -- taking one ----------------------------------------------------------------------------
    def swap(self, op: Any, row: Snapshot, progress: Optional[Callable[[str], None]]) -> bool:
        """Rollback of ``op.info`` to ``row`` by its ready standby; False (nothing changed) when
        there is none or it cannot be resumed: the caller restores as usual."""
        info = op.info
        ready = self.store.list_standbys(snapshot_id=row.id, kind=ROLLBACK, sandbox_id=info.id, state="ready")
        if not ready or Capability.STANDBYS not in self._provider_caps(info):
            return False
        stb, gen = ready[0], info.generation + 1
        with self.store.transaction(immediate=True):
            if not self.store.remove_standby(stb.id, "ready"):
                return False
            op.journal("standby_swap", standby=stb.to_dict(), snapshot=row.id, old_domain=info.domain,
                       old_layer=info.active_layer, generation=gen, prior_state=info.state.value)
        op.update(state=SandboxState.ROLLING_BACK)
        fault_point("swap:begun")
        if progress:
            progress("resuming the standby")
        frozen = self.snapshots.freeze_old_guest(info)     # a runaway old guest takes no CPU from the standby
        try:
            self.provider.resume_machine(stb.domain)
        except SandboxError as exc:
            log.warning("standby %s of %s could not be resumed (%s): restoring instead", stb.domain, info.name, exc)
            if frozen:
                self.snapshots.thaw_old_guest(info.domain)
            self._destroy(stb)
            op.done()
            self.refill_later(row.id)
            return False
        fault_point("swap:resumed")
        with self.store.transaction(immediate=True):      # commit point, as a rollback's
            op.update(domain=stb.domain, ssh_port=stb.ssh_port, state=SandboxState.RUNNING, reason="",
                      active_layer=stb.layer, uuid=stb.uuid, generation=gen)
            self.store.release_port(stb.ssh_port)
            op.step("committed")
        fault_point("swap:committed")
        _move(stb.console_log, self.layout.console_log(info.id, gen))
        self.sessions.drop(info.id)
        warm = self._warm.pop(stb.id, None)
        if warm is not None:
            self.sessions.adopt(op.info, warm)
        journal_id, op.journal_id = op.journal_id, None
        op.detail.update(standby=stb.id)
        try:
            self.lifecycle.wait_ready(op.info, progress)
            self.provider.after_restore(self.sessions.get(op.info), self.lifecycle.spec(op.info), clone=False)
        except SandboxError as exc:
            op.broken_reason = f"rollback: {exc}"
            raise RollbackError(f"{info.name!r} was rolled back to {row.name!r} (standby) but does not answer: "
                                f"{exc}; destroy it or use emergency_shutdown") from exc
        finally:
            # Only now: tearing the old guest down and restoring the next standby would compete
            # for the CPU with the guest taking over (on 2 loaded cores that doubled its latency).
            self.snapshots.retire(journal_id, info.domain, info.active_layer)
            self.refill_later(row.id)
        return True

    def clone(self, name: str, row: Snapshot, req: Any, progress: Optional[Callable[[str], None]]) -> Optional[str]:
        """A clone of ``row`` from its pool; None (nothing made) when no standby is ready."""
        ready = [s for s in self.store.list_standbys(snapshot_id=row.id, kind=POOL, state="ready")
                 if s.network_mode == req.network_mode]
        if not ready:
            return None
        origin = self.store.get_sandbox(row.sandbox_id)
        started = time.monotonic()
        op = self.layout.new_operation_id()
        info = stb = None
        for candidate in ready:
            with self.store.transaction(immediate=True):
                if not self.store.remove_standby(candidate.id, "ready"):
                    continue
                # the clone's record names the standby's machine, port, identity and layer, with
                # the clone's journal entry: a crash from here on is a clone's to undo
                info = self.lifecycle.reserve(name, origin.box, row.cpu, row.memory, origin.disk, req,
                                              (op, "clone"), cloned_from=row.id,
                                              host_key=candidate.host_key or origin.host_key)
                info = self.store.update_sandbox(info.id, domain=candidate.domain, ssh_port=candidate.ssh_port,
                                                 uuid=candidate.uuid, mac=candidate.mac,
                                                 active_layer=candidate.layer)
                self.store.release_port(candidate.ssh_port)
                self.store.journal_step(op, "layer", domain=candidate.domain,
                                        new_ref=self.store.get_layer(candidate.layer).ref)
            stb = candidate
            break
        if stb is None:
            return None
        try:
            with self.layout.lock(info.id, f"clone of {name!r}"):
                fault_point("pool:taken")
                if progress:
                    progress("resuming a standby of the pool")
                self.provider.resume_machine(stb.domain)
                _move(stb.console_log, self.layout.console_log(info.id, info.generation))
                warm = self._warm.pop(stb.id, None)
                if warm is not None:
                    self.sessions.adopt(info, warm)
                self.lifecycle.wait_ready(info, progress)
                self.provider.after_restore(self.sessions.get(info), self.lifecycle.spec(info), clone=True)
                if stb.host_key:      # given to the standby before it paused: its own, not its origin's
                    self.store.audit("host_key", "rotated", info, fingerprint=fingerprint(stb.host_key),
                                     standby=stb.id)
                else:
                    rotate_host_key(self.config, self.sessions, self.store, info, progress)
                with self.store.transaction(immediate=True):
                    self.store.update_sandbox(info.id, state=SandboxState.RUNNING)
                    self.store.journal_end(op)
        except BaseException as exc:
            self.lifecycle.discard_failed_create(self.store.find_sandbox(info.id) or info, exc)
            self.store.journal_end(op)
            self.refill_later(row.id)
            raise
        self.store.audit("clone", "ok", self.store.get_sandbox(info.id), snapshot=row.id, origin=origin.name,
                         memory=True, pool=True, standby=stb.id, seconds=round(time.monotonic() - started, 3))
        self.refill_later(row.id)
        return info.id

    # -- views -----------------------------------------------------------------------------
    def listing(self) -> list[dict]:
        """Every standby with its snapshot's name (``vmsandbox pool list``, ``show``, metrics)."""
        names = {}
        for s in self.store.list_snapshots():
            names[s.id] = s.name
        return [{**s.to_dict(), "snapshot": names.get(s.snapshot_id, "?")} for s in self.store.list_standbys()]

    def pools(self) -> list[dict]:
        """Targets with their fill: snapshot, kind, size, ready, starting, memory held."""
        out = []
        stbs = self.store.list_standbys()
        for (snap, kind), size in self.targets().items():
            row = self.store.find_snapshot(snap)
            origin = self.store.find_sandbox(row.sandbox_id) if row else None
            mine = [s for s in stbs if s.snapshot_id == snap and s.kind == kind]
            out.append({"snapshot": snap, "name": f"{origin.name}:{row.name}" if row and origin else snap,
                        "kind": kind, "size": size, "ready": sum(s.state == "ready" for s in mine),
                        "starting": sum(s.state == "starting" for s in mine),
                        "memory_bytes": sum(s.memory_bytes for s in mine)})
        return out

    def summary(self) -> dict[str, str]:
        """Sandbox id -> one line about the standbys of its snapshots (for ``list``/``show``)."""
        per: dict[str, dict] = {}
        for s in self.store.list_standbys():
            d = per.setdefault(s.sandbox_id, {})
            d[s.kind] = d.get(s.kind, 0) + 1
        return {sid: "standbys: " + ", ".join(f"{n} {k}" for k, n in sorted(d.items())) for sid, d in per.items()}

    def domains(self) -> set[str]:
        """Machines standbys own, or operations of this module in flight name (gc keeps them)."""
        out = {s.domain for s in self.store.list_standbys()}
        for j in self.store.journal_entries():
            if j["operation"] in JOURNAL_KINDS:
                out |= {j["data"]["standby"]["domain"], j["data"].get("old_domain")}
        return out - {None}

    # -- upkeep ----------------------------------------------------------------------------
    def gc(self, dry_run: bool = False) -> list[str]:
        """Drop standbys whose snapshot or machine is gone, and targets of gone snapshots; then refill."""
        done = []
        for stb in self.store.list_standbys(state="ready"):
            why = ("its snapshot is gone" if self.store.find_snapshot(stb.snapshot_id) is None
                   else "its machine is gone" if self.provider.machine_state(stb.domain) is None else "")
            if why:
                done.append(f"standby {stb.id} ({why})")
                if not dry_run:
                    self.drop(stb, why)
        for t in self.store.standby_targets():
            if self.store.find_snapshot(t["snapshot_id"]) is None:
                done.append(f"{t['kind']} standby target of {t['snapshot_id']} (snapshot gone)")
                if not dry_run:
                    self.store.set_standby_target(t["snapshot_id"], t["kind"], 0)
        if not dry_run:
            done += [f"standby {s} made" for s in self.refill()]
        return done

    def check(self) -> ProviderCheck:
        """``doctor``: every ready standby's machine exists and is paused."""
        stbs = self.store.list_standbys()
        bad = [f"{s.id} ({s.domain}) is {self.provider.machine_state(s.domain) or 'missing'}"
               for s in stbs if s.state == "ready" and self.provider.machine_state(s.domain) != "paused"]
        held = sum(s.memory_bytes for s in stbs) >> 20
        detail = (f"{len(stbs)} standby(s), {held} MiB of rollback.standby_memory "
                  f"{self.config.rollback.standby_memory}") if not bad else "; ".join(bad)
        return ProviderCheck("standbys", not bad, detail, "" if not bad else "vmsandbox gc")

    # -- crash recovery --------------------------------------------------------------------
    def recover_entry(self, e: dict) -> str:
        d, kind = e["data"], e["operation"]
        stb = Standby(**d["standby"])
        if kind == "standby":
            current = self.store.find_standby(stb.id)
            if current is not None and current.state == "ready":
                self.store.journal_end(e["id"])
                return f"standby {stb.id}: completed"
            self._unmake(stb, d.get("new_ref"))
            self.store.journal_end(e["id"])
            return f"standby {stb.id}: undone"
        if kind == "standby_drop":
            self._destroy(stb)
            self.store.journal_end(e["id"])
            return f"standby {stb.id}: dropped"
        info = self.store.find_sandbox(e["sandbox_id"])
        if e["step"] == "committed" or (info is not None and info.domain == stb.domain):
            if self.provider.machine_state(stb.domain) == "paused":
                self.provider.resume_machine(stb.domain)
            self.provider.destroy_machine(d["old_domain"])
            self.tree.drop_active(d["old_layer"])
            self.tree.collect()
            self.store.journal_end(e["id"])
            return f"rollback of {e['sandbox_id']} by standby {stb.id}: old guest {d['old_domain']} retired"
        self._destroy(stb)
        if d["prior_state"] == SandboxState.RUNNING.value and self.provider.machine_state(d["old_domain"]) == "paused":
            self.snapshots.thaw_old_guest(d["old_domain"])          # paused by the swap
        if info is not None:
            self.store.update_sandbox(info.id, state=SandboxState(d["prior_state"]))
        self.store.journal_end(e["id"])
        return f"rollback of {e['sandbox_id']} by standby {stb.id}: undone (standby removed)"


def _move(src: str, dst: Path) -> None:
    """The standby's console log becomes its new owner's (QEMU keeps writing the same file)."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        log.debug("console log %s not moved: %s", src, exc)


def _mac(standby_id: str) -> str:
    h = uuid.uuid5(uuid.NAMESPACE_OID, standby_id).bytes
    return "52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2])


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
