"""The libvirt/QEMU provider: defines, boots, stops and inspects guests through libvirt-python.

The only module that imports ``libvirt``. libvirt errors are mapped here, by symbolic code, to
vmsandbox exceptions. It only ever touches domains whose names carry ``sandbox.domain_prefix``.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import Optional

import libvirt

from ..config import Config
from ..exceptions import NotFoundError, ProviderError
from . import accel
from .base import DomainStats, MachineSpec, Provider, ProviderCheck
from .libvirt_xml import domain_xml

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


def _map(exc: "libvirt.libvirtError", doing: str, uri: str = "") -> Exception:
    code = exc.get_error_code()
    msg = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFoundError(f"{doing}: no such domain ({msg})")
    if code in _UNREACHABLE:
        return ProviderError(f"{doing}: libvirtd is not reachable at {uri} ({msg}); "
                             "start it with `virtlogd -d; libvirtd -d` or run `vmsandbox doctor`")
    return ProviderError(f"{doing}: {msg}")


class LibvirtProvider(Provider):
    name = "libvirt"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.uri = config.sandbox.libvirt_uri
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
            self._accel = accel.choose(self.config.sandbox.accelerator, self.config.sandbox.state_path)
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

    def list_machines(self, prefix: str) -> list[str]:
        try:
            return sorted(d.name() for d in self.conn().listAllDomains() if d.name().startswith(prefix))
        except libvirt.libvirtError as exc:
            raise _map(exc, "listing domains", self.uri) from exc

    def machine_stats(self, name: str) -> DomainStats:
        dom = self._domain(name)
        try:
            state, _max_kib, mem_kib, vcpus, cpu_time = dom.info()
            total = used = alloc = cap = None
            if dom.isActive():
                mem = dom.memoryStats()
                if "available" in mem and "unused" in mem:
                    total = mem["available"] * 1024
                    used = (mem["available"] - mem.get("usable", mem["unused"])) * 1024
                else:
                    total = mem_kib * 1024
            try:
                cap, alloc, _phys = dom.blockInfo("vda")
            except libvirt.libvirtError:
                pass
            return DomainStats(state=_STATES.get(state, "unknown"), cpu_time_ns=cpu_time, vcpus=vcpus,
                               memory_total=total, memory_used=used, disk_allocation=alloc, disk_capacity=cap)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"sampling {name}", self.uri) from exc

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
