"""Several providers behind one: the ``Provider`` the core's collaborators hold when sandboxes of
one state directory live on different machine layers (VMs on libvirt, containers on Docker).

Each call goes to the provider that owns what it names, with no per-provider code:
- a sandbox's own operation runs inside ``using(name)`` (set by the core from the sandbox's record),
  which also answers ``name``, ``capabilities`` and the calls that name nothing (``new_root_layer``);
- a reference (layer, memory state) of a provider whose references are not file paths starts with
  ``<provider name>:`` (the convention of ``providers/base.py``); any other reference is a file of
  the default provider (or of the operation's provider when that one uses files);
- a machine named outside ``using`` (the watchdog, background retirement, gc) belongs to the first
  provider in use that knows it, else to the default provider;
- an endpoint goes back to the provider that made it.
Providers load lazily through the registry; enumerations (``list_machines``, ``stray_artifacts``,
``checks``) cover the default provider and every provider the state directory uses.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Callable, Iterable, Iterator, Optional

from ..exceptions import SandboxError
from .base import DomainStats, Endpoint, MachineSpec, Provider, ProviderCheck, SnapshotPlan

_current: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("vmsandbox_provider", default=None)


def scheme(ref: str) -> Optional[str]:
    """The provider name a reference or box source starts with (``docker:...``), if any."""
    from . import PROVIDERS
    head, sep, _ = ref.partition(":")
    return head if sep and head in PROVIDERS else None


class ProviderRouter(Provider):
    """``default`` is the state directory's provider instance (``sandbox.provider``); ``in_use``
    names the other providers its records use (so gc and doctor see them after a restart)."""

    def __init__(self, default: Provider, config: Any, layout: Any,
                 in_use: Callable[[], Iterable[str]] = lambda: (), offered: Iterable[str] = ()) -> None:
        super().__init__(config, layout)
        self.default = default
        self.offered = [n for n in offered if n != default.name]    # doctor checks these too
        self.providers: dict[str, Provider] = {default.name: default}
        self._in_use = in_use
        self._lock = threading.Lock()
        self._endpoints: dict[Any, Provider] = {}

    # -- choosing ----------------------------------------------------------------------
    def get(self, name: str) -> Provider:
        """The provider registered as ``name``, loaded on first use."""
        with self._lock:
            if name not in self.providers:
                from . import load_provider
                self.providers[name] = load_provider(name, self.config, self.layout)
            return self.providers[name]

    @contextlib.contextmanager
    def using(self, name: Optional[str]) -> Iterator[Provider]:
        """Route the calls of this thread to provider ``name`` (None or "": the default)."""
        token = _current.set(name or None)
        try:
            yield self.current
        finally:
            _current.reset(token)

    @property
    def current(self) -> Provider:
        name = _current.get()
        return self.get(name) if name else self.default

    def active(self) -> list[Provider]:
        """The default provider, the loaded ones and those the state directory's records use."""
        names = list(self.providers)
        try:
            names += [n for n in self._in_use() if n and n not in names]
        except SandboxError:
            pass
        return [self.get(n) for n in names]

    def _each(self, call: Callable[[Provider], list]) -> list:
        """``call`` over the active providers; one merely loaded (no record uses it: doctor's
        check of a container runtime) may be unreachable without failing the whole answer."""
        needed = {self.default.name} | set(self._in_use())
        out: list = []
        for p in self.active():
            try:
                out += call(p)
            except SandboxError:
                if p.name in needed:
                    raise
        return out

    def for_ref(self, ref: str) -> Provider:
        name = scheme(ref)
        if name:
            return self.get(name)
        for p in (self.current, self.default, *self.active()):     # a file: the first provider using files
            if not p.ref_scheme:
                return p
        return self.default

    def for_machine(self, name: str) -> Provider:
        if _current.get():
            return self.current
        others = [p for p in self.active() if p is not self.default]
        for p in others:
            try:
                if p.machine_state(name) is not None:
                    return p
            except SandboxError:
                continue
        return self.default

    # -- identity ------------------------------------------------------------------------
    @property                               # type: ignore[override]
    def name(self) -> str:
        return self.current.name

    @property                               # type: ignore[override]
    def capabilities(self) -> frozenset:
        return self.current.capabilities

    def require_capability(self, capability: str, doing: str) -> None:
        self.current.require_capability(capability, doing)

    def accelerator(self) -> tuple[str, str]:
        return self.current.accelerator()

    def box(self, source: str) -> Any:
        name = scheme(source)
        return (self.get(name) if name else self.current).box(source)

    # -- layers --------------------------------------------------------------------------
    def new_root_layer(self, box: Any, size_bytes: int) -> str:
        return self.current.new_root_layer(box, size_bytes)

    def new_layer(self, parent_ref: str, size_bytes: Optional[int] = None) -> str:
        return self.for_ref(parent_ref).new_layer(parent_ref, size_bytes)

    def delete_layer(self, ref: str) -> None:
        self.for_ref(ref).delete_layer(ref)

    def check_layer(self, ref: str, parent_ref: Optional[str]) -> list[str]:
        return self.for_ref(ref).check_layer(ref, parent_ref)

    def stray_artifacts(self, known: set[str]) -> list[str]:
        return self._each(lambda p: p.stray_artifacts(known))

    def remove_artifact(self, ref: str) -> None:
        self.for_ref(ref).remove_artifact(ref)

    # -- machines ------------------------------------------------------------------------
    def start_machine(self, spec: MachineSpec) -> None:
        self.for_ref(spec.layer).start_machine(spec)

    def destroy_machine(self, name: str) -> None:
        self.for_machine(name).destroy_machine(name)

    def shutdown_machine(self, name: str, timeout: float) -> None:
        self.for_machine(name).shutdown_machine(name, timeout)

    def kill_machine(self, name: str) -> None:
        self.for_machine(name).kill_machine(name)

    def pause_machine(self, name: str) -> None:
        self.for_machine(name).pause_machine(name)

    def resume_machine(self, name: str) -> None:
        self.for_machine(name).resume_machine(name)

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        self.for_machine(name).set_cpu_quota(name, fraction)

    def machine_state(self, name: str) -> Optional[str]:
        return self.for_machine(name).machine_state(name)

    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        return sorted(set(self._each(lambda p: p.list_machines(prefix, owner))))

    def machine_stats(self, name: str) -> DomainStats:
        return self.for_machine(name).machine_stats(name)

    def machines_stats(self, names: list[str]) -> dict[str, "DomainStats | SandboxError"]:
        """One batch per provider; with a single provider in use, one call as before."""
        if _current.get() or len(self.active()) == 1:
            return self.current.machines_stats(names)
        groups: dict[int, tuple[Provider, list[str]]] = {}
        for n in names:
            p = self.for_machine(n)
            groups.setdefault(id(p), (p, []))[1].append(n)
        out: dict[str, DomainStats | SandboxError] = {}
        for p, group in groups.values():
            out.update(p.machines_stats(group))
        return out

    def checks(self) -> list[ProviderCheck]:
        """Every provider in use, and those offered per sandbox (a container runtime) even unused."""
        out = [c for p in self.active() for c in p.checks()]
        for name in self.offered:
            if name in self.providers:
                continue
            try:
                out += self.get(name).checks()
            except (ImportError, SandboxError) as exc:
                out.append(ProviderCheck(name, False, f"the {name} provider cannot load: {exc}",
                                         "pip install -e . (its Python dependency)"))
        return out

    # -- snapshots and memory ------------------------------------------------------------
    def plan_snapshot(self, active_ref: str, memory: bool) -> SnapshotPlan:
        return self.for_ref(active_ref).plan_snapshot(active_ref, memory)

    def snapshot_machine(self, name: str, plan: SnapshotPlan) -> None:
        self.for_ref(plan.active_ref).snapshot_machine(name, plan)

    def snapshot_stopped(self, plan: SnapshotPlan) -> None:
        self.for_ref(plan.active_ref).snapshot_stopped(plan)

    def premake_layer(self, plan: SnapshotPlan) -> bool:
        return self.for_ref(plan.frozen_ref).premake_layer(plan)

    def snapshot_completed(self, name: Optional[str], plan: SnapshotPlan) -> tuple[bool, Optional[str]]:
        return self.for_ref(plan.active_ref).snapshot_completed(name, plan)

    def discard_snapshot(self, plan: SnapshotPlan) -> None:
        self.for_ref(plan.active_ref).discard_snapshot(plan)

    def restore_machine(self, memory_ref: str, spec: MachineSpec) -> None:
        self.for_ref(spec.layer).restore_machine(memory_ref, spec)

    def after_restore(self, session: Any, spec: MachineSpec, clone: bool) -> None:
        self.for_ref(spec.layer).after_restore(session, spec, clone)

    def delete_memory(self, memory_ref: str) -> None:
        self.for_ref(memory_ref).delete_memory(memory_ref)

    def compact_memory(self, memory_ref: str) -> str:
        return self.for_ref(memory_ref).compact_memory(memory_ref)

    def memory_size(self, memory_ref: str) -> int:
        return self.for_ref(memory_ref).memory_size(memory_ref)

    # -- endpoints -----------------------------------------------------------------------
    def endpoint(self, info: Any, box: Any) -> Endpoint:
        p = self.get(info.provider) if getattr(info, "provider", "") else self.current
        ep = p.endpoint(info, box)
        with self._lock:
            self._endpoints[ep] = p
        return ep

    def open_session(self, endpoint: Endpoint, on_new_host_key: Any = None) -> Any:
        with self._lock:
            p = self._endpoints.get(endpoint, self.default)
        return p.open_session(endpoint, on_new_host_key=on_new_host_key)

    def close(self) -> None:
        for p in list(self.providers.values()):
            p.close()


class BoxSources:
    """What sandboxes are made from: stored boxes by name, and ``<provider>:<source>`` (a
    container image) through that provider's ``box()``. Everything else is the box store's."""

    def __init__(self, boxes: Callable[[], Any], router: ProviderRouter) -> None:
        self._boxes = boxes
        self._router = router

    def get(self, name: str) -> Any:
        if scheme(name):
            return self._router.box(name)
        return self._boxes().get(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._boxes(), attr)
