"""Disk-only snapshots on a real guest through a spare overlay made ahead (REUSE_EXT), with the
guest's writes flushed; retention by count and pins; console logs rotated across rollbacks."""
import pytest

from .conftest import assert_clean

pytestmark = pytest.mark.timeout(900)


def read(core, sid, path):
    return core.execute(sid, f"cat {path} 2>/dev/null || echo MISSING").stdout.strip()


def snapshot_audit(core, name):
    return [a for a in core.audit_log(name) if a["operation"] == "snapshot"][-1]["detail"]


@pytest.fixture(scope="module")
def rcore(env):
    return env.core(rollback={"max_snapshots": 3}, sandbox={"console_logs_keep": 2})


def test_flushed_snapshot_on_a_spare_overlay_keeps_the_last_write(env, rcore):
    sid = rcore.create_sandbox("spare-1")
    rcore.execute(sid, "mkdir -p /work; echo first > /work/f")
    rcore.create_snapshot(sid, "s1", memory=False)
    assert snapshot_audit(rcore, "spare-1")["reused"] is False          # no spare yet
    rcore.snapshots.wait_background()                                  # the spare is made
    assert_clean(env, rcore)
    rcore.execute(sid, "echo just-before > /work/f")                   # no sync: in the page cache
    rcore.create_snapshot(sid, "s2", memory=False)
    detail = snapshot_audit(rcore, "spare-1")
    assert detail["reused"] is True and detail["flush_ms"] > 0
    rcore.execute(sid, "rm /work/f; sync")
    rcore.rollback(sid, "s2")
    assert read(rcore, sid, "/work/f") == "just-before"                # flushed before the switch
    assert_clean(env, rcore)
    rcore.rollback(sid, "s1")
    assert read(rcore, sid, "/work/f") == "first"
    logs = sorted(p.name for p in rcore.layout.sandbox_dir(sid).glob("console-*.log"))
    assert logs == ["console-1.log", "console-2.log"]                  # console_logs_keep: 2
    assert rcore.console_log(rcore.get(sid)).name == "console-2.log"
    rcore.snapshots.wait_background()                                  # a spare for the new layer
    rcore.execute(sid, "echo after-rollback > /work/f")
    rcore.create_snapshot(sid, "s3", memory=False)
    assert snapshot_audit(rcore, "spare-1")["reused"] is True
    assert_clean(env, rcore)
    rcore.destroy(sid)
    assert_clean(env, rcore)


def test_retention_by_count_keeps_the_pinned_and_the_newest(env, rcore):
    sid = rcore.create_sandbox("keep-3")
    rcore.create_snapshot(sid, "base", memory=False)
    rcore.pin_snapshot(sid, "base")
    for n in range(1, 5):
        rcore.execute(sid, f"echo {n} > /root/n")
        rcore.create_snapshot(sid, f"n{n}", memory=False)
    assert [s.name for s in rcore.list_snapshots(sid)] == ["base", "n3", "n4"]
    removed = [a["detail"] for a in rcore.audit_log("keep-3") if a["operation"] == "delete_snapshot"]
    assert [d["name"] for d in removed] == ["n1", "n2"] and all("max_snapshots=3" in d["reason"] for d in removed)
    assert_clean(env, rcore)
    rcore.rollback(sid, "n3")                                          # what is left still works
    assert read(rcore, sid, "/root/n") == "3"
    rcore.destroy(sid)
    assert_clean(env, rcore)
