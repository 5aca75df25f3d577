"""Spare overlays: the next disk-only snapshot's new active layer, made ahead of time.

A disk-only snapshot of a running guest switches it to a new overlay on its active layer.
Making that overlay inside the snapshot costs libvirt a qemu-img-like create on the hot path;
made ahead (in the background, right after the previous snapshot), the snapshot only opens it
(``SnapshotPlan.reuse``). A spare is valid only for the layer it stands on: once the sandbox
writes another layer (a rollback, a memory snapshot) it is stale and goes.

Bookkeeping is the journal's: an entry (operation ``spare``, no sandbox column so nothing
thinks the sandbox busy) names the file before it is made, so ``in_flight`` covers it (never a
stray for doctor or gc) and a crash leaves nothing unnamed. Step ``made``: ready to be claimed.
A snapshot claims it under the sandbox's lock by ending this entry in the same transaction that
journals the snapshot naming the file. Stale or half-made spares are removed when the next
snapshot looks, at rollback and destroy, and by ``recover`` whoever made them.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Optional

from .exceptions import SandboxError, StateError
from .layout import Layout
from .providers import Provider, SnapshotPlan
from .store import Store

log = logging.getLogger("vmsandbox.spares")

#: journal operation of a spare overlay
SPARE = "spare"
#: seconds the background worker waits for more work before it ends
IDLE = 10.0


@dataclasses.dataclass(frozen=True)
class Spare:
    entry: str              # its journal entry
    ref: str                # the overlay (provider reference)


class Spares:
    def __init__(self, store: Store, provider: Provider, layout: Layout) -> None:
        self.store = store
        self.provider = provider
        self.layout = layout
        # one worker, kept while there is work (a thread start costs ~1.5 ms on this host: not
        # on a snapshot's path); a daemon, so a process never waits for it at exit: a spare it
        # leaves half-made is removed by ``recover``
        self._queue: "queue.Queue[tuple[str, str, str]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def make_later(self, sandbox_id: str, layer_id: str, layer_ref: str) -> None:
        """``make`` in the background (``wait`` waits for it)."""
        with self._lock:
            self._queue.put((sandbox_id, layer_id, layer_ref))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="spare-overlays", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            try:
                self.make(*item)
            except Exception as exc:        # a spare is an optimisation: never an error for anyone
                log.error("making a spare overlay for %s failed: %s", item[0], exc)
            finally:
                self._queue.task_done()

    def wait(self, timeout: float = 60) -> None:
        """Wait (at most ``timeout`` seconds) until every spare asked for is made or dropped."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks and time.monotonic() < deadline:
                self._queue.all_tasks_done.wait(deadline - time.monotonic())

    def _entries(self, sandbox_id: Optional[str] = None) -> list[dict]:
        return [j for j in self.store.journal_entries()
                if j["operation"] == SPARE and (sandbox_id is None or j["data"]["sandbox"] == sandbox_id)]

    def make(self, sandbox_id: str, layer_id: str, layer_ref: str) -> bool:
        """Make a spare on ``layer_ref`` (the sandbox's active layer ``layer_id``); False when the
        provider cannot, or the sandbox moved on meanwhile (then nothing is left behind)."""
        plan = self.provider.plan_snapshot(layer_ref, False)
        entry = self.layout.new_operation_id()
        # only the spare's own reference: every string here is "in flight", and doctor does not
        # judge in-flight layers (the active layer it stands on must stay judged)
        self.store.journal_begin(entry, SPARE, None, {"sandbox": sandbox_id, "layer": layer_id, "ref": plan.active_ref})
        try:
            made = self.provider.premake_layer(plan)
        except SandboxError as exc:
            log.warning("could not make a spare overlay for %s: %s", sandbox_id, exc)
            made = False
        if made:
            try:      # under the sandbox's lock: a destroy or rollback cannot slip in between
                with self.layout.lock(sandbox_id, "keep a spare overlay", wait=10):
                    info = self.store.find_sandbox(sandbox_id)
                    if (info is not None and info.active_layer == layer_id
                            and any(j["id"] == entry for j in self._entries(sandbox_id))):
                        self.store.journal_step(entry, "made")
                        return True
            except StateError:
                pass
        self._drop(entry, plan)
        return False

    def take(self, sandbox_id: str, layer_id: str) -> Optional[Spare]:
        """The sandbox's made spare on ``layer_id``, if any (caller holds the sandbox's lock and
        ends ``entry`` when it journals the snapshot); stale spares of the sandbox are removed.
        One still being made is left to its maker (it checks under this lock once its file is
        there) or, if its maker died, to ``recover``: removing it here could race its creation."""
        found = None
        for j in self._entries(sandbox_id):
            if j["step"] != "made":
                continue
            if j["data"]["layer"] != layer_id:
                self._drop(j["id"], _plan(j))
            elif found is None:
                found = Spare(j["id"], j["data"]["ref"])
        return found

    def discard(self, sandbox_id: str, keep_layer: Optional[str] = None) -> int:
        """Remove the sandbox's made spares (but those on ``keep_layer``): at rollback and destroy
        (one being made is its maker's, see ``take``). Returns how many went."""
        gone = 0
        for j in self._entries(sandbox_id):
            if j["step"] == "made" and j["data"]["layer"] != keep_layer:
                self._drop(j["id"], _plan(j))
                gone += 1
        return gone

    def recover(self, entry: dict, owner_alive: bool) -> Optional[str]:
        """``recover()``'s part: remove a spare that is stale (its sandbox is gone or writes another
        layer) or was never finished by a process that died; keep a valid one."""
        if entry["step"] != "made":
            if owner_alive:               # its maker is still at it and checks for itself
                return None
        else:
            info = self.store.find_sandbox(entry["data"]["sandbox"])
            if info is not None and info.active_layer == entry["data"]["layer"]:
                return None
        self._drop(entry["id"], _plan(entry))
        return f"spare overlay {entry['data']['ref']}: removed"

    def _drop(self, entry: str, plan: SnapshotPlan) -> None:
        self.provider.discard_snapshot(plan)          # the file first: the entry names it until gone
        self.store.journal_end(entry)


def _plan(entry: dict) -> SnapshotPlan:
    """What ``discard_snapshot`` needs to remove a spare (its own reference)."""
    return SnapshotPlan("", entry["data"]["ref"], None)
