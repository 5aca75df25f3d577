"""The libvirt/QEMU provider: defines, boots, stops and inspects guests through libvirt-python.

The only module that imports ``libvirt``. libvirt errors are mapped here, by symbolic code, to
vmsandbox exceptions. It only ever touches domains whose names carry ``sandbox.domain_prefix``.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from xml.sax.saxutils import quoteattr
import threading
import time
from typing import Literal, Optional

import libvirt

from ..config import Config
from ..schema import ProviderSettings
from ..exceptions import NotFoundError, ProviderError, SandboxError
from . import accel
from .base import DomainStats, MachineSpec, Provider, ProviderCheck
from . import libvirt_savefile
from .libvirt_xml import METADATA_NS, domain_xml

log = logging.getLogger("vmsandbox.libvirt")

# libvirt prints every error to stderr unless a handler is registered.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
_UNREACHABLE = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN,
                libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_RPC}


# state, total CPU time, balloon and block stats: all work under TCG and cgroup v2 (per-CPU and
# interface stats do not, see DESIGN.md); one RPC for any number of domains.
_STATS_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                 | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_BLOCK)


def _domain_stats(p: dict) -> DomainStats:
    """A ``getAllDomainStats`` record -> DomainStats. Guest memory is what the guest sees
    (``balloon.available``) and used is that minus what it could still use (``balloon.usable``,
    or ``unused`` on older guests); without balloon stats only the total is known."""
    total = used = None
    if "balloon.available" in p:
        total = p["balloon.available"] * 1024
        spare = p.get("balloon.usable", p.get("balloon.unused"))
        used = None if spare is None else max(0, p["balloon.available"] - spare) * 1024
    elif "balloon.current" in p:
        total = p["balloon.current"] * 1024
    disk = next((i for i in range(p.get("block.count", 0)) if p.get(f"block.{i}.name") == "vda"), None)
    vcpus = p.get("vcpu.current", 0)
    vcpu_times = [p[f"vcpu.{i}.time"] for i in range(vcpus) if f"vcpu.{i}.time" in p]
    return DomainStats(
        state=_STATES.get(p.get("state.state"), "unknown"), cpu_time_ns=p.get("cpu.time", 0),
        vcpus=vcpus, memory_total=total, memory_used=used,
        disk_allocation=None if disk is None else p.get(f"block.{disk}.physical"),   # host bytes of the overlay
        disk_capacity=None if disk is None else p.get(f"block.{disk}.capacity"),
        # time the guest's vCPUs ran, without QEMU's own threads (cpu.time includes those: a busy
        # 1-vCPU TCG guest reads ~1.02 CPUs by cpu.time)
        extra={"vcpu_time_ns": sum(vcpu_times)} if vcpu_times and len(vcpu_times) == vcpus else {})


def _map(exc: "libvirt.libvirtError", doing: str, uri: str = "") -> Exception:
    code = exc.get_error_code()
    msg = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFoundError(f"{doing}: no such domain ({msg})")
    if code in _UNREACHABLE:
        return ProviderError(f"{doing}: libvirtd is not reachable at {uri} ({msg}); "
                             "start it with `virtlogd -d; libvirtd -d` or run `vmsandbox doctor`")
    return ProviderError(f"{doing}: {msg}")


class LibvirtSettings(ProviderSettings):
    """``providers.libvirt`` (``sandbox.libvirt_uri``/``sandbox.accelerator`` are deprecated aliases)."""
    uri: str = "qemu:///system"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"


class LibvirtProvider(Provider):
    name = "libvirt"
    Settings = LibvirtSettings

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.provider_settings(self.name)
        self.uri = self.settings.uri
        self.prefix = config.sandbox.domain_prefix
        self._conn: Optional[libvirt.virConnect] = None
        self._lock = threading.Lock()
        self._accel: Optional[tuple[str, str]] = None

    # -- plumbing ------------------------------------------------------------------------
    def conn(self) -> "libvirt.virConnect":
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._conn = None
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise _map(exc, "connecting to libvirt", self.uri) from exc
            return self._conn

    def _domain(self, name: str) -> "libvirt.virDomain":
        self._own(name)
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"looking up {name}", self.uri) from exc

    def _own(self, name: str) -> None:
        if not name.startswith(self.prefix):
            raise ProviderError(f"refusing to touch domain {name!r}: it lacks the prefix {self.prefix!r}")

    def accelerator(self) -> tuple[str, str]:
        if self._accel is None:
            self._accel = accel.choose(self.settings.accelerator, accel.cache_dir(self.config.sandbox.state_path))
        return self._accel

    # -- lifecycle -----------------------------------------------------------------------
    def start_machine(self, spec: MachineSpec) -> None:
        self._own(spec.name)
        kind, _ = self.accelerator()
        xml = domain_xml(spec, "kvm" if kind == "kvm" else "qemu")
        try:
            dom = self.conn().defineXML(xml)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"defining {spec.name}", self.uri) from exc
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            self._undefine(dom)
            raise _map(exc, f"booting {spec.name}", self.uri) from exc
        log.debug("started %s (%s)", spec.name, kind)

    def boot_machine(self, name: str) -> None:
        dom = self._domain(name)
        try:
            if not dom.isActive():
                dom.create()
        except libvirt.libvirtError as exc:
            raise _map(exc, f"booting {name}", self.uri) from exc

    def destroy_machine(self, name: str) -> None:
        self._own(name)
        try:
            dom = self.conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise _map(exc, f"looking up {name}", self.uri) from exc
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                raise _map(exc, f"stopping {name}", self.uri) from exc
        self._undefine(dom)

    def _undefine(self, dom: "libvirt.virDomain") -> None:
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise _map(exc, f"undefining {dom.name()}", self.uri) from exc

    def shutdown_machine(self, name: str, timeout: float) -> None:
        dom = self._domain(name)
        try:
            if not dom.isActive():
                return
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            dom.shutdown()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                time.sleep(0.2)
            log.warning("%s ignored ACPI shutdown for %.0f s; stopping it hard", name, timeout)
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:   # already off
                return
            raise _map(exc, f"shutting down {name}", self.uri) from exc

    def kill_machine(self, name: str) -> None:
        dom = self._domain(name)
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise _map(exc, f"stopping {name}", self.uri) from exc

    def pause_machine(self, name: str) -> None:
        try:
            self._domain(name).suspend()
        except libvirt.libvirtError as exc:
            raise _map(exc, f"pausing {name}", self.uri) from exc

    def resume_machine(self, name: str) -> None:
        try:
            self._domain(name).resume()
        except libvirt.libvirtError as exc:
            raise _map(exc, f"resuming {name}", self.uri) from exc

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        period = 100_000
        quota = -1 if fraction is None else max(1000, int(period * fraction))
        try:
            self._domain(name).setSchedulerParametersFlags(
                {"vcpu_period": period, "vcpu_quota": quota}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"setting the CPU quota of {name}", self.uri) from exc

    # -- snapshots -----------------------------------------------------------------------
    def snapshot_machine(self, name: str, new_overlay: Path, memory_path: Optional[Path]) -> None:
        dom = self._domain(name)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        memory = ""
        if memory_path is None:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        else:
            memory = f"<memory snapshot='external' file={quoteattr(str(memory_path))}/>"
            if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
        xml = (f"<domainsnapshot>{memory}<disks><disk name='vda' snapshot='external'><driver type='qcow2'/>"
               f"<source file={quoteattr(str(new_overlay))}/></disk></disks></domainsnapshot>")
        try:
            dom.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"snapshotting {name}", self.uri) from exc

    def restore_machine(self, memory_path: Path, spec: MachineSpec) -> None:
        self._own(spec.name)
        try:
            saved = libvirt_savefile.read_xml(memory_path)
            libvirt_savefile.write_xml(memory_path, libvirt_savefile.adapt_xml(saved, spec))
            self.conn().restoreFlags(str(memory_path), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"restoring {spec.name} from {memory_path.name}", self.uri) from exc
        try:     # a restored domain is transient: define it so stop/start and host restarts work
            kind, _ = self.accelerator()
            self.conn().defineXML(domain_xml(spec, "kvm" if kind == "kvm" else "qemu"))
        except libvirt.libvirtError as exc:
            self.destroy_machine(spec.name)
            raise _map(exc, f"defining restored {spec.name}", self.uri) from exc
        except OSError as exc:
            raise ProviderError(f"reading memory state {memory_path}: {exc.strerror}") from exc

    def machine_disk(self, name: str) -> Optional[str]:
        self._own(name)
        try:
            xml = self.conn().lookupByName(name).XMLDesc()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _map(exc, f"reading {name}", self.uri) from exc
        m = re.search(r"<disk type='file' device='disk'>.*?<source file='([^']+)'", xml, re.S)
        return m.group(1) if m else None

    def wait_for_jobs(self, name: str, timeout: float = 60) -> None:
        """Wait until libvirt has no job running on the domain (e.g. a snapshot begun by a process that died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                dom = self.conn().lookupByName(name)
                if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                    return
            except libvirt.libvirtError:
                return
            time.sleep(0.1)

    # -- inspection ----------------------------------------------------------------------
    def machine_state(self, name: str) -> Optional[str]:
        self._own(name)
        try:
            dom = self.conn().lookupByName(name)
            return _STATES.get(dom.state()[0], "unknown")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _map(exc, f"reading the state of {name}", self.uri) from exc

    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        try:
            doms = [d for d in self.conn().listAllDomains() if d.name().startswith(prefix)]
        except libvirt.libvirtError as exc:
            raise _map(exc, "listing domains", self.uri) from exc
        if owner is not None:
            doms = [d for d in doms if self._owner(d) == owner]
        return sorted(d.name() for d in doms)

    @staticmethod
    def _owner(dom: "libvirt.virDomain") -> Optional[str]:
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        except libvirt.libvirtError:
            return None
        m = re.search(r"state=(['\"])(.*?)\1", meta)
        return m.group(2) if m else None

    def machine_stats(self, name: str) -> DomainStats:
        dom = self._domain(name)
        try:
            records = self.conn().domainListGetStats([dom], _STATS_GROUPS)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"sampling {name}", self.uri) from exc
        if not records:
            raise NotFoundError(f"sampling {name}: no such domain")
        return _domain_stats(records[0][1])

    def machines_stats(self, names: list[str]) -> dict[str, DomainStats | SandboxError]:
        """All requested guests in one libvirt call (``getAllDomainStats``); missing ones map to
        NotFoundError, and a libvirt failure to the same ProviderError for every name."""
        for name in names:
            self._own(name)
        try:
            records = self.conn().getAllDomainStats(_STATS_GROUPS)
        except (libvirt.libvirtError, ProviderError) as exc:
            err = _map(exc, "sampling guests", self.uri) if isinstance(exc, libvirt.libvirtError) else exc
            return {name: err for name in names}
        found: dict[str, DomainStats | SandboxError] = {}
        wanted = set(names)
        for dom, params in records:
            try:
                dname = dom.name()
            except libvirt.libvirtError:
                continue
            if dname in wanted:
                found[dname] = _domain_stats(params)
        return {name: found.get(name) or NotFoundError(f"sampling {name}: no such domain") for name in names}

    def checks(self) -> list[ProviderCheck]:
        out = []
        try:
            c = self.conn()
            v = c.getLibVersion()
            out.append(ProviderCheck("libvirtd", True, f"reachable at {self.uri} (libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000})"))
        except ProviderError as exc:
            out.append(ProviderCheck("libvirtd", False, str(exc), "virtlogd -d; libvirtd -d"))
        qemu = shutil.which("qemu-system-x86_64")
        out.append(ProviderCheck("qemu", bool(qemu), qemu or "qemu-system-x86_64 not found",
                                 "" if qemu else "apt-get install qemu-system-x86"))
        img = shutil.which("qemu-img")
        out.append(ProviderCheck("qemu-img", bool(img), img or "qemu-img not found",
                                 "" if img else "apt-get install qemu-utils"))
        kind, why = self.accelerator()
        out.append(ProviderCheck("accelerator", True, f"{kind}: {why}"))
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
