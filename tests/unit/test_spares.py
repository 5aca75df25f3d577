"""Spare overlays made ahead for the next disk-only snapshot (on the fakes): made after a
disk-only snapshot, claimed by the next one, never a stray, removed when stale, at rollback,
destroy and by recover."""
from pathlib import Path

from vmsandbox.spares import SPARE
from vmsandbox.testing import fake_core

from .conftest import NO_POLICY


def spares(core):
    return [j for j in core.store.journal_entries() if j["operation"] == SPARE]


def layer_files(core):
    return sorted(p.name for p in (core.state_dir / "layers").iterdir())


def last_snapshot_audit(core, name):
    return [a for a in core.audit_log(name) if a["operation"] == "snapshot"][-1]["detail"]


def test_a_spare_is_made_after_a_disk_only_snapshot_and_claimed_by_the_next(core):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "s1", memory=False)
    assert last_snapshot_audit(core, "a")["reused"] is False
    core.snapshots.wait_background()
    [spare] = spares(core)
    assert spare["step"] == "made" and spare["data"]["layer"] == core.get(sid).active_layer
    assert Path(spare["data"]["ref"]).exists()
    assert core.tree.strays() == [] and core.tree.verify() == []          # doctor and gc leave it alone
    assert core.gc(dry_run=True) == []
    core.create_snapshot(sid, "s2", memory=False)
    assert last_snapshot_audit(core, "a")["reused"] is True
    assert core.store.get_layer(core.get(sid).active_layer).ref == spare["data"]["ref"]
    core.snapshots.wait_background()
    assert [j["data"]["layer"] for j in spares(core)] == [core.get(sid).active_layer]
    assert core.tree.verify() == []


def test_memory_snapshots_and_stopped_sandboxes_make_no_spare(core):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "m")
    core.stop(sid)
    core.create_snapshot(sid, "d", memory=False)
    core.snapshots.wait_background()
    assert spares(core) == []


def test_a_stale_spare_goes_at_the_next_snapshot_rollback_and_destroy(core):
    sid = core.create_sandbox("a")
    s1 = core.create_snapshot(sid, "s1", memory=False)
    core.snapshots.wait_background()
    stale = spares(core)[0]["data"]["ref"]
    core.create_snapshot(sid, "m", memory=True)         # writes another layer: the spare is stale
    assert last_snapshot_audit(core, "a")["reused"] is False
    assert not Path(stale).exists() and spares(core) == []
    core.create_snapshot(sid, "s2", memory=False)
    core.snapshots.wait_background()
    assert len(spares(core)) == 1
    core.rollback(sid, s1)
    core.snapshots.wait_background()
    # the stale spare went; the sandbox takes disk-only snapshots, so one for its new layer came
    assert [j["data"]["layer"] for j in spares(core)] == [core.get(sid).active_layer]
    assert core.tree.verify() == []
    core.create_snapshot(sid, "s3", memory=False)
    assert last_snapshot_audit(core, "a")["reused"] is True
    core.snapshots.wait_background()
    assert len(spares(core)) == 1
    core.destroy(sid)
    core.snapshots.wait_background()
    assert spares(core) == [] and layer_files(core) == []


def test_recover_keeps_a_valid_spare_and_removes_a_stale_one(tmp_path):
    core = fake_core(tmp_path, NO_POLICY)
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "s1", memory=False)
    core.snapshots.wait_background()
    [spare] = spares(core)
    core.close()
    again = fake_core(tmp_path, NO_POLICY, machines=core.provider.domains)   # a new process: recover()
    assert spares(again) == [spare] and Path(spare["data"]["ref"]).exists()
    again.store.update_sandbox(sid, active_layer="Lelsewhere")             # as if a crash changed layers
    assert again.maintenance.recover() == [f"spare overlay {spare['data']['ref']}: removed"]
    assert spares(again) == [] and not Path(spare["data"]["ref"]).exists()
    again.close()


def test_a_half_made_spare_of_a_dead_process_is_removed(core):
    sid = core.create_sandbox("a")
    info = core.get(sid)
    ref = str(core.state_dir / "layers" / "Lhalf.fake")
    core.store.journal_begin("op-half", SPARE, None, {"sandbox": sid, "layer": info.active_layer, "ref": ref})
    core.store._db().execute("UPDATE journal SET pid=999999999 WHERE id='op-half'")
    Path(ref).write_text("partial")
    assert core.tree.strays() == []                    # named by the journal before it was made
    assert core.maintenance.recover() == [f"spare overlay {ref}: removed"]
    assert not Path(ref).exists() and spares(core) == []


def test_a_failed_snapshot_with_a_claimed_spare_leaves_nothing(core):
    from vmsandbox.exceptions import ProviderError
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "s1", memory=False)
    core.snapshots.wait_background()
    [spare] = spares(core)
    core.provider.fail_on["snapshot_machine"] = ProviderError("boom")
    try:
        core.create_snapshot(sid, "s2", memory=False)
    except Exception:
        pass
    core.provider.fail_on.clear()
    assert not Path(spare["data"]["ref"]).exists() and spares(core) == []
    assert core.store.journal_entries() == [] and core.tree.verify() == []
