"""The Provider interface: what the core asks of a VM layer (define, boot, stop, destroy,
pause, throttle, inspect). Disks are the core's (see ``vmsandbox.disks``); a provider only
attaches the overlay it is given. Implementations: ``libvirt`` and the test double in
``vmsandbox.testing``."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from ..exceptions import SandboxError
from ..schema import ProviderSettings


@dataclass(frozen=True)
class MachineSpec:
    """Everything needed to define one guest."""
    name: str                      # domain name (carries the configured prefix)
    uuid: str
    vcpus: int
    cpu_quota: Optional[float]     # fraction of one CPU for fractional limits ("0.5"), else None
    memory_bytes: int
    disk_path: Path                # the sandbox's active qcow2 overlay
    ssh_port: int                  # forwarded from 127.0.0.1:ssh_port to guest port 22
    mac: str
    network_mode: str              # "none" (restricted user-mode net) | "nat" (user-mode, unrestricted)
    console_log: Path
    owner: str = ""                # state directory that made it (in the domain's metadata)
    kernel: Optional[Path] = None  # direct kernel boot when set; else the disk's own boot loader
    initrd: Optional[Path] = None
    cmdline: Optional[str] = None


@dataclass(frozen=True)
class ProviderCheck:
    """One line of ``vmsandbox doctor``."""
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DomainStats:
    """Host-side sample of one guest (issue: watchdog)."""
    state: str
    cpu_time_ns: int
    vcpus: int
    memory_total: Optional[int] = None     # bytes the guest sees
    memory_used: Optional[int] = None      # total - available (balloon stats)
    disk_allocation: Optional[int] = None  # bytes of the active overlay on the host
    disk_capacity: Optional[int] = None
    extra: dict = field(default_factory=dict)   # e.g. vcpu_time_ns: vCPU time only (cpu_time_ns counts all of QEMU)


class Provider(abc.ABC):
    """Guest lifecycle. Every method raises ``ProviderError`` (or a subclass) on failure."""

    name: str = "abstract"
    # the model of this provider's ``providers.<name>`` config section (default: no keys);
    # read the validated values with ``config.provider_settings(name)``
    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings

    @abc.abstractmethod
    def start_machine(self, spec: MachineSpec) -> None:
        """Define (or redefine) and boot the guest described by ``spec``."""

    @abc.abstractmethod
    def destroy_machine(self, name: str) -> None:
        """Stop hard and undefine; a missing domain is not an error."""

    @abc.abstractmethod
    def shutdown_machine(self, name: str, timeout: float) -> None:
        """Ask the guest to power off (ACPI); stop hard after ``timeout``. Keeps the definition."""

    @abc.abstractmethod
    def kill_machine(self, name: str) -> None:
        """Stop hard at once (pull the plug); keeps the definition and disks."""

    @abc.abstractmethod
    def boot_machine(self, name: str) -> None:
        """Boot an already defined, stopped guest."""

    @abc.abstractmethod
    def pause_machine(self, name: str) -> None: ...

    @abc.abstractmethod
    def resume_machine(self, name: str) -> None: ...

    @abc.abstractmethod
    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        """Cap the guest at ``fraction`` of one CPU per vCPU-period; None lifts the cap."""

    @abc.abstractmethod
    def machine_state(self, name: str) -> Optional[str]:
        """'running' | 'paused' | 'shutoff' | 'crashed' | other; None when no such domain."""

    @abc.abstractmethod
    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        """Names of all domains starting with ``prefix``; with ``owner``, only those whose metadata
        names that state directory (another state directory's guests are never touched)."""

    @abc.abstractmethod
    def machine_stats(self, name: str) -> DomainStats:
        """Host-side sample of one guest; NotFoundError when the domain is gone."""

    def machines_stats(self, names: list[str]) -> dict[str, "DomainStats | SandboxError"]:
        """Host-side samples of several guests at once (the watchdog's per-interval call).

        Each name maps to its ``DomainStats`` or to the error that prevented sampling it
        (``NotFoundError`` when the domain is gone), so one bad guest never hides the others.
        Providers override this when their VM layer can sample many guests in one call.
        """
        out: dict[str, DomainStats | SandboxError] = {}
        for name in names:
            try:
                out[name] = self.machine_stats(name)
            except SandboxError as exc:
                out[name] = exc
        return out

    @abc.abstractmethod
    def checks(self) -> list[ProviderCheck]:
        """Health of the VM layer for ``vmsandbox doctor``."""

    # -- snapshots (external qcow2 overlays managed by vmsandbox) ---------------------------
    def snapshot_machine(self, name: str, new_overlay: Path, memory_path: Optional[Path]) -> None:
        """Switch a running/paused guest to ``new_overlay`` (created on top of its current disk),
        atomically saving its memory to ``memory_path`` when given. The guest keeps running."""
        raise NotImplementedError

    def restore_machine(self, memory_path: Path, spec: MachineSpec) -> None:
        """Start a new guest from a memory state, under the identity and disk of ``spec``."""
        raise NotImplementedError

    def machine_disk(self, name: str) -> Optional[str]:
        """The path of the guest's current disk (vda); None when there is no such domain."""
        raise NotImplementedError

    def accelerator(self) -> tuple[str, str]:
        """('kvm'|'tcg', why)."""
        return ("tcg", "not applicable")

    def close(self) -> None:
        """Release connections."""
