"""The test double provider: machines in a dict, layers and memory states as small files that
name their parent, calls recorded, faults injected on demand. For fast unit tests (and users'
own tests); integration tests use the real providers. Registered as ``fake`` like any provider."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Optional

from ..exceptions import NotFoundError, ProviderError, StateCorruptionError
from .base import Capability, DomainStats, MachineSpec, Provider, ProviderCheck, SnapshotPlan

_MEMORY_MAGIC = b"FAKE-MEMORY\n"


class FakeProvider(Provider):
    """``fail_on = {"start_machine": ProviderError("boom")}`` makes that method raise."""

    name = "fake"
    capabilities = frozenset({Capability.MEMORY_SNAPSHOTS, Capability.DISK_SNAPSHOTS, Capability.CLONES,
                              Capability.PAUSE, Capability.CPU_QUOTA, Capability.METRICS, Capability.STOP_START,
                              Capability.STANDBYS})

    def __init__(self, config: Any = None, layout: Any = None) -> None:
        super().__init__(config, layout)
        self.domains: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.fail_on: dict[str, Exception] = {}

    def _call(self, op: str, *args) -> None:
        self.calls.append((op, *args))
        if op in self.fail_on:
            raise self.fail_on[op]

    # -- layers: a file holding its parent's reference ----------------------------------
    def _write_layer(self, parent: str) -> str:
        path = self.layout.layers / f"L{uuid.uuid4().hex[:15]}.fake"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(parent)
        return str(path)

    def new_root_layer(self, box: Any, size_bytes: int) -> str:
        self._call("new_root_layer", box.name)
        return self._write_layer(f"box:{box.name}")

    def new_layer(self, parent_ref: str, size_bytes: Optional[int] = None) -> str:
        self._call("new_layer", parent_ref)
        if not os.path.exists(parent_ref):
            raise StateCorruptionError(f"layer file {parent_ref} is missing; run `vmsandbox doctor`")
        return self._write_layer(parent_ref)

    def delete_layer(self, ref: str) -> None:
        self._call("delete_layer", ref)
        Path(ref).unlink(missing_ok=True)

    def check_layer(self, ref: str, parent_ref: Optional[str]) -> list[str]:
        if not os.path.exists(ref):
            return [f"its file {ref} is missing"]
        parent = Path(ref).read_text()
        if parent_ref and parent != parent_ref:
            return [f"is backed by {parent}, the database says {parent_ref}"]
        return []

    def stray_artifacts(self, known: set[str]) -> list[str]:
        return [str(f) for d in (self.layout.layers, self.layout.memory) for f in d.iterdir() if str(f) not in known]

    # -- machines -----------------------------------------------------------------------
    def start_machine(self, spec: MachineSpec) -> None:
        self._call("start_machine", spec.name)
        self.domains[spec.name] = {"spec": spec, "state": "running", "quota": spec.cpu_quota, "cpu_time_ns": 0,
                                   "disk": spec.layer}

    def _dom(self, name: str) -> dict:
        if name not in self.domains:
            raise ProviderError(f"no domain {name}")
        return self.domains[name]

    def destroy_machine(self, name: str) -> None:
        self._call("destroy_machine", name)
        self.domains.pop(name, None)

    def shutdown_machine(self, name: str, timeout: float) -> None:
        self._call("shutdown_machine", name)
        self._dom(name)["state"] = "shutoff"

    def kill_machine(self, name: str) -> None:
        self._call("kill_machine", name)
        self._dom(name)["state"] = "shutoff"

    def pause_machine(self, name: str) -> None:
        self._call("pause_machine", name)
        self._dom(name)["state"] = "paused"

    def resume_machine(self, name: str) -> None:
        self._call("resume_machine", name)
        self._dom(name)["state"] = "running"

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        self._call("set_cpu_quota", name, fraction)
        self._dom(name)["quota"] = fraction

    def machine_state(self, name: str) -> Optional[str]:
        d = self.domains.get(name)
        return d["state"] if d else None

    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        return sorted(n for n, d in self.domains.items() if n.startswith(prefix)
                      and (owner is None or d["spec"].owner == owner))

    def machine_stats(self, name: str) -> DomainStats:
        """Reads ``cpu_time_ns``, ``memory_used``, ``disk_allocation`` of ``domains[name]`` (tests set them)."""
        self._call("machine_stats", name)
        if name not in self.domains:
            raise NotFoundError(f"sampling {name}: no such domain")
        d = self.domains[name]
        spec: MachineSpec = d["spec"]
        return DomainStats(state=d["state"], cpu_time_ns=d["cpu_time_ns"], vcpus=spec.vcpus,
                           memory_total=spec.memory_bytes, memory_used=d.get("memory_used", 0),
                           disk_allocation=d.get("disk_allocation", 0), disk_capacity=None)

    def checks(self) -> list[ProviderCheck]:
        return [ProviderCheck("fake provider", True, "in-memory")]

    # -- snapshots ----------------------------------------------------------------------
    def plan_snapshot(self, active_ref: str, memory: bool) -> SnapshotPlan:
        mem = self.layout.memory / f"M{uuid.uuid4().hex[:15]}.fake" if memory else None
        return SnapshotPlan(active_ref, str(self.layout.layers / f"L{uuid.uuid4().hex[:15]}.fake"),
                            str(mem) if mem else None)

    def _carry_out(self, plan: SnapshotPlan) -> None:
        fd = os.open(plan.active_ref, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(plan.frozen_ref)
        if plan.memory_ref:
            fd = os.open(plan.memory_ref, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_MEMORY_MAGIC)

    def snapshot_machine(self, name: str, plan: SnapshotPlan) -> None:
        self._call("snapshot_machine", name)
        d = self._dom(name)
        if not plan.reuse:
            self._carry_out(plan)
        elif not os.path.exists(plan.active_ref):      # as libvirt with REUSE_EXT
            raise ProviderError(f"snapshotting {name}: {plan.active_ref} does not exist")
        d["disk"] = plan.active_ref

    def premake_layer(self, plan: SnapshotPlan) -> bool:
        self._call("premake_layer", plan.frozen_ref)
        self._carry_out(plan)
        return True

    def snapshot_stopped(self, plan: SnapshotPlan) -> None:
        self._call("snapshot_stopped", plan.frozen_ref)
        self._carry_out(plan)

    def snapshot_completed(self, name: Optional[str], plan: SnapshotPlan) -> tuple[bool, Optional[str]]:
        d = self.domains.get(name) if name else None
        if d is None or d["disk"] != plan.active_ref:
            return False, None
        mem = plan.memory_ref
        ok = mem is not None and os.path.exists(mem) and Path(mem).read_bytes() == _MEMORY_MAGIC
        return True, mem if ok else None

    def discard_snapshot(self, plan: SnapshotPlan) -> None:
        for ref in (plan.active_ref, plan.memory_ref):
            if ref:
                Path(ref).unlink(missing_ok=True)

    def restore_machine(self, memory_ref: str, spec: MachineSpec) -> None:
        self._call("restore_machine", spec.name)
        if not os.path.exists(memory_ref):
            raise ProviderError(f"no memory state {memory_ref}")
        self.domains[spec.name] = {"spec": spec, "state": "running", "quota": spec.cpu_quota, "cpu_time_ns": 0,
                                   "disk": spec.layer}

    def after_restore(self, session: Any, spec: MachineSpec, clone: bool) -> None:
        session.execute(f"fix-up{' clone ' + spec.hostname if clone else ''}", timeout=15)

    def delete_memory(self, memory_ref: str) -> None:
        Path(memory_ref).unlink(missing_ok=True)

    def memory_size(self, memory_ref: str) -> int:
        return os.path.getsize(memory_ref) if os.path.exists(memory_ref) else 0
