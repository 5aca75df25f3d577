"""Retention rules by count and size (``rollback.max_snapshots``, ``rollback.max_memory_bytes``)
and the rotation of a sandbox's console logs (``sandbox.console_logs_keep``).

Owns the choice only: which snapshot goes next and why, which console logs are old. The
deletion itself is the layer tree's safe one (``SnapshotManager.enforce_retention`` calls it
under the snapshot's lock). Rules: oldest first; a pinned snapshot, the one just made and one
a caller skips (its lock was busy) are never chosen, but they still count towards the caps.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Collection, Optional

from .models import Snapshot

_CONSOLE_RE = re.compile(r"console-(\d+)\.log")


def next_victim(snaps: list[Snapshot], keep: Collection[str], max_count: int, max_memory: int,
                memory_size: Callable[[str], int]) -> Optional[tuple[Snapshot, str]]:
    """The oldest snapshot of one sandbox's ``snaps`` whose removal brings it towards a cap it is
    over, with the reason; None when it is within both caps (0: no cap) or nothing may go.
    ``keep``: ids never chosen (the snapshot just made, ones whose lock was busy)."""
    sizes = {s.id: memory_size(s.memory_ref) if s.memory_ref else 0 for s in snaps}
    over_count = bool(max_count) and len(snaps) > max_count
    over_memory = bool(max_memory) and sum(sizes.values()) > max_memory
    if not (over_count or over_memory):
        return None
    for s in sorted(snaps, key=lambda s: s.created_at):
        if s.pinned or s.id in keep:
            continue
        if over_count:
            return s, f"more than rollback.max_snapshots={max_count} snapshots"
        if sizes[s.id]:                  # a disk-only snapshot frees no memory state
            return s, f"memory states above rollback.max_memory_bytes={max_memory}"
    return None


def old_console_logs(sandbox_dir: Path, current: Path, keep: int) -> list[Path]:
    """Console logs of ``sandbox_dir`` beyond the newest ``keep`` generations (``current``, the
    running guest's log, is always kept)."""
    logs = []
    for p in sandbox_dir.glob("console-*.log"):
        m = _CONSOLE_RE.fullmatch(p.name)
        if m:
            logs.append((int(m.group(1)), p))
    logs.sort(reverse=True)
    return [p for _, p in logs[max(keep, 1):] if p != current]


def rotate_console_logs(sandbox_dir: Path, current: Path, keep: int) -> list[Path]:
    """Delete the old console logs (``old_console_logs``); returns what it deleted."""
    gone = old_console_logs(sandbox_dir, current, keep)
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
