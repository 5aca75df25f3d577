"""Upkeep of a state directory: crash recovery of journaled operations, garbage collection
(expired sandboxes, orphaned machines, stray artifacts, old snapshots), the host checks of
``doctor``, and the rule that a box sandboxes stand on is never removed."""
from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Callable

from .perms import summary as permission_summary
from .config import Config
from .exceptions import SandboxError, StateError
from .layers import COLLECT, LayerTree
from .layout import Layout
from .lifecycle import Lifecycle
from .models import SandboxState
from .providers import Provider, ProviderCheck
from .snapshots import SnapshotManager, owner_alive
from .spares import SPARE
from .store import Store

log = logging.getLogger("vmsandbox.maintenance")


class Maintenance:
    standbys = None          # the StandbyManager (standby.py), set by the core

    def __init__(self, config: Config, store: Store, layout: Layout, provider: Provider, tree: LayerTree,
                 lifecycle: Lifecycle, snapshots: SnapshotManager, boxes: Callable[[], Any]) -> None:
        self.config = config
        self.store = store
        self.layout = layout
        self.provider = provider
        self.tree = tree
        self.lifecycle = lifecycle
        self.snapshots = snapshots
        self._boxes = boxes

    # -- crash recovery ------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Finish or undo every journaled operation whose process is gone (never one that runs)."""
        if not self.store.journal_entries():
            return []
        done = []
        with self.layout.lock("recover", "recover"):
            for entry in self.store.journal_entries():
                if entry["operation"] == SPARE:          # owned by its sandbox, not by a process
                    line = self.tree.spares.recover(entry, owner_alive(entry["pid"]))
                    done += [line] if line else []
                    continue
                if owner_alive(entry["pid"]):
                    continue
                try:
                    done.append(self._recover_entry(entry))
                except SandboxError as exc:
                    log.error("recovering %s %s failed: %s", entry["operation"], entry["id"], exc)
        for line in done:
            log.warning("recovered: %s", line)
        if done:
            self.store.audit("recover", "ok", actions=done)
        return done

    def _recover_entry(self, entry: dict) -> str:
        op = entry["operation"]
        if op == "create":
            return self.lifecycle.recover_create(entry)
        if op == "destroy":
            return self.lifecycle.recover_destroy(entry)
        if op == COLLECT:
            return self.tree.recover_collect(entry)
        if op == "delete_snapshot":
            return self.tree.recover_delete_snapshot(entry)
        if op in ("snapshot", "rollback", "clone"):
            return self.snapshots.recover_entry(entry)
        if op.startswith("standby") and self.standbys is not None:
            return self.standbys.recover_entry(entry)
        self.store.journal_end(entry["id"])
        return f"unknown operation {op}: dropped"

    # -- garbage collection --------------------------------------------------------------
    def gc(self, dry_run: bool = False) -> list[str]:
        """Destroy idle non-persistent sandboxes past their ttl, recover what crashed processes
        left, and remove orphans (machines or directories with no record, stray artifacts)."""
        done: list[str] = []
        if not dry_run:
            done += [f"recovered: {line}" for line in self.recover()]
        now = time.time()
        busy = {j["sandbox_id"] for j in self.store.journal_entries()}
        for info in self.store.list_sandboxes():
            idle = now - info.last_used_at
            # after recover(), a creating/destroying record no live operation journals is stuck
            stuck = info.state in (SandboxState.CREATING, SandboxState.DESTROYING) and info.id not in busy
            if stuck or (not info.persistent and idle > info.ttl_seconds):
                done.append(f"sandbox {info.name} ({'stuck ' + info.state.value if stuck else f'idle {idle:.0f} s'})")
                if not dry_run:
                    try:
                        self.lifecycle.destroy(info.id)
                    except StateError as exc:     # an operation holds it: next time
                        done[-1] += f": skipped, {exc}"
        if self.standbys is not None:
            done += self.standbys.gc(dry_run)
        known_domains = {i.domain for i in self.store.list_sandboxes()} | self.snapshots.retiring_domains()
        known_domains |= self.standbys.domains() if self.standbys is not None else set()
        for dom in self.provider.list_machines(self.config.sandbox.domain_prefix, owner=str(self.layout.state_dir)):
            if dom not in known_domains:
                done.append(f"machine {dom} (no record)")
                if not dry_run:
                    self.provider.destroy_machine(dom)
        for ref in self.tree.strays():
            done.append(f"file {ref} (no record)")
            if not dry_run:
                self.provider.remove_artifact(ref)
        if not dry_run:
            removed = self.snapshots.cleanup_older_than(self.config.rollback.retention_days)
            done.extend(f"snapshot {s} (past rollback.retention_days)" for s in removed)
            for info in self.store.list_sandboxes():       # caps lowered since the last snapshot
                removed = self.snapshots.enforce_retention(info.id)
                done.extend(f"snapshot {s} (over rollback.max_snapshots/max_memory_bytes)" for s in removed)
        known_ids = {i.id for i in self.store.list_sandboxes()}
        for d in sorted(self.layout.sandboxes.iterdir()):
            if d.name not in known_ids:
                done.append(f"directory {d} (no record)")
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True)
        self.store.audit("gc", "dry-run" if dry_run else "ok", removed=done)
        return done

    # -- boxes ---------------------------------------------------------------------------
    def box_users(self, box: str) -> list[str]:
        """Sandboxes whose disks stand on ``box`` (directly or through kept layers)."""
        owners = {l.owner for l in self.store.list_layers() if l.box == box}
        return sorted(i.name for i in self.store.list_sandboxes() if i.box == box or i.id in owners) or \
            sorted(owners)

    def require_box_unused(self, box: str) -> None:
        """Raise StateError when replacing or removing ``box`` would break sandbox disks."""
        users = self.box_users(box)
        if users:
            raise StateError(f"box {box!r} is in use by {', '.join(users)}; destroy them first")

    # -- diagnostics ---------------------------------------------------------------------
    def doctor(self) -> list[ProviderCheck]:
        checks = list(self.provider.checks())
        try:
            boxes = self._boxes().list()
            checks.append(ProviderCheck("boxes", bool(boxes), ", ".join(b.name for b in boxes) or "no boxes",
                                        "" if boxes else "vmsandbox box build tiny"))
        except SandboxError as exc:
            checks.append(ProviderCheck("boxes", False, str(exc), "vmsandbox box build tiny"))
        state_dir = self.layout.state_dir
        free = shutil.disk_usage(state_dir).free
        checks.append(ProviderCheck("disk space", free > 2 << 30, f"{free / (1 << 30):.1f} GiB free in {state_dir}",
                                    "" if free > 2 << 30 else "free some disk space"))
        checks.append(ProviderCheck("state directory", os.access(state_dir, os.W_OK), str(state_dir)))
        checks.append(ProviderCheck("state permissions", *permission_summary(state_dir, self.config.sandbox.box_path)))
        if self.standbys is not None:
            checks.append(self.standbys.check())
        problems = self.tree.verify()
        checks.append(ProviderCheck("layer tree", not problems,
                                    "; ".join(problems) or f"{len(self.store.list_layers())} layers consistent",
                                    "" if not problems else "see docs/snapshots.md (recovery)"))
        return checks
