"""Birth and death of sandboxes: the machine description of a record, the reservation of a new
record, create (boot from a box), destroy, and the clean-up of a create that failed.

Create and destroy are journaled like the snapshot operations: after a crash at any step the
next process finishes a destroy, and undoes a create whose process is gone (``recover``).
"""
from __future__ import annotations

import logging
import math
import shutil
import socket
import time
import uuid
from typing import Any, Callable, Optional

from .hostkeys import rotate as rotate_host_key
from .perms import open_private, private_dir
from .config import Config, parse_cpu, parse_size
from .exceptions import ConfigError, SandboxError
from .layers import LayerTree
from .layout import Layout, fault_point
from .models import SandboxInfo, SandboxState
from .operations import Operations
from .providers import MachineSpec, Provider
from .sessions import SessionPool
from .store import Store

log = logging.getLogger("vmsandbox.lifecycle")
Progress = Callable[[str], None]


class Lifecycle:
    def __init__(self, config: Config, store: Store, layout: Layout, provider: Provider, sessions: SessionPool,
                 tree: LayerTree, ops: Operations, boxes: Callable[[], Any]) -> None:
        self.config = config
        self.store = store
        self.layout = layout
        self.provider = provider
        self.sessions = sessions
        self.tree = tree
        self.ops = ops
        self._boxes = boxes

    # -- the machine of a record ---------------------------------------------------------
    def spec(self, info: SandboxInfo, **override: Any) -> MachineSpec:
        """The machine of ``info``; ``override`` replaces fields (a rollback's new name, uuid, port...)."""
        cpu = parse_cpu(info.cpu)
        fields = dict(
            name=info.domain, uuid=info.uuid, sandbox_id=info.id, hostname=info.name,
            vcpus=max(1, math.ceil(cpu)), cpu_quota=cpu if cpu < 1 else None,
            memory_bytes=parse_size(info.memory), disk_bytes=parse_size(info.disk),
            layer=self.store.get_layer(info.active_layer).ref, box=self._boxes().get(info.box),
            ssh_port=info.ssh_port, mac=info.mac, network_mode=info.network_mode,
            console_log=self.layout.console_log(info.id, info.generation), owner=str(self.layout.state_dir))
        fields.update(override)
        return MachineSpec(**fields)

    def wait_ready(self, info: SandboxInfo, progress: Optional[Progress]) -> float:
        return self.sessions.wait_ready(info, self.layout.console_log(info.id, info.generation), progress)

    # -- reserve -------------------------------------------------------------------------
    def reserve(self, name: str, box: str, cpu: str, memory: str, disk: str, req: Any, journal: tuple[str, str],
                **fields: Any) -> SandboxInfo:
        """Record a CREATING sandbox with a port and its directory, and journal the operation
        ``journal`` = (id, kind) that makes it in the same transaction (nothing else is made yet)."""
        sid = self.layout.new_sandbox_id()
        record = SandboxInfo(
            id=sid, name=name, state=SandboxState.CREATING, box=box, domain=self.layout.machine_name(name, sid),
            ssh_port=0, cpu=cpu, memory=memory, disk=disk, network_mode=req.network_mode,
            persistent=req.persistent, created_at=0.0, last_used_at=0.0, provider=self.provider.name,
            host=socket.gethostname(), uuid=str(uuid.uuid4()), mac=_mac_for(sid), active_layer=self.layout.new_layer_id(),
            ttl_seconds=req.ttl_seconds, **fields)
        try:
            with self.store.transaction(immediate=True):
                info = self.store.reserve_sandbox(record, tuple(self.config.sandbox.port_range))
                self.store.journal_begin(journal[0], journal[1], sid, {"domain": record.domain})
        except SandboxError as exc:
            self.store.audit("create", "rejected", sandbox_id=sid, sandbox_name=name, error=str(exc))
            raise ConfigError(str(exc), "name") from None
        private_dir(self.layout.sandbox_dir(info.id))
        return info

    # -- create --------------------------------------------------------------------------
    def create(self, name: str, req: Any, progress: Optional[Progress]) -> str:
        box = self._boxes().get(req.box)
        if req.limits.disk_bytes < box.virtual_size:
            raise ConfigError(f"{req.limits.disk!r} is smaller than box {box.name!r} ({box.virtual_size >> 20} MiB)",
                              "resource_limits.disk")
        started = time.monotonic()
        op = self.layout.new_operation_id()
        info = self.reserve(name, box.name, req.limits.cpu, req.limits.memory, req.limits.disk, req, (op, "create"))
        try:
            with self.layout.lock(info.id, f"create of {name!r}"):
                if progress:
                    progress("creating disk")
                ref = self.provider.new_root_layer(box, req.limits.disk_bytes)
                with self.store.transaction(immediate=True):
                    self.store.add_layer(info.active_layer, ref, None, box.name, info.id)
                    self.store.journal_step(op, "disk", ref=ref)
                fault_point("create:disk")
                if progress:
                    progress("booting guest")
                self.provider.start_machine(self.spec(info))
                fault_point("create:started")
                self.wait_ready(info, progress)
                rotate_host_key(self.config, self.sessions, self.store, info, progress)   # its own, not the box's
                with self.store.transaction(immediate=True):
                    info = self.store.update_sandbox(info.id, state=SandboxState.RUNNING)
                    self.store.journal_end(op)
        except BaseException as exc:
            self.discard_failed_create(info, exc)
            self.store.journal_end(op)
            raise
        self.store.audit("create", "ok", info, box=box.name, port=info.ssh_port, provider=self.provider.name,
                         seconds=round(time.monotonic() - started, 3), accelerator=self.provider.accelerator()[0])
        return info.id

    def discard_failed_create(self, info: SandboxInfo, exc: BaseException) -> None:
        """Remove every trace of a half-made sandbox; keep only its console log for diagnosis."""
        self.sessions.drop(info.id)
        console = self.layout.console_log(info.id, info.generation)
        kept = None
        if console.exists() and console.stat().st_size:
            kept = self.layout.kept_console_log(info.name, info.id)
            with open(console, "rb") as src, open_private(kept) as dst:
                shutil.copyfileobj(src, dst)
        try:
            self.provider.destroy_machine(info.domain)
        except SandboxError as cleanup_exc:
            log.error("clean-up of %s failed: %s", info.domain, cleanup_exc)
        self.remove(self.store.find_sandbox(info.id) or info)
        self.store.audit("create", "failed", info, error=str(exc) or type(exc).__name__,
                         console_log=str(kept) if kept else None)
        if kept is not None and getattr(exc, "console_log", None):
            exc.console_log = str(kept)
            if exc.args:
                exc.args = (str(exc.args[0]).replace(str(console), str(kept)),) + exc.args[1:]

    def remove(self, info: SandboxInfo) -> None:
        """The sandbox's snapshots, layers (those nothing stands on), directory and record."""
        self.tree.forget_sandbox(info)
        shutil.rmtree(self.layout.sandbox_dir(info.id), ignore_errors=True)
        self.store.delete_sandbox(info.id)

    # -- destroy -------------------------------------------------------------------------
    def destroy(self, ref: str) -> bool:
        """Stop the machine and remove its layers, logs and record (journaled: a crash mid-way is
        finished by the next process). libvirtd down: nothing changes, the error says so."""
        with self.ops.run(ref, "destroy", audit=False) as op:
            info = op.info
            self.sessions.drop(info.id)
            self.provider.destroy_machine(info.domain)      # ProviderUnavailableError: nothing changed
            jid = op.journal("destroy", domain=info.domain)
            op.update(state=SandboxState.DESTROYING)
            fault_point("destroy:begun")
            self.remove(info)
            self.store.journal_end(jid)
            op.journal_id = None
        self.layout.remove_lock(info.id)
        self.store.audit("destroy", "ok", info)
        return True

    # -- crash recovery ------------------------------------------------------------------
    def recover_create(self, entry: dict) -> str:
        info = self.store.find_sandbox(entry["sandbox_id"])
        if info is not None and info.state is not SandboxState.CREATING:
            self.store.journal_end(entry["id"])
            return f"create of {info.name}: completed"
        self.provider.destroy_machine(entry["data"]["domain"])
        if info is not None:
            self.remove(info)
        elif entry["data"].get("ref"):
            self.provider.delete_layer(entry["data"]["ref"])
        self.store.journal_end(entry["id"])
        return f"create of {entry['sandbox_id']}: undone"

    def recover_destroy(self, entry: dict) -> str:
        self.provider.destroy_machine(entry["data"]["domain"])
        info = self.store.find_sandbox(entry["sandbox_id"])
        if info is not None:
            self.remove(info)
        self.store.journal_end(entry["id"])
        self.layout.remove_lock(entry["sandbox_id"])
        return f"destroy of {entry['sandbox_id']}: completed"


def _mac_for(sandbox_id: str) -> str:
    h = uuid.uuid5(uuid.NAMESPACE_OID, sandbox_id).bytes
    return "52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2])


