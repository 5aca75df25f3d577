"""Snapshot bookkeeping on the fakes (real qcow2 files through qemu-img, no VM): the layer tree,
delete shapes, clones, guest_sync, retention."""
import time

import pytest

from vmsandbox.exceptions import NotFoundError, RollbackError
from vmsandbox.testing import fake_core

from .conftest import NO_POLICY


def files(core):
    return sorted(p.name for p in (core.state_dir / "layers").iterdir()), \
        sorted(p.name for p in (core.state_dir / "memory").iterdir())


def test_snapshot_freezes_the_active_layer(core):
    sid = core.create_sandbox("a")
    before = core.get(sid).active_layer
    snap = core.create_snapshot(sid, "s1")
    info = core.get(sid)
    assert info.active_layer != before
    row = core.store.get_snapshot(snap)
    assert row.layer == before and core.store.get_layer(before).frozen
    assert core.store.get_layer(info.active_layer).parent == before
    assert core.tree.verify() == []


def test_guest_sync_before_disk_only_snapshot_is_configurable(tmp_path):
    on = fake_core(tmp_path / "on", NO_POLICY)
    sid = on.create_sandbox("s")
    on.create_snapshot(sid, "d", memory=False)
    assert on.fake_sessions[sid].commands == ["sync"]
    on.create_snapshot(sid, "m")                           # memory snapshots need no flush
    assert on.fake_sessions[sid].commands == ["sync"]
    off = fake_core(tmp_path / "off", {**NO_POLICY, "rollback": {"guest_sync": False}})
    sid = off.create_sandbox("s")
    off.create_snapshot(sid, "d", memory=False)
    assert sid not in off.fake_sessions or off.fake_sessions[sid].commands == []


def test_rollback_clone_delete_and_destroy_leave_nothing(core):
    sid = core.create_sandbox("a")
    s1 = core.create_snapshot(sid, "s1")
    s2 = core.create_snapshot(sid, "s2", memory=False)
    core.rollback(sid, s1)
    core.snapshots.wait_background()
    assert core.get(sid).generation == 1
    clone = core.create_sandbox("c", {"clone_from": s2})
    core.delete_snapshot(sid, s2)                         # the clone still stands on its layer
    assert core.tree.verify() == []
    core.destroy(sid)                                     # the clone keeps what it needs
    assert core.tree.verify() == []
    core.destroy(clone)
    core.snapshots.wait_background()
    assert files(core) == ([], []) and core.store.list_layers() == []


def test_rollback_to_another_sandboxs_snapshot_is_refused(core):
    a, b = core.create_sandbox("a"), core.create_sandbox("b")
    snap = core.create_snapshot(b, "theirs")
    with pytest.raises(RollbackError, match="belongs to sandbox 'b'") as e:
        core.rollback(a, snap)
    assert isinstance(e.value.__cause__, NotFoundError)
    with pytest.raises(NotFoundError, match="belongs to sandbox 'b'"):
        core.delete_snapshot(a, snap)
    assert core.get(a).state.value == "running"


def test_retention_removes_only_old_points(core):
    sid = core.create_sandbox("r")
    old = core.create_snapshot(sid, "old")
    core.create_snapshot(sid, "new")
    core.store.update_snapshot(old, created_at=time.time() - 10 * 86400)
    assert core.snapshots.cleanup_older_than(7) == [old]
    assert [s.name for s in core.list_snapshots(sid)] == ["new"]
    assert core.tree.verify() == []
