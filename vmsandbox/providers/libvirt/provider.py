"""The libvirt/QEMU provider: guests defined, booted, stopped and inspected through
libvirt-python, on a qcow2 layer tree (``disks``), with memory states saved by libvirt and
restored under a new identity (``savefile``), on KVM when a probe shows it works (``accel``).

The only module that imports ``libvirt``. libvirt errors are mapped here, by symbolic code, to
vmsandbox exceptions. It only ever touches domains whose names carry ``sandbox.domain_prefix``.
Layer references are qcow2 paths under ``<state>/layers``; memory references are save images
(``.save``, or ``.save.zst`` once compacted) under ``<state>/memory``.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional
from .xmltext import quoteattr   # not xml.sax.saxutils: see xmltext

import libvirt

from ...exceptions import (NotFoundError, ProviderError, ProviderUnavailableError, SandboxError,
                           StateCorruptionError)
from ..base import Capability, DomainStats, MachineSpec, Provider, ProviderCheck, SnapshotPlan
from ...schema import ProviderSettings
from . import accel, disks, savefile
from .domain_xml import METADATA_NS, domain_xml

log = logging.getLogger("vmsandbox.libvirt")

# libvirt prints every error to stderr unless a handler is registered.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
_KEPT_HANDLES = 256
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
        return ProviderUnavailableError(f"{doing}: libvirtd is not reachable at {uri} ({msg}); nothing was "
                                        "changed; start it with `virtlogd -d; libvirtd -d` or run `vmsandbox doctor`")
    return ProviderError(f"{doing}: {msg}")


class LibvirtSettings(ProviderSettings):
    """``providers.libvirt`` (``sandbox.libvirt_uri``/``sandbox.accelerator`` are deprecated aliases)."""
    uri: str = "qemu:///system"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"


class LibvirtProvider(Provider):
    name = "libvirt"
    capabilities = frozenset({Capability.MEMORY_SNAPSHOTS, Capability.DISK_SNAPSHOTS, Capability.CLONES,
                              Capability.PAUSE, Capability.CPU_QUOTA, Capability.METRICS, Capability.STOP_START,
                              Capability.STANDBYS})

    Settings = LibvirtSettings

    def __init__(self, config: Any, layout: Any) -> None:
        super().__init__(config, layout)
        self.settings = config.provider_settings(self.name)
        self.uri = self.settings.uri
        self.prefix = config.sandbox.domain_prefix
        self._conn: Optional[libvirt.virConnect] = None
        self._lock = threading.Lock()
        # name -> handle of the domains this process defined or looked up, so that retiring a guest
        # costs no lookup; valid for this connection only, dropped when the domain is destroyed
        self._handles: dict[str, "libvirt.virDomain"] = {}
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
                self._handles.clear()
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

    # -- layers: qcow2 files under <state>/layers ----------------------------------------
    def _new_layer_path(self) -> Path:
        return self.layout.layers / f"L{uuid.uuid4().hex[:15]}.qcow2"

    def new_root_layer(self, box: Any, size_bytes: int) -> str:
        path = self._new_layer_path()
        disks.create_overlay(path, box.image, size_bytes)
        return str(path)

    def new_layer(self, parent_ref: str, size_bytes: Optional[int] = None) -> str:
        if not os.path.exists(parent_ref):
            raise StateCorruptionError(f"layer file {parent_ref} is missing; run `vmsandbox doctor`")
        path = self._new_layer_path()
        disks.create_overlay(path, Path(parent_ref), size_bytes)
        return str(path)

    def delete_layer(self, ref: str) -> None:
        _unlink(ref)

    def check_layer(self, ref: str, parent_ref: Optional[str]) -> list[str]:
        if not os.path.exists(ref):
            return [f"its file {ref} is missing"]
        ok, words = disks.check(Path(ref))
        problems = [] if ok else [f"fails qemu-img check: {words.splitlines()[-1] if words else ''}"]
        try:
            backing = disks.info(Path(ref)).get("backing-filename")
        except ProviderError as exc:
            return problems + [str(exc)]
        if parent_ref and backing != parent_ref:
            problems.append(f"is backed by {backing}, the database says {parent_ref}")
        return problems

    def stray_artifacts(self, known: set[str]) -> list[str]:
        out = []
        for d in (self.layout.layers, self.layout.memory):
            for f in d.iterdir():
                if str(f) not in known and not f.name.endswith(".restore"):
                    out.append(str(f))
        return out

    # -- lifecycle -----------------------------------------------------------------------
    def machine_xml(self, spec: MachineSpec) -> str:
        """The domain XML of ``spec`` (a subclass changes devices, e.g. the Vagrant provider's NIC)."""
        kind, _ = self.accelerator()
        return domain_xml(spec, "kvm" if kind == "kvm" else "qemu")

    def start_machine(self, spec: MachineSpec) -> None:
        self._own(spec.name)
        kind, _ = self.accelerator()
        try:
            dom = self.conn().defineXML(self.machine_xml(spec))
        except libvirt.libvirtError as exc:
            raise _map(exc, f"defining {spec.name}", self.uri) from exc
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            self._undefine(dom)
            raise _map(exc, f"booting {spec.name}", self.uri) from exc
        self._keep(spec.name, dom)
        log.debug("started %s (%s)", spec.name, kind)

    def _keep(self, name: str, dom: "libvirt.virDomain") -> None:
        with self._lock:
            if dom.connect() is self._conn:
                self._handles[name] = dom
                if len(self._handles) > _KEPT_HANDLES:    # a long-lived process (the service) pauses guests
                    del self._handles[next(iter(self._handles))]     # others destroy: forget the oldest

    def _forget(self, name: str, dom: "Optional[libvirt.virDomain]" = None) -> bool:
        """Drop the kept handle of ``name`` (only if it is ``dom``, when given); whether one was dropped."""
        with self._lock:
            if name in self._handles and (dom is None or self._handles[name] is dom):
                del self._handles[name]
                return True
            return False

    def _find(self, name: str) -> "Optional[libvirt.virDomain]":
        """Our domain ``name`` (the kept handle, else one lookup), or None when there is none."""
        self._own(name)
        conn = self.conn()
        with self._lock:
            dom = self._handles.get(name)
        if dom is not None:
            return dom
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _map(exc, f"looking up {name}", self.uri) from exc
        self._keep(name, dom)
        return dom

    def destroy_machine(self, name: str, _retry: bool = True) -> None:
        dom = self._find(name)
        if dom is None:
            return
        try:
            dom.destroy()         # no isActive() first: a domain that is not running answers OPERATION_INVALID
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_DOMAIN) and self._forget(name, dom) and _retry:
                return self.destroy_machine(name, _retry=False)    # a kept handle gone stale: look the name up
            if code not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                raise _map(exc, f"stopping {name}", self.uri) from exc
        self._undefine(dom)
        self._forget(name, dom)

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
        self._on_kept(name, f"pausing {name}", lambda dom: dom.suspend())

    def resume_machine(self, name: str) -> None:
        self._on_kept(name, f"resuming {name}", lambda dom: dom.resume())

    def _on_kept(self, name: str, doing: str, call: Any, retry: bool = True) -> Any:
        """``call(dom)`` on domain ``name`` through its kept handle (a rollback pauses its old guest:
        no lookup), looked up when there is none or the kept one went stale."""
        dom = self._find(name)
        if dom is None:
            raise NotFoundError(f"{doing}: no such domain")
        try:
            return call(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and self._forget(name, dom) and retry:
                return self._on_kept(name, doing, call, retry=False)
            raise _map(exc, doing, self.uri) from exc

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        period = 100_000
        quota = -1 if fraction is None else max(1000, int(period * fraction))
        try:
            self._domain(name).setSchedulerParametersFlags(
                {"vcpu_period": period, "vcpu_quota": quota}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise _map(exc, f"setting the CPU quota of {name}", self.uri) from exc

    # -- snapshots and memory states ------------------------------------------------------
    def plan_snapshot(self, active_ref: str, memory: bool) -> SnapshotPlan:
        """The active qcow2 file is frozen in place; a new overlay on it becomes the active one."""
        mem = self.layout.memory / f"M{uuid.uuid4().hex[:15]}.save" if memory else None
        return SnapshotPlan(frozen_ref=active_ref, active_ref=str(self._new_layer_path()),
                            memory_ref=str(mem) if mem else None)

    def snapshot_machine(self, name: str, plan: SnapshotPlan) -> None:
        dom = self._domain(name)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        if plan.reuse:      # made ahead (premake_layer): libvirt only opens it, ~6 ms less
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        memory = ""
        if plan.memory_ref is None:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        else:
            memory = f"<memory snapshot='external' file={quoteattr(plan.memory_ref)}/>"
            if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
        xml = (f"<domainsnapshot>{memory}<disks><disk name='vda' snapshot='external'><driver type='qcow2'/>"
               f"<source file={quoteattr(plan.active_ref)}/></disk></disks></domainsnapshot>")
        try:
            dom.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as exc:
            self.discard_snapshot(plan)
            raise _map(exc, f"snapshotting {name}", self.uri) from exc

    def snapshot_stopped(self, plan: SnapshotPlan) -> None:
        disks.create_overlay(Path(plan.active_ref), Path(plan.frozen_ref))

    def premake_layer(self, plan: SnapshotPlan) -> bool:
        self.snapshot_stopped(plan)      # the same overlay; libvirt relabels it for QEMU when it opens it
        return True

    def snapshot_completed(self, name: Optional[str], plan: SnapshotPlan) -> tuple[bool, Optional[str]]:
        if name is None:
            return False, None
        self._wait_for_jobs(name)
        if self.machine_disk(name) != plan.active_ref:
            return False, None
        mem = plan.memory_ref
        return True, mem if mem and savefile.is_complete(Path(mem)) else None

    def discard_snapshot(self, plan: SnapshotPlan) -> None:
        _unlink(plan.active_ref)
        _unlink(plan.memory_ref)

    def restore_machine(self, memory_ref: str, spec: MachineSpec) -> None:
        """Rewrite the domain XML inside the save image (new name, uuid, disk, port: see
        ``savefile``) and restore it; a compacted image is unpacked to a temporary file first."""
        self._own(spec.name)
        with self._plain_save_image(Path(memory_ref)) as image:
            try:
                saved = savefile.read_xml(image)
                savefile.write_xml(image, self.adapt_saved_xml(saved, spec))
                self.conn().restoreFlags(str(image), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
            except libvirt.libvirtError as exc:
                raise _map(exc, f"restoring {spec.name} from {image.name}", self.uri) from exc
            except OSError as exc:
                raise ProviderError(f"reading memory state {image}: {exc.strerror}") from exc
        try:     # a restored domain is transient: define it so stop/start and host restarts work
            dom = self.conn().defineXML(self.machine_xml(spec))
        except libvirt.libvirtError as exc:
            self.destroy_machine(spec.name)
            raise _map(exc, f"defining restored {spec.name}", self.uri) from exc
        self._keep(spec.name, dom)      # its retirement needs no lookup

    def adapt_saved_xml(self, saved_xml: str, spec: MachineSpec) -> str:
        """The XML a saved guest is restored under (``spec``'s identity, disk and port)."""
        return savefile.adapt_xml(saved_xml, spec)

    @contextmanager
    def _plain_save_image(self, path: Path) -> Iterator[Path]:
        if path.suffix != ".zst":
            yield path
            return
        import zstandard
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:6]}.restore")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
            yield tmp
        finally:
            _unlink(tmp)

    def after_restore(self, session: Any, spec: MachineSpec, clone: bool) -> None:
        """The guest's clock is at snapshot time: set it from the host; a clone also gets its own
        MAC and host name (its memory still has its origin's)."""
        cmd = f"date -s @{int(time.time())} >/dev/null"
        if clone:
            cmd += f"; ip link set dev eth0 address {spec.mac}; hostname {shlex.quote(spec.hostname)}"
        r = session.execute(cmd, timeout=15)
        if r.exit_code != 0:
            log.warning("post-restore fix-up of %s failed: %s", spec.name, r.stderr.strip())

    def delete_memory(self, memory_ref: str) -> None:
        _unlink(memory_ref)

    def compact_memory(self, memory_ref: str) -> str:
        import zstandard
        raw = Path(memory_ref)
        out = raw.with_suffix(".save.zst")
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(raw, "rb") as src, os.fdopen(fd, "wb") as dst:
                zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            _unlink(out)
            raise
        return str(out)

    def memory_size(self, memory_ref: str) -> int:
        try:
            return os.path.getsize(memory_ref)
        except OSError:
            return 0

    def machine_disk(self, name: str) -> Optional[str]:
        """The path of the guest's current disk (vda); None when there is no such domain."""
        self._own(name)
        try:
            xml = self.conn().lookupByName(name).XMLDesc()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _map(exc, f"reading {name}", self.uri) from exc
        m = re.search(r"<disk type='file' device='disk'>.*?<source file='([^']+)'", xml, re.S)
        return m.group(1) if m else None

    def _wait_for_jobs(self, name: str, timeout: float = 60) -> None:
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
            self._handles.clear()


def _unlink(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
