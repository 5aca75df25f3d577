"""Snapshots, rollback and linked clones on the immutable qcow2 layer tree.

Owns the layer tree's rules: a sandbox writes only to its active layer; a snapshot freezes that
layer (and may save the guest's memory) and gives the sandbox a new active layer on top; rollback
and clone both put a new active layer on a frozen one. A frozen layer is deleted only when no
layer and no snapshot stands on it; otherwise it is kept. Every multi-step operation is journaled
in the store before it creates anything, so ``recover()`` can finish or undo it after a crash.

Rollback starts the new guest under a new name, uuid and port while the old one still runs (see
``providers/libvirt_savefile.py``); the old guest is retired in the background afterwards.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from . import disks
from .exceptions import ConfigError, ProviderError, RollbackError, SandboxError, StateError
from .models import SandboxInfo, SandboxState

if TYPE_CHECKING:
    from .core import SandboxCore

log = logging.getLogger("vmsandbox.snapshots")
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,79}$")
SAVE_MAGIC = b"LibvirtQemudSave"


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    sandbox_id: str
    layer: str
    has_memory: bool
    created_at: float
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RollbackEvent:
    """What ``notify`` callbacks receive."""
    sandbox_id: str
    snapshot_id: str
    ok: bool
    seconds: float
    error: str = ""


def _to_snapshot(row: dict) -> Snapshot:
    return Snapshot(id=row["id"], name=row["name"], sandbox_id=row["sandbox_id"], layer=row["layer"],
                    has_memory=bool(row["memory_path"]), created_at=row["created_at"], metadata=row["metadata"])


def _unlink(path: str | Path | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class SnapshotManager:
    def __init__(self, core: "SandboxCore") -> None:
        self.core = core
        self.store = core.store
        self.listeners: list[Callable[[RollbackEvent], None]] = []
        self._retirers: list[threading.Thread] = []

    # -- helpers ---------------------------------------------------------------------------
    @contextmanager
    def _snapshot_lock(self, snapshot_id: str, blocking: bool = True) -> Iterator[None]:
        """Held while a memory state is used (its header is rewritten for each restore)."""
        with open(self.core.state_dir / "locks" / f"{snapshot_id}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StateError(f"snapshot {snapshot_id} is in use by a rollback or clone in progress") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _memory_path(self, snapshot_id: str) -> Path:
        return self.core.state_dir / "memory" / f"{snapshot_id}.save"

    def resolve(self, ref: str, sandbox: SandboxInfo | None = None) -> dict:
        """A snapshot by id (from any sandbox: callers check ownership), by name within
        ``sandbox``, or as ``SANDBOX:NAME``."""
        if sandbox is None and ":" in ref and not ref.startswith("sn-"):
            sb, _, name = ref.partition(":")
            sandbox = self.store.get_sandbox(sb)
            ref = name
        return self.store.get_snapshot(ref, sandbox.id if sandbox else None)

    # -- create ----------------------------------------------------------------------------
    def create(self, sandbox_id: str, name: str, memory: Optional[bool] = None,
               metadata: dict | None = None) -> str:
        core = self.core
        if not isinstance(name, str) or not SNAPSHOT_NAME_RE.match(name):
            raise ConfigError(f"{name!r} is not a valid snapshot name (1-80 of A-Z a-z 0-9 . _ : -)", "name")
        info = core.get(sandbox_id)
        with core._locked(info.id):
            info = core.get(info.id)
            core._require(info, "snapshot")
            if any(s["name"] == name for s in self.store.list_snapshots(info.id)):
                raise ConfigError(f"sandbox {info.name!r} already has a snapshot named {name!r}", "name")
            live = info.state in (SandboxState.RUNNING, SandboxState.PAUSED)
            want_memory = core.config.rollback.memory if memory is None else memory
            with_memory = bool(want_memory and live)
            started = time.monotonic()
            snap_id = "sn-" + uuid.uuid4().hex[:12]
            new_layer, new_path = core.new_layer_path()
            old_layer = info.extra["active_layer"]
            old_path = core.active_disk(info)
            mem_path = self._memory_path(snap_id) if with_memory else None
            op = "op-" + uuid.uuid4().hex[:12]
            self.store.journal_begin(op, "snapshot", info.id, {
                "snapshot": snap_id, "name": name, "new_layer": new_layer, "new_path": str(new_path),
                "old_layer": old_layer, "memory_path": str(mem_path) if mem_path else None,
                "domain": info.domain, "live": live, "metadata": metadata or {}})
            core.fault_point("snapshot:begun")
            try:
                if live:
                    if not with_memory and info.state is SandboxState.RUNNING and core.config.rollback.guest_sync:
                        self._guest_sync(info)
                    core.provider.snapshot_machine(info.domain, new_path, mem_path)
                else:
                    disks.create_overlay(new_path, old_path)
            except BaseException:
                _unlink(new_path)
                _unlink(mem_path)
                self.store.journal_end(op)
                raise
            core.fault_point("snapshot:switched")
            self._commit_snapshot(info, op, snap_id, name, new_layer, new_path, old_layer, mem_path, metadata or {})
            core.fault_point("snapshot:committed")
        took = time.monotonic() - started
        self.store.audit("snapshot", "ok", info, snapshot=snap_id, name=name, memory=with_memory,
                         seconds=round(took, 3))
        if with_memory and core.config.rollback.compression:
            self._compress_later(snap_id, mem_path)
        self.cleanup_older_than(core.config.rollback.retention_days, info.id, keep=snap_id)
        return snap_id

    def _commit_snapshot(self, info: SandboxInfo, op: str, snap_id: str, name: str, new_layer: str,
                         new_path: Path, old_layer: str, mem_path: Optional[Path], metadata: dict) -> None:
        """One transaction: the old active layer becomes a frozen snapshot layer; the new one is active."""
        with self.store.transaction(immediate=True):
            self.store.add_layer(new_layer, str(new_path), old_layer, info.box, info.id)
            self.store.freeze_layer(old_layer)
            self.store.add_snapshot(snap_id, info.id, name, old_layer, str(mem_path) if mem_path else None,
                                    info.cpu, info.memory, metadata)
            self.store.update_sandbox(info.id, extra={"active_layer": new_layer})
            self.store.journal_end(op)

    def _guest_sync(self, info: SandboxInfo) -> None:
        """Flush the guest's page cache before a disk-only snapshot of a running guest (best effort)."""
        try:
            self.core.session(info).execute("sync", timeout=10)
        except SandboxError as exc:
            log.warning("sync before snapshot of %s failed: %s", info.name, exc)

    def _compress_later(self, snap_id: str, raw: Path) -> None:
        def work() -> None:
            import zstandard
            out = raw.with_suffix(".save.zst")
            try:
                with self._snapshot_lock(snap_id), open(raw, "rb") as src, open(out, "wb") as dst:
                    zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
                self.store.update_snapshot(snap_id, memory_path=str(out))
                _unlink(raw)
            except Exception as exc:          # keep the raw state; never lose a snapshot
                log.error("compressing %s failed: %s", raw, exc)
                _unlink(out)
        self._background(work, f"compress-{snap_id}")

    @contextmanager
    def _memory_file(self, row: dict) -> Iterator[Path]:
        """The snapshot's memory state as a plain save image (decompressed into a temp file if needed)."""
        path = Path(row["memory_path"])
        if path.suffix != ".zst":
            yield path
            return
        import zstandard
        tmp = path.with_name(f"{row['id']}.{uuid.uuid4().hex[:6]}.restore")
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
            yield tmp
        finally:
            _unlink(tmp)

    # -- rollback --------------------------------------------------------------------------
    def rollback(self, sandbox_id: str, snapshot_ref: str, preserve_logs: bool = True,
                 progress: Callable[[str], None] | None = None) -> bool:
        core = self.core
        info = core.get(sandbox_id)
        started = time.monotonic()
        row = self.resolve(snapshot_ref, info)
        if row["sandbox_id"] != info.id:
            owner = self.store.find_sandbox(row["sandbox_id"])
            raise RollbackError(f"snapshot {row['name']!r} belongs to sandbox "
                                f"{owner.name if owner else row['sandbox_id']!r}, not {info.name!r} "
                                f"(use it with clone_from instead)")
        try:
            with core._locked(info.id):
                info = core.get(info.id)
                core._require(info, "rollback")
                new_info = self._rollback_locked(info, row, progress)
        except RollbackError as exc:
            self._notify(RollbackEvent(info.id, row["id"], False, time.monotonic() - started, str(exc)))
            raise
        took = time.monotonic() - started
        self.store.audit("rollback", "ok", new_info, snapshot=row["id"], name=row["name"],
                         memory=bool(row["memory_path"]), seconds=round(took, 3))
        if not preserve_logs:
            for old in self.core.sandbox_dir(new_info).glob("console-*.log"):
                if old != core.console_log(new_info):
                    _unlink(old)
        self._notify(RollbackEvent(info.id, row["id"], True, took))
        return True

    def _rollback_locked(self, info: SandboxInfo, row: dict, progress) -> SandboxInfo:
        core = self.core
        prior_state, prior_reason = info.state, info.reason
        gen = info.extra.get("generation", 0) + 1
        new_layer, new_path = core.new_layer_path()
        new_domain = core.domain_name(info.name, info.id, gen)
        new_uuid = str(uuid.uuid4())
        layer_path = core.layer_file(row["layer"])
        new_port = self.store.hold_port(info.id, tuple(core.config.sandbox.port_range))
        op = "op-" + uuid.uuid4().hex[:12]
        self.store.journal_begin(op, "rollback", info.id, {
            "snapshot": row["id"], "new_layer": new_layer, "new_path": str(new_path), "new_domain": new_domain,
            "new_port": new_port, "old_domain": info.domain, "old_layer": info.extra["active_layer"],
            "generation": gen, "prior_state": prior_state.value})
        core.fault_point("rollback:begun")
        self.store.update_sandbox(info.id, state=SandboxState.ROLLING_BACK)
        spec = core._spec(info, new_path, name=new_domain, uuid=new_uuid, ssh_port=new_port,
                          console_log=core.console_log(info, gen))
        try:
            disks.create_overlay(new_path, Path(layer_path))
            core.fault_point("rollback:overlay")
            if progress:
                progress("starting the guest from the snapshot")
            self._start_from(row, spec)
            core.fault_point("rollback:started")
        except BaseException as exc:
            self._undo_start(new_domain, new_path, new_port)
            self.store.update_sandbox(info.id, state=prior_state, reason=prior_reason)
            self.store.journal_end(op)
            self.store.audit("rollback", "failed", info, snapshot=row["id"], error=str(exc))
            if isinstance(exc, SandboxError):
                raise RollbackError(f"rollback of {info.name!r} to {row['name']!r} failed: {exc}; "
                                    f"the sandbox is unchanged") from exc
            raise
        # Commit point: from here on the new guest is the sandbox.
        with self.store.transaction(immediate=True):
            self.store.add_layer(new_layer, str(new_path), row["layer"], info.box, info.id)
            self.store.update_sandbox(info.id, domain=new_domain, ssh_port=new_port, state=SandboxState.RUNNING,
                                      reason="", extra={"active_layer": new_layer, "uuid": new_uuid,
                                                        "generation": gen})
            self.store.release_port(new_port)
            self.store.journal_step(op, "committed")
        core.fault_point("rollback:committed")
        core._drop_session(info.id)
        self._retire(op, info.domain, info.extra["active_layer"])
        new_info = core.get(info.id)
        try:
            core._wait_ready(new_info, progress)
            if row["memory_path"]:
                self._after_restore(new_info)
        except SandboxError as exc:
            self.store.update_sandbox(info.id, state=SandboxState.BROKEN, reason=f"rollback: {exc}")
            raise RollbackError(f"{info.name!r} was rolled back to {row['name']!r} but does not answer: {exc}; "
                                f"destroy it or use emergency_shutdown") from exc
        return core.get(info.id)

    def _start_from(self, row: dict, spec) -> None:
        """Start ``spec``'s guest from snapshot ``row``: resume its memory, or boot its disk."""
        if row["memory_path"]:
            with self._snapshot_lock(row["id"]), self._memory_file(row) as mem:
                self.core.provider.restore_machine(mem, spec)
        else:
            self.core.provider.start_machine(spec)

    def _after_restore(self, info: SandboxInfo, new_mac: str | None = None) -> None:
        """A restored guest's clock is at snapshot time: set it from the host; give a clone its own
        MAC and host name (its memory still holds its origin's)."""
        cmd = f"date -s @{int(time.time())} >/dev/null"
        if new_mac:
            cmd += f"; ip link set dev eth0 address {new_mac}; hostname {shlex.quote(info.name)}"
        r = self.core.session(info).execute(cmd, timeout=15)
        if r.exit_code != 0:
            log.warning("post-restore fix-up of %s failed: %s", info.name, r.stderr.strip())

    def _undo_start(self, domain: str, path: Path, port: int) -> None:
        try:
            self.core.provider.destroy_machine(domain)
        except SandboxError as exc:
            log.error("could not remove half-started %s: %s", domain, exc)
        _unlink(path)
        self.store.release_port(port)

    def _retire(self, op: str, domain: str, layer: str) -> None:
        """Destroy the sandbox's previous guest and drop its (unfrozen) active layer, in the background."""
        def work() -> None:
            try:
                self.core.provider.destroy_machine(domain)
                self._drop_layer(layer)
                self.collect_layers()
                self.store.journal_end(op)
            except Exception as exc:      # recover() retries at the next start
                log.error("retiring %s failed (will retry): %s", domain, exc)
        self._background(work, f"retire-{domain}")

    def _background(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=False)
        t.start()
        self._retirers = [r for r in self._retirers if r.is_alive()] + [t]

    def wait_background(self, timeout: float = 60) -> None:
        for t in list(self._retirers):
            t.join(timeout)

    def retiring_domains(self) -> set[str]:
        """Domains that operations in flight are starting or retiring."""
        out = set()
        for j in self.store.journal_entries():
            if j["operation"] in ("rollback", "clone"):
                out |= {j["data"].get("old_domain"), j["data"].get("new_domain")}
        return out - {None}

    def _notify(self, event: RollbackEvent) -> None:
        for cb in list(self.listeners):
            try:
                cb(event)
            except Exception as exc:
                log.error("rollback listener %r failed: %s", cb, exc)

    # -- clone -----------------------------------------------------------------------------
    def clone(self, name: str, snapshot_ref: str, req, progress=None) -> str:
        core = self.core
        row = self.resolve(snapshot_ref)
        origin = self.store.get_sandbox(row["sandbox_id"])
        core.boxes.get(origin.box)
        base = core.layer_file(row["layer"])
        started = time.monotonic()
        info = core._reserve(name, origin.box, row["cpu"], row["memory"], origin.disk, req,
                             cloned_from=row["id"])
        op = "op-" + uuid.uuid4().hex[:12]
        self.store.journal_begin(op, "clone", info.id, {"snapshot": row["id"], "new_domain": info.domain,
                                                          "new_path": str(core.active_disk(info))})
        try:
            with core._locked(info.id):
                self.store.update_layer_parent(info.extra["active_layer"], row["layer"])
                disks.create_overlay(core.active_disk(info), base)
                core.fault_point("clone:overlay")
                if progress:
                    progress("starting the clone")
                self._start_from(row, core._spec(info))
                core.fault_point("clone:started")
                core._wait_ready(info, progress)
                if row["memory_path"]:
                    self._after_restore(info, new_mac=info.extra["mac"])
                core._set_state(info, SandboxState.RUNNING)
                self.store.journal_end(op)
        except BaseException as exc:
            core._discard_failed_create(info, exc)
            self.store.journal_end(op)
            raise
        self.store.audit("clone", "ok", core.get(info.id), snapshot=row["id"], origin=origin.name,
                         memory=bool(row["memory_path"]), seconds=round(time.monotonic() - started, 3))
        return info.id

    # -- delete, retention, collection -----------------------------------------------------
    def delete(self, sandbox_id: str, snapshot_ref: str) -> None:
        info = self.core.get(sandbox_id)
        row = self.resolve(snapshot_ref, info)
        if row["sandbox_id"] != info.id:
            raise ConfigError(f"snapshot {row['name']!r} does not belong to sandbox {info.name!r}", "snapshot")
        with self._snapshot_lock(row["id"], blocking=False):
            self._delete_row(row)
        self.store.audit("delete_snapshot", "ok", info, snapshot=row["id"], name=row["name"])

    def _delete_row(self, row: dict) -> None:
        op = "op-" + uuid.uuid4().hex[:12]
        with self.store.transaction(immediate=True):
            self.store.journal_begin(op, "delete_snapshot", row["sandbox_id"],
                                     {"snapshot": row["id"], "memory_path": row["memory_path"]})
            self.store.delete_snapshot_record(row["id"])
        self.core.fault_point("delete:record")
        _unlink(row["memory_path"])
        _unlink(self.core.state_dir / "locks" / f"{row['id']}.lock")
        self.collect_layers()
        self.store.journal_end(op)

    def collect_layers(self) -> list[str]:
        """Delete frozen layers that nothing stands on, repeatedly (a parent may become free)."""
        freed = []
        while True:
            batch = self.store.collectable_layers()
            if not batch:
                return freed
            for layer in batch:
                _unlink(layer["path"])
                self.store.delete_layer(layer["id"])
                freed.append(layer["id"])

    def _drop_layer(self, layer_id: str) -> None:
        """Remove an active (unfrozen) layer that no guest uses any more."""
        row = self.store.find_layer(layer_id)
        if row is None:
            return
        users = self.store.layer_users(layer_id)
        if users["children"] or users["snapshots"]:
            self.store.freeze_layer(layer_id)       # something stands on it: keep it, frozen
            return
        _unlink(row["path"])
        self.store.delete_layer(layer_id)

    def forget_sandbox(self, info: SandboxInfo) -> None:
        """At destroy: drop the sandbox's snapshots and active layer; keep layers clones stand on."""
        for row in self.store.list_snapshots(info.id):
            self._delete_row(row)
        if "active_layer" in info.extra:
            self._drop_layer(info.extra["active_layer"])
        self.collect_layers()

    def cleanup_older_than(self, days: float, sandbox_id: str | None = None, keep: str | None = None) -> list[str]:
        """Delete snapshots older than ``days`` (0 keeps everything), the safe way."""
        if not days or days <= 0:
            return []
        cutoff = time.time() - days * 86400
        removed = []
        for row in self.store.list_snapshots(sandbox_id):
            if row["created_at"] < cutoff and row["id"] != keep:
                try:
                    with self._snapshot_lock(row["id"], blocking=False):
                        self._delete_row(row)
                    removed.append(row["id"])
                    self.store.audit("delete_snapshot", "ok", sandbox_id=row["sandbox_id"], snapshot=row["id"],
                                     name=row["name"], reason=f"older than {days:g} days")
                except StateError:
                    continue
        return removed

    def list(self, sandbox_id: str) -> list[Snapshot]:
        info = self.core.get(sandbox_id)
        return [_to_snapshot(r) for r in self.store.list_snapshots(info.id)]

    # -- crash recovery and verification ---------------------------------------------------
    def recover(self) -> list[str]:
        """Finish or undo every journaled operation whose process is gone."""
        done = []
        for entry in self.store.journal_entries():
            if entry["pid"] != os.getpid() and _alive(entry["pid"]):
                continue
            try:
                done.append(self._recover_entry(entry))
            except SandboxError as exc:
                log.error("recovering %s %s failed: %s", entry["operation"], entry["id"], exc)
        if done:
            self.store.audit("recover", "ok", actions=done)
        return done

    def _recover_entry(self, e: dict) -> str:
        d, op, provider = e["data"], e["operation"], self.core.provider
        if op == "snapshot":
            info = self.store.find_sandbox(e["sandbox_id"])
            switched = False
            if info is not None and d["live"]:
                if hasattr(provider, "wait_for_jobs"):
                    provider.wait_for_jobs(d["domain"])
                switched = provider.machine_disk(d["domain"]) == d["new_path"]
            if switched:
                mem = d["memory_path"]
                if mem and not _complete_save_image(mem):
                    _unlink(mem)
                    mem = None
                self._commit_snapshot(info, e["id"], d["snapshot"], d["name"], d["new_layer"], Path(d["new_path"]),
                                      d["old_layer"], Path(mem) if mem else None, d.get("metadata", {}))
                return f"snapshot {d['name']} of {info.name}: completed"
            _unlink(d["new_path"])
            _unlink(d["memory_path"])
            self.store.journal_end(e["id"])
            return f"snapshot {d['name']}: undone"
        if op == "rollback":
            info = self.store.find_sandbox(e["sandbox_id"])
            if e["step"] == "committed" or (info is not None and info.domain == d["new_domain"]):
                provider.destroy_machine(d["old_domain"])
                self._drop_layer(d["old_layer"])
                self.collect_layers()
                self.store.journal_end(e["id"])
                return f"rollback of {e['sandbox_id']}: old guest {d['old_domain']} retired"
            self._undo_start(d["new_domain"], Path(d["new_path"]), d["new_port"])
            if info is not None:
                self.store.update_sandbox(info.id, state=SandboxState(d["prior_state"]))
            self.store.journal_end(e["id"])
            return f"rollback of {e['sandbox_id']}: undone"
        if op == "clone":
            info = self.store.find_sandbox(e["sandbox_id"])
            if info is not None and info.state is SandboxState.RUNNING:
                self.store.journal_end(e["id"])
                return f"clone {info.name}: completed"
            provider.destroy_machine(d["new_domain"])
            if info is not None:
                self.core._remove_files(info)
                self.store.delete_sandbox(info.id)
            _unlink(d["new_path"])
            self.store.journal_end(e["id"])
            return f"clone {e['sandbox_id']}: undone"
        if op == "delete_snapshot":
            if self.store.find_snapshot(d["snapshot"]) is None:
                _unlink(d["memory_path"])
            self.collect_layers()
            self.store.journal_end(e["id"])
            return f"delete of snapshot {d['snapshot']}: completed"
        self.store.journal_end(e["id"])
        return f"unknown operation {op}: dropped"

    def verify(self) -> list[str]:
        """Problems between the tree in the database and the files on disk (empty: consistent)."""
        problems = []
        layers = {l["id"]: l for l in self.store.list_layers()}
        for l in layers.values():
            if not os.path.exists(l["path"]):
                problems.append(f"layer {l['id']} is recorded but its file {l['path']} is missing")
                continue
            if l["parent"] and l["parent"] not in layers:
                problems.append(f"layer {l['id']} stands on unknown layer {l['parent']}")
            ok, words = disks.check(Path(l["path"]))
            if not ok:
                problems.append(f"layer {l['id']} fails qemu-img check: {words.splitlines()[-1] if words else ''}")
            try:
                backing = disks.info(Path(l["path"])).get("backing-filename")
            except ProviderError as exc:
                problems.append(f"layer {l['id']}: {exc}")
                continue
            expected = layers[l["parent"]]["path"] if l["parent"] in layers else None
            if expected and backing != expected:
                problems.append(f"layer {l['id']} is backed by {backing}, the database says {expected}")
        for s in self.store.list_snapshots():
            if s["layer"] not in layers:
                problems.append(f"snapshot {s['name']} ({s['id']}) points at missing layer {s['layer']}")
            if s["memory_path"] and not os.path.exists(s["memory_path"]):
                problems.append(f"snapshot {s['name']} ({s['id']}) lost its memory file {s['memory_path']}")
        known = {l["path"] for l in layers.values()}
        busy = {j["data"].get("new_path") for j in self.store.journal_entries()}
        for f in (self.core.state_dir / "layers").glob("*.qcow2"):
            if str(f) not in known and str(f) not in busy:
                problems.append(f"file {f} has no layer record")
        return problems

    def orphan_files(self) -> list[Path]:
        """Layer and memory files no record or operation in flight refers to."""
        known = {l["path"] for l in self.store.list_layers()} | \
                {s["memory_path"] for s in self.store.list_snapshots() if s["memory_path"]}
        for j in self.store.journal_entries():
            known |= {v for v in j["data"].values() if isinstance(v, str)}
        out = []
        for sub in ("layers", "memory"):
            for f in (self.core.state_dir / sub).iterdir():
                if str(f) not in known and not str(f).endswith(".restore"):
                    out.append(f)
        return out


def _alive(pid: int) -> bool:
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


def _complete_save_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == SAVE_MAGIC
    except OSError:
        return False
