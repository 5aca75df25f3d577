"""Snapshots, rollback and clones on real guests: memory and disk restored, branches, clones
isolated both ways, delete in every tree shape, retention, the seed managers, bad input."""
import threading
import time

import pytest

from vmsandbox import RollbackManager, StateManager
from vmsandbox.exceptions import ConfigError, NotFoundError, RollbackError, StateError
from vmsandbox.models import SandboxState

from .conftest import assert_clean, virsh_domains

pytestmark = pytest.mark.timeout(900)


def read(core, sid, path):
    return core.execute(sid, f"cat {path} 2>/dev/null || echo MISSING").stdout.strip()


@pytest.fixture(scope="module")
def sb(core):
    sid = core.create_sandbox("snap-1")
    core.execute(sid, "mkdir -p /work")
    yield sid
    core.destroy(sid)


def test_memory_snapshot_restores_disk_memory_and_processes(env, core, sb):
    core.execute(sb, "echo disk-v1 > /work/f; echo ram-v1 > /tmp/r; sleep 10000 & echo $! > /tmp/pid; sync")
    before = core.get(sb)
    snap = core.create_snapshot(sb, "v1")
    assert core.get(sb).state is SandboxState.RUNNING            # the guest kept running
    assert read(core, sb, "/tmp/r") == "ram-v1"
    core.execute(sb, "echo disk-v2 > /work/f; echo ram-v2 > /tmp/r; kill $(cat /tmp/pid); sync")
    time.sleep(2)                                                # let the guest clock run ahead
    assert core.rollback(sb, snap) is True
    after = core.get(sb)
    assert after.state is SandboxState.RUNNING and after.domain != before.domain and after.ssh_port != before.ssh_port
    assert read(core, sb, "/work/f") == "disk-v1"
    assert read(core, sb, "/tmp/r") == "ram-v1"                  # tmpfs: memory came back
    assert core.execute(sb, "kill -0 $(cat /tmp/pid) && echo alive").stdout.strip() == "alive"
    guest_now = int(core.execute(sb, "date +%s").stdout)
    assert abs(guest_now - time.time()) < 5                      # clock set from the host
    assert_clean(env, core)                                      # the old guest was retired


def test_disk_only_snapshot_boots_on_that_disk(env, core, sb):
    core.execute(sb, "echo disk-d > /work/d; echo ram-d > /tmp/d")
    snap = core.create_snapshot(sb, "disk-only", memory=False)
    assert not [s for s in core.list_snapshots(sb) if s.id == snap][0].has_memory
    core.execute(sb, "rm /work/d")
    core.rollback(sb, "disk-only")                               # by name
    assert read(core, sb, "/work/d") == "disk-d"                 # synced before the snapshot
    assert read(core, sb, "/tmp/d") == "MISSING"                 # a fresh boot: tmpfs empty
    assert_clean(env, core)


def test_branches_stay_valid(env, core, sb):
    core.execute(sb, "echo a > /work/b")
    s1 = core.create_snapshot(sb, "b1")
    core.execute(sb, "echo b > /work/b")
    s2 = core.create_snapshot(sb, "b2")
    core.rollback(sb, s1)
    core.execute(sb, "echo c > /work/b")
    s3 = core.create_snapshot(sb, "b3")
    for snap, want in ((s2, "b"), (s3, "c"), (s1, "a"), (s2, "b")):
        core.rollback(sb, snap)
        assert read(core, sb, "/work/b") == want
    assert_clean(env, core)


def test_clone_is_isolated_both_ways(env, core, sb):
    core.execute(sb, "echo origin > /work/c; echo ram > /tmp/c")
    snap = core.create_snapshot(sb, "for-clone")
    clone = core.create_sandbox("clone-1", {"clone_from": snap})
    try:
        o, c = core.get(sb), core.get(clone)
        assert c.state is SandboxState.RUNNING
        assert (o.domain, o.ssh_port, o.mac) != (c.domain, c.ssh_port, c.mac)
        assert read(core, clone, "/work/c") == "origin" and read(core, clone, "/tmp/c") == "ram"
        assert c.mac in core.execute(clone, "cat /sys/class/net/eth0/address").stdout
        core.execute(clone, "echo clone > /work/c")
        core.execute(sb, "echo origin-2 > /work/c")
        assert read(core, clone, "/work/c") == "clone"
        assert read(core, sb, "/work/c") == "origin-2"
        clone2 = core.create_sandbox("clone-2", {"clone_from": "snap-1:for-clone"})
        assert read(core, clone2, "/work/c") == "origin"
        core.destroy(clone2)
    finally:
        core.destroy(clone)
    assert_clean(env, core)


def test_clone_outlives_its_origin(env, core):
    origin = core.create_sandbox("origin")
    core.execute(origin, "mkdir -p /work")
    core.execute(origin, "echo keep > /work/k")
    snap = core.create_snapshot(origin, "base", memory=False)
    clone = core.create_sandbox("orphan-clone", {"clone_from": snap})
    core.destroy(origin)
    assert read(core, clone, "/work/k") == "keep"                # its layers were kept for it
    assert core.tree.verify() == []
    core.destroy(clone)
    assert_clean(env, core)
    assert [l for l in core.store.list_layers() if l.owner in (origin, clone)] == []


def test_delete_in_every_tree_shape(env, core):
    sid = core.create_sandbox("tree")
    core.execute(sid, "mkdir -p /work")
    try:
        leaf = core.create_snapshot(sid, "t1", memory=False)
        mid = core.create_snapshot(sid, "t2")
        core.execute(sid, "echo 3 > /work/t")
        top = core.create_snapshot(sid, "t3", memory=False)
        n_layers = len(core.store.list_layers())
        core.delete_snapshot(sid, mid)                           # middle: its layer is kept (others stand on it)
        assert len(core.store.list_layers()) == n_layers
        core.rollback(sid, top)
        assert read(core, sid, "/work/t") == "3"
        core.rollback(sid, leaf)                                 # the branch below the deleted one still works
        core.delete_snapshot(sid, top)                           # a branch tip nothing stands on: freed
        assert len(core.store.list_layers()) < n_layers + 1
        assert [s.name for s in core.list_snapshots(sid)] == ["t1"]
        assert core.tree.verify() == []
    finally:
        core.destroy(sid)
    assert_clean(env, core)
    assert [l for l in core.store.list_layers() if l.owner == sid] == []


def test_retention_and_seed_managers(env, core):
    sid = core.create_sandbox("managers")
    core.execute(sid, "mkdir -p /work")
    try:
        states = StateManager(core=core)
        state_id = states.save_state(sid, {"filesystem": "clean", "processes": ["init"]})
        assert states.list_states(sid)[0].metadata["state"]["filesystem"] == "clean"
        rb = RollbackManager(states)
        events = []
        rb.add_callback(events.append)
        core.execute(sid, "echo before > /work/m")
        point = rb.create_rollback_point(sid, metadata={"reason": "Before installing untrusted package", "automatic": False})
        assert point.metadata["reason"].startswith("Before")
        core.execute(sid, "echo after > /work/m")
        assert rb.rollback(sid, point.id, {"preserve_logs": True, "notify": True}) is True
        assert read(core, sid, "/work/m") == "before"
        assert events and events[-1].ok and events[-1].snapshot_id == point.id
        assert len(list(core.layout.sandbox_dir(sid).glob("console-*.log"))) >= 2    # preserve_logs
        assert states.restore_state(sid, state_id)
        assert read(core, sid, "/work/m") == "MISSING"
        with pytest.raises(ConfigError, match="options.bogus"):
            rb.rollback(sid, point.id, {"bogus": 1})
        # age one point past the retention and clean up
        core.store.update_snapshot(point.id, created_at=time.time() - 8 * 86400)
        assert rb.cleanup_old_points(days=7) == 1
        assert [s.id for s in core.list_snapshots(sid)] == [state_id]
        assert core.tree.verify() == []
    finally:
        core.destroy(sid)
    assert_clean(env, core)


def test_compressed_memory_state(env):
    core = env.core(rollback={"compression": True})
    sid = core.create_sandbox("zst")
    core.execute(sid, "mkdir -p /work")
    try:
        core.execute(sid, "echo z > /tmp/z")
        snap = core.create_snapshot(sid, "z")
        core.snapshots.wait_background()
        path = core.store.get_snapshot(snap).memory_ref
        assert path.endswith(".zst")
        core.execute(sid, "rm /tmp/z")
        core.rollback(sid, snap)
        assert read(core, sid, "/tmp/z") == "z"
    finally:
        core.destroy(sid)
    assert_clean(env, core)


def test_auto_snapshot_before_medium_commands(env):
    core = env.core(rollback={"auto_snapshot": True})
    sid = core.create_sandbox("auto")
    core.execute(sid, "mkdir -p /work")
    try:
        first = len(core.list_snapshots(sid))                    # the mkdir (MEDIUM) took one
        core.execute(sid, "ls /")                                # LOW: no snapshot
        assert len(core.list_snapshots(sid)) == first
        core.execute(sid, "rm -rf /work/build")                  # MEDIUM: snapshot first
        snaps = core.list_snapshots(sid)
        assert len(snaps) == first + 1 and snaps[-1].metadata["automatic"] and not snaps[-1].has_memory
        assert "rm -rf /work/build" in snaps[-1].metadata["reason"]
    finally:
        core.destroy(sid)


def test_bad_input(env, core, sb):
    other = core.create_sandbox("other")
    core.execute(other, "mkdir -p /work")
    try:
        theirs = core.create_snapshot(other, "theirs", memory=False)
        with pytest.raises(RollbackError, match="belongs to sandbox 'other'"):
            core.rollback(sb, theirs)
        with pytest.raises(NotFoundError):
            core.rollback(sb, "no-such-snapshot")
        core.create_snapshot(sb, "dup", memory=False)
        with pytest.raises(ConfigError, match="already has a snapshot named 'dup'"):
            core.create_snapshot(sb, "dup")
        with pytest.raises(ConfigError, match="not a valid snapshot name"):
            core.create_snapshot(sb, "bad name!")
        with pytest.raises(NotFoundError):
            core.create_sandbox("c-bad", {"clone_from": "sn-000000000000"})
        # a snapshot in use by a rollback in progress cannot be deleted
        row = core.store.get_snapshot("dup", core.get(sb).id)
        held, release = threading.Event(), threading.Event()

        def hold():
            with core.snapshots.snapshot_lock(row.id, "start a guest from it"):
                held.set()
                release.wait(10)
        t = threading.Thread(target=hold)
        t.start()
        held.wait(5)
        with pytest.raises(StateError, match="start a guest from it .*is in progress"):
            core.delete_snapshot(sb, "dup")
        release.set()
        t.join()
        core.delete_snapshot(sb, "dup")
        assert "c-bad" not in [i.name for i in core.list_snapshots(sb)]
        assert virsh_domains(env.prefix + "c-bad") == []
    finally:
        core.destroy(other)
    assert_clean(env, core)


def test_failed_rollback_leaves_sandbox_usable(env, core, sb):
    snap = core.create_snapshot(sb, "will-break")
    core.execute(sb, "echo still-here > /work/u")
    row = core.store.get_snapshot(snap)
    with open(row.memory_ref, "r+b") as f:                   # corrupt the memory state
        f.write(b"garbage!")
    with pytest.raises(RollbackError, match="the sandbox is unchanged"):
        core.rollback(sb, snap)
    assert core.get(sb).state is SandboxState.RUNNING
    assert read(core, sb, "/work/u") == "still-here"
    core.delete_snapshot(sb, snap)
    assert_clean(env, core)


def test_restored_guest_is_a_persistent_domain(env, core, sb):
    """A guest resumed from memory must survive stop/start (and so a host restart)."""
    snap = core.create_snapshot(sb, "persist-check")
    core.execute(sb, "echo after-snap > /work/p; sync")
    core.rollback(sb, snap)
    core.execute(sb, "echo on-new-guest > /work/p; sync")
    core.stop(sb)
    assert core.get(sb).state is SandboxState.STOPPED
    core.start(sb)
    assert read(core, sb, "/work/p") == "on-new-guest"
    assert_clean(env, core)


def test_snapshot_of_stopped_sandbox_stays_frozen(env, core):
    sid = core.create_sandbox("cold-snap")
    try:
        core.execute(sid, "mkdir -p /work; echo original > /work/s; sync")
        core.stop(sid)
        snap = core.create_snapshot(sid, "while-off")            # disk only: the guest is off
        assert not core.list_snapshots(sid)[0].has_memory
        core.start(sid)                                          # must boot on the new active layer
        core.execute(sid, "echo changed > /work/s; sync")
        core.rollback(sid, snap)
        assert read(core, sid, "/work/s") == "original"
    finally:
        core.destroy(sid)
    assert_clean(env, core)
