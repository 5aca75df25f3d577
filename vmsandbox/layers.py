"""The layer tree's rules: which layers may be deleted, in what order, and whether the records
agree with the provider's artifacts.

A sandbox writes only to its active layer; frozen layers never change and several layers, from
one sandbox or from many, may stand on one. A frozen layer is deleted only when no layer and no
snapshot stands on it. Deletion removes the record first (journaled in the same transaction),
then the artifact, one collector at a time; so a crash leaves at worst an artifact without a
record (``recover`` finishes it) and ``verify`` never sees a record whose file an operation in
flight is removing.
"""
from __future__ import annotations

import logging
from typing import Iterable

from .layout import Layout, fault_point
from .models import SandboxInfo, Snapshot
from .providers import Provider
from .spares import Spares
from .store import Store

log = logging.getLogger("vmsandbox.layers")

#: journal entries whose references are in flight (made or being removed)
COLLECT = "collect"


class LayerTree:
    def __init__(self, store: Store, provider: Provider, layout: Layout) -> None:
        self.store = store
        self.provider = provider
        self.layout = layout
        self.spares = Spares(store, provider, layout)

    def collect(self) -> list[str]:
        """Delete frozen layers nothing stands on, repeatedly (a parent may become free)."""
        freed: list[str] = []
        with self.layout.lock("layer-collector", "collect layers"):
            while True:
                op = self.layout.new_operation_id()
                with self.store.transaction(immediate=True):
                    batch = self.store.collectable_layers()
                    if not batch:
                        return freed
                    self.store.journal_begin(op, COLLECT, None, {"refs": [l.ref for l in batch]})
                    for layer in batch:
                        self.store.delete_layer(layer.id)
                for layer in batch:
                    self.provider.delete_layer(layer.ref)
                    freed.append(layer.id)
                self.store.journal_end(op)

    def drop_active(self, layer_id: str) -> None:
        """Remove an active layer no machine uses any more; keep it (frozen) if something stands on it."""
        layer = self.store.find_layer(layer_id)
        if layer is None:
            return
        users = self.store.layer_users(layer_id)
        if users["children"] or users["snapshots"]:
            self.store.freeze_layer(layer_id)
            return
        self._delete(layer_id, layer.ref)

    def _delete(self, layer_id: str, ref: str) -> None:
        op = self.layout.new_operation_id()
        with self.store.transaction(immediate=True):
            self.store.journal_begin(op, COLLECT, None, {"refs": [ref]})
            self.store.delete_layer(layer_id)
        self.provider.delete_layer(ref)
        self.store.journal_end(op)

    def delete_snapshot_record(self, snap: Snapshot) -> None:
        """Forget a snapshot: record first, memory state second, then free what it held."""
        op = self.layout.new_operation_id()
        with self.store.transaction(immediate=True):
            self.store.journal_begin(op, "delete_snapshot", snap.sandbox_id,
                                     {"snapshot": snap.id, "memory_ref": snap.memory_ref})
            self.store.delete_snapshot_record(snap.id)
        fault_point("delete:record")
        if snap.memory_ref:
            self.provider.delete_memory(snap.memory_ref)
        self.layout.remove_lock(f"snapshot-{snap.id}")
        self.collect()
        self.store.journal_end(op)

    def forget_sandbox(self, info: SandboxInfo) -> None:
        """At destroy: drop the sandbox's snapshots and active layer; keep layers clones stand on."""
        self.spares.discard(info.id)
        for snap in self.store.list_snapshots(info.id):
            self.delete_snapshot_record(snap)
        if info.active_layer:
            self.drop_active(info.active_layer)
        self.collect()

    def in_flight(self) -> set[str]:
        """Every reference an operation in flight names (made, switched to, or being removed)."""
        refs: set[str] = set()
        for j in self.store.journal_entries():
            refs |= set(_strings(j["data"].values()))
        return refs

    def known_refs(self) -> set[str]:
        return ({l.ref for l in self.store.list_layers()}
                | {s.memory_ref for s in self.store.list_snapshots() if s.memory_ref} | self.in_flight())

    def strays(self) -> list[str]:
        """Artifacts no record and no operation in flight refers to. Asked twice: an operation
        that journaled its artifact and made it between our reading of the references and the
        provider's listing looks stray once, never twice (background spare overlays do this)."""
        first = set(self.provider.stray_artifacts(self.known_refs()))
        return [ref for ref in self.provider.stray_artifacts(self.known_refs()) if ref in first]

    def verify(self) -> list[str]:
        """Problems between the tree in the database and the provider's artifacts (empty: consistent).
        Layers of operations in flight are not judged."""
        busy = self.in_flight()
        layers = {l.id: l for l in self.store.list_layers()}
        problems = []
        for l in layers.values():
            if l.ref in busy or l.id in busy:     # by id: a rollback's retirement removes its old active layer
                continue
            if l.parent and l.parent not in layers:
                problems.append(f"layer {l.id} stands on unknown layer {l.parent}")
            parent_ref = layers[l.parent].ref if l.parent in layers else None
            problems += [f"layer {l.id} {p}" for p in self.provider.check_layer(l.ref, parent_ref)]
        for s in self.store.list_snapshots():
            if s.layer not in layers:
                problems.append(f"snapshot {s.name} ({s.id}) points at missing layer {s.layer}")
            if s.memory_ref and s.memory_ref not in busy and not self.provider.memory_size(s.memory_ref):
                problems.append(f"snapshot {s.name} ({s.id}) lost its memory state {s.memory_ref}")
        problems += [f"{ref} has no record" for ref in self.strays()]
        return problems

    def recover_collect(self, entry: dict) -> str:
        for ref in entry["data"].get("refs", []):
            self.provider.delete_layer(ref)
        self.store.journal_end(entry["id"])
        return f"layer deletion of {len(entry['data'].get('refs', []))} layer(s): completed"

    def recover_delete_snapshot(self, entry: dict) -> str:
        d = entry["data"]
        if self.store.find_snapshot(d["snapshot"]) is None and d.get("memory_ref"):
            self.provider.delete_memory(d["memory_ref"])
        self.collect()
        self.store.journal_end(entry["id"])
        return f"delete of snapshot {d['snapshot']}: completed"


def _strings(values: Iterable) -> Iterable[str]:
    for v in values:
        if isinstance(v, str):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _strings(v)
        elif isinstance(v, dict):
            yield from _strings(v.values())
