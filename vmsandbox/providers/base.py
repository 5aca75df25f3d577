"""The Provider interface: everything the core asks of a machine layer (libvirt/QEMU, Vagrant,
containers...), and the value types that cross it.

A provider owns what is its own: the machine (define, boot, stop, destroy, pause, throttle,
inspect), its disks (the layers of the layer tree: the core keeps their records and the tree's
rules, the provider makes, snapshots and deletes the artifacts behind the references it hands
out), its saved memory states, the endpoint commands reach it through, and the checks of its
crash-recovery steps. The core never reads a reference: it stores it and hands it back.
References are file paths, or, for a provider whose artifacts are not files (``ref_scheme``),
strings that start with ``<provider name>:``; so is the box source of a sandbox made from such a
provider's own images (``docker:vmsandbox/tiny``). ``providers/router.py`` routes by that prefix.

A provider declares ``capabilities``; the core asks before it calls an optional method and raises
one clear ``SandboxError`` naming the provider when one is missing (``require_capability``).
Implementations: ``providers/libvirt/`` and the test double ``providers/fake.py``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ..exceptions import ProviderError, SandboxError
from ..schema import ProviderSettings

if TYPE_CHECKING:
    from ..boxes import Box
    from ..layout import Layout


class Capability:
    """Names of the optional abilities a provider can declare."""
    MEMORY_SNAPSHOTS = "memory_snapshots"    # snapshots carry the guest's memory; restore resumes it
    DISK_SNAPSHOTS = "disk_snapshots"
    CLONES = "clones"                        # a new sandbox from a snapshot
    PAUSE = "pause"
    CPU_QUOTA = "cpu_quota"                  # throttle
    METRICS = "metrics"                      # host-side samples for the watchdog
    STOP_START = "stop_start"                # power off keeping the disk, boot again
    STANDBYS = "standbys"                    # warm standbys: restore a memory state paused, resume it later


@dataclass(frozen=True)
class MachineSpec:
    """Everything needed to define one machine."""
    name: str                      # machine name (carries the configured prefix)
    uuid: str
    sandbox_id: str
    hostname: str                  # the guest's host name (the sandbox's name)
    vcpus: int
    cpu_quota: Optional[float]     # fraction of one CPU for fractional limits ("0.5"), else None
    memory_bytes: int
    disk_bytes: int
    layer: str                     # provider reference of the active layer (the disk it writes)
    box: "Box"
    ssh_port: int                  # forwarded from 127.0.0.1:ssh_port to the guest's port 22 (VMs)
    mac: str
    network_mode: str              # "none" (restricted) | "nat"
    console_log: Path
    owner: str = ""                # state directory that made it (in the machine's metadata)


@dataclass(frozen=True)
class Endpoint:
    """Where and how commands reach a machine (SSH for VM providers)."""
    host: str
    port: int
    user: str
    key_path: Path
    host_key: Optional[str]        # the pinned key; None: trust on first use


@dataclass(frozen=True)
class SnapshotPlan:
    """The references a snapshot will produce, chosen before it starts (so they can be journaled):
    the active layer's content becomes ``frozen_ref``, the machine goes on writing ``active_ref``,
    and ``memory_ref`` receives its memory (None: disk only)."""
    frozen_ref: str
    active_ref: str
    memory_ref: Optional[str]
    reuse: bool = False             # active_ref was made ahead (``premake_layer``): open it, do not create it

    def to_dict(self) -> dict:
        return {"frozen_ref": self.frozen_ref, "active_ref": self.active_ref, "memory_ref": self.memory_ref,
                "reuse": self.reuse}


@dataclass(frozen=True)
class ProviderCheck:
    """One line of ``vmsandbox doctor``."""
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DomainStats:
    """Host-side sample of one machine (the watchdog's input)."""
    state: str
    cpu_time_ns: int
    vcpus: int
    memory_total: Optional[int] = None     # bytes the guest sees
    memory_used: Optional[int] = None      # total - available (balloon stats)
    disk_allocation: Optional[int] = None  # bytes of the active layer on the host
    disk_capacity: Optional[int] = None
    extra: dict = field(default_factory=dict)   # e.g. vcpu_time_ns: vCPU time only (cpu_time_ns counts all of QEMU)


class Provider(abc.ABC):
    """Machine lifecycle, layers, memory states and endpoints. Every method raises
    ``ProviderError`` (``ProviderUnavailableError`` when its daemon is down) on failure."""

    name: str = "abstract"
    capabilities: frozenset = frozenset()
    # the model of this provider's ``providers.<name>`` config section (default: no keys);
    # read the validated values with ``config.provider_settings(name)``
    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    ref_scheme: bool = False        # True: references are "<name>:...", not file paths
    resolves_boxes: bool = False    # True: its sandboxes' boxes are "<name>:<box>", found by ``box()``

    def __init__(self, config: Any, layout: "Layout") -> None:
        self.config = config
        self.layout = layout

    def require_capability(self, capability: str, doing: str) -> None:
        if capability not in self.capabilities:
            raise SandboxError(f"the {self.name} provider cannot {doing} (it lacks {capability})")

    # -- layers ----------------------------------------------------------------------------
    @abc.abstractmethod
    def new_root_layer(self, box: "Box", size_bytes: int) -> str:
        """Make a writable layer on ``box``'s image; returns its reference."""

    @abc.abstractmethod
    def new_layer(self, parent_ref: str, size_bytes: Optional[int] = None) -> str:
        """Make a writable layer on the frozen layer ``parent_ref``; returns its reference."""

    @abc.abstractmethod
    def delete_layer(self, ref: str) -> None:
        """Remove a layer's artifact; a missing one is not an error."""

    def check_layer(self, ref: str, parent_ref: Optional[str]) -> list[str]:
        """Problems with one layer's artifact (for ``doctor``); empty: fine."""
        return []

    def stray_artifacts(self, known: set[str]) -> list[str]:
        """References of artifacts this provider holds for the state directory that are not in
        ``known`` (layer and memory references of records and of operations in flight)."""
        return []

    def remove_artifact(self, ref: str) -> None:
        """Remove a stray artifact (one ``stray_artifacts`` named); a missing one is not an error."""
        try:
            Path(ref).unlink()
        except FileNotFoundError:
            pass

    def box(self, source: str) -> "Box":
        """The ``Box`` for a box source of this provider (``<name>:<image>``); NotFoundError when
        there is no such image. Providers that boot stored boxes only have none."""
        raise ProviderError(f"the {self.name} provider has no images of its own ({source!r})")

    # -- machines --------------------------------------------------------------------------
    @abc.abstractmethod
    def start_machine(self, spec: MachineSpec) -> None:
        """Define (or redefine) and boot the machine described by ``spec``."""

    @abc.abstractmethod
    def destroy_machine(self, name: str) -> None:
        """Stop hard and undefine; a missing machine is not an error."""

    def shutdown_machine(self, name: str, timeout: float) -> None:
        """Ask the guest to power off; stop hard after ``timeout``. Keeps the definition."""
        self.require_capability(Capability.STOP_START, "stop a machine")

    @abc.abstractmethod
    def kill_machine(self, name: str) -> None:
        """Stop hard at once (pull the plug); keeps the definition and disks."""

    def pause_machine(self, name: str) -> None:
        self.require_capability(Capability.PAUSE, "pause a machine")

    def resume_machine(self, name: str) -> None:
        self.require_capability(Capability.PAUSE, "resume a machine")

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        """Cap the guest at ``fraction`` of one CPU per vCPU-period; None lifts the cap."""
        self.require_capability(Capability.CPU_QUOTA, "throttle a machine")

    @abc.abstractmethod
    def machine_state(self, name: str) -> Optional[str]:
        """'running' | 'paused' | 'shutoff' | 'crashed' | other; None when no such machine."""

    @abc.abstractmethod
    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        """Names of all machines starting with ``prefix``; with ``owner``, only those whose
        metadata names that state directory (another state directory's are never touched)."""

    def machine_stats(self, name: str) -> DomainStats:
        """Host-side sample of one machine; NotFoundError when it is gone."""
        raise ProviderError(f"the {self.name} provider has no metrics")

    def machines_stats(self, names: list[str]) -> dict[str, "DomainStats | SandboxError"]:
        """Samples of several machines at once (the watchdog's per-interval call); each name maps
        to its ``DomainStats`` or to the error that prevented sampling it, so one bad machine
        never hides the others. Providers override this when they can sample many in one call."""
        out: dict[str, DomainStats | SandboxError] = {}
        for name in names:
            try:
                out[name] = self.machine_stats(name)
            except SandboxError as exc:
                out[name] = exc
        return out

    @abc.abstractmethod
    def checks(self) -> list[ProviderCheck]:
        """Health of the machine layer for ``vmsandbox doctor``."""

    # -- snapshots -------------------------------------------------------------------------
    def plan_snapshot(self, active_ref: str, memory: bool) -> SnapshotPlan:
        """Choose the references of a snapshot of the layer ``active_ref`` (nothing is made yet)."""
        raise ProviderError(f"the {self.name} provider cannot take snapshots")

    def snapshot_machine(self, name: str, plan: SnapshotPlan) -> None:
        """Carry out ``plan`` on a running or paused machine; it keeps running."""
        raise ProviderError(f"the {self.name} provider cannot take snapshots")

    def snapshot_stopped(self, plan: SnapshotPlan) -> None:
        """Carry out ``plan`` (disk only) for a machine that is not running."""
        raise ProviderError(f"the {self.name} provider cannot take snapshots")

    def premake_layer(self, plan: SnapshotPlan) -> bool:
        """Make ``plan.active_ref`` (a new layer on ``plan.frozen_ref``) ahead of a disk-only
        ``snapshot_machine`` that gets the plan with ``reuse=True``; False: this provider does not."""
        return False

    def snapshot_completed(self, name: Optional[str], plan: SnapshotPlan) -> tuple[bool, Optional[str]]:
        """After a crash mid-snapshot: (did the machine switch to ``plan.active_ref``, the memory
        reference if its state is complete, else None)."""
        return False, None

    def discard_snapshot(self, plan: SnapshotPlan) -> None:
        """Remove what a snapshot that did not complete may have made."""

    def restore_machine(self, memory_ref: str, spec: MachineSpec) -> None:
        """Start a new machine from a memory state, under the identity and layer of ``spec``."""
        self.require_capability(Capability.MEMORY_SNAPSHOTS, "restore memory")

    def after_restore(self, session: Any, spec: MachineSpec, clone: bool) -> None:
        """Fix-ups in a guest resumed from memory (its clock; a clone's MAC and host name)."""

    def delete_memory(self, memory_ref: str) -> None:
        """Remove a saved memory state; a missing one is not an error."""

    def compact_memory(self, memory_ref: str) -> str:
        """Store a memory state more compactly (compression); returns its new reference."""
        return memory_ref

    def memory_size(self, memory_ref: str) -> int:
        return 0

    # -- endpoints -------------------------------------------------------------------------
    def endpoint(self, info: Any, box: "Box") -> Endpoint:
        """How commands reach sandbox ``info`` (a ``SandboxInfo``): SSH on its forwarded port."""
        return Endpoint("127.0.0.1", info.ssh_port, box.ssh_user, box.ssh_key, info.host_key or box.host_key)

    def open_session(self, endpoint: Endpoint, on_new_host_key: Any = None) -> Any:
        """A command session to ``endpoint`` (``vmsandbox.ssh.SSHSession`` for SSH endpoints)."""
        from ..ssh import SSHSession
        return SSHSession(endpoint.host, endpoint.port, endpoint.user, endpoint.key_path, endpoint.host_key,
                          connect_timeout=self.config.ssh.connect_timeout, on_new_host_key=on_new_host_key)

    def accelerator(self) -> tuple[str, str]:
        """('kvm'|'tcg'|..., why)."""
        return ("none", "not applicable")

    def close(self) -> None:
        """Release connections."""
