"""Warm standbys on the fakes (no VM): records, the swap, pools, caps, errors, gc and crash
recovery of each journaled step."""
import pytest

from vmsandbox.exceptions import ConfigError, SandboxError
from vmsandbox.models import SandboxState
from vmsandbox.testing import fake_core

from .conftest import NO_POLICY


def files(core):
    return sorted(p.name for p in (core.state_dir / "layers").iterdir()), \
        sorted(p.name for p in (core.state_dir / "memory").iterdir())


def settle(core):
    core.snapshots.wait_background()


def machines(core):
    return {n: d["state"] for n, d in core.provider.domains.items()}


def test_standby_is_a_paused_guest_on_its_own_layer_port_and_identity(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1", standby=True)
    settle(core)
    [stb] = core.store.list_standbys()
    info = core.get(sid)
    assert stb.state == "ready" and stb.kind == "rollback" and stb.snapshot_id == snap
    assert machines(core)[stb.domain] == "paused" and stb.domain != info.domain
    assert stb.ssh_port != info.ssh_port and stb.uuid != info.uuid and stb.mac == info.mac
    layer = core.store.get_layer(stb.layer)
    assert layer.parent == core.store.get_snapshot(snap).layer and not layer.frozen
    assert core.tree.verify() == []
    assert core.standbys.summary() == {sid: "standbys: 1 rollback"}
    assert [c.name for c in core.doctor() if c.name == "standbys" and c.ok] == ["standbys"]


def test_rollback_with_a_standby_swaps_and_makes_a_fresh_one(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1", standby=True)
    settle(core)
    [stb] = core.store.list_standbys()
    old = core.get(sid)
    restores = sum(c[0] == "restore_machine" for c in core.provider.calls)
    core.rollback(sid, snap)
    settle(core)
    info = core.get(sid)
    assert (info.domain, info.ssh_port, info.uuid, info.active_layer) == (stb.domain, stb.ssh_port, stb.uuid, stb.layer)
    assert info.state is SandboxState.RUNNING and info.generation == old.generation + 1
    assert machines(core)[info.domain] == "running" and old.domain not in machines(core)
    assert core.store.find_layer(old.active_layer) is None                 # retired
    assert core.fake_sessions[sid].commands[-1] == "fix-up"                # the clock
    [fresh] = core.store.list_standbys()
    assert fresh.id != stb.id and fresh.state == "ready" and machines(core)[fresh.domain] == "paused"
    assert sum(c[0] == "restore_machine" for c in core.provider.calls) == restores + 1   # only the refill
    assert core.store.journal_entries() == [] and core.tree.verify() == []
    rollback = [a for a in core.audit_log("a") if a["operation"] == "rollback"][-1]
    assert rollback["outcome"] == "ok" and rollback["detail"]["standby"] == stb.id


def test_rollback_without_a_standby_restores_as_before(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1")
    settle(core)
    assert core.store.list_standbys() == []
    core.rollback(sid, snap)
    settle(core)
    assert core.get(sid).state is SandboxState.RUNNING and core.store.list_standbys() == []


def test_a_standby_that_cannot_resume_falls_back_to_a_restore(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1", standby=True)
    settle(core)
    [stb] = core.store.list_standbys()
    core.provider.fail_on["resume_machine"] = SandboxError("resume refused")
    core.rollback(sid, snap)
    core.provider.fail_on.clear()
    settle(core)
    assert core.get(sid).state is SandboxState.RUNNING and core.get(sid).domain != stb.domain
    assert stb.domain not in machines(core) and core.store.journal_entries() == []
    assert core.tree.verify() == []


def test_latest_keeps_one_standby_for_the_newest_memory_snapshot(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"standby": "latest"}})
    sid = core.create_sandbox("a")
    s1 = core.create_snapshot(sid, "s1")
    settle(core)
    assert [s.snapshot_id for s in core.store.list_standbys()] == [s1]
    core.create_snapshot(sid, "d", memory=False)          # no memory: nothing changes
    s2 = core.create_snapshot(sid, "s2")
    settle(core)
    assert [s.snapshot_id for s in core.store.list_standbys()] == [s2]
    core.create_snapshot(sid, "none", standby=False)
    settle(core)
    assert [s.snapshot_id for s in core.store.list_standbys()] == [s2]
    core.destroy(sid)
    settle(core)
    assert core.store.list_standbys() == [] and core.provider.domains == {}
    assert files(core) == ([], [])
    core.close()


def test_pool_clone_takes_a_standby_and_refills(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "base")
    assert core.set_pool("a:base", 2) == {"snapshot": snap, "name": "a:base", "size": 2}
    settle(core)
    ready = core.store.list_standbys(kind="pool")
    assert len(ready) == 2 and all(machines(core)[s.domain] == "paused" for s in ready)
    starts = sum(c[0] in ("restore_machine", "start_machine") for c in core.provider.calls)
    cid = core.create_sandbox("c1", {"clone_from": "a:base"})
    clone = core.get(cid)
    assert clone.domain in {s.domain for s in ready} and clone.state is SandboxState.RUNNING
    assert machines(core)[clone.domain] == "running" and clone.cloned_from == snap
    taken = next(s for s in ready if s.domain == clone.domain)
    assert (clone.ssh_port, clone.mac, clone.active_layer) == (taken.ssh_port, taken.mac, taken.layer)
    assert core.fake_sessions[cid].commands[0] == "fix-up clone c1"
    assert clone.host_key == taken.host_key and taken.host_key != core.get(sid).host_key     # its own key
    assert core.fake_sessions[cid].scripts, "rotated in the guest before the standby paused"
    assert core.audit_log("c1")[-1]["detail"]["pool"] is True
    settle(core)
    assert len(core.store.list_standbys(kind="pool", state="ready")) == 2           # refilled
    assert sum(c[0] in ("restore_machine", "start_machine") for c in core.provider.calls) == starts + 1
    assert core.list_pools() == [{"snapshot": snap, "name": "a:base", "kind": "pool", "size": 2, "ready": 2,
                                  "starting": 0, "memory_bytes": 2 * (256 << 20)}]
    core.set_pool("a:base", 0)
    settle(core)
    assert core.store.list_standbys() == [] and core.list_pools() == []
    core.destroy(cid)
    core.destroy(sid)
    settle(core)
    assert core.provider.domains == {} and files(core) == ([], [])


def test_an_empty_pool_boots_a_clone_as_before(core):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "base")
    cid = core.create_sandbox("c1", {"clone_from": "a:base"})
    assert core.get(cid).state is SandboxState.RUNNING and core.store.list_standbys() == []


def test_pool_in_config_is_filled_by_gc(tmp_path):
    core = fake_core(tmp_path, NO_POLICY)
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "base")
    core.close()
    core = fake_core(tmp_path, {**NO_POLICY, "pool": [{"snapshot": "a:base", "size": 1}]},
                     machines=core.provider.domains)
    done = core.gc()
    assert any(line.startswith("standby st-") for line in done)
    assert len(core.store.list_standbys(kind="pool", state="ready")) == 1
    core.close()


def test_caps_skip_with_a_reason_and_refuse_what_never_fits(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"standby_memory": "600M", "standby_max": 3}})
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "base")
    with pytest.raises(ConfigError, match="over rollback.standby_memory"):
        core.set_pool("a:base", 3)
    with pytest.raises(ConfigError, match="over rollback.standby_max"):
        core.set_pool("a:base", 4)
    core.set_pool("a:base", 2)
    settle(core)
    core.create_snapshot(sid, "s2", standby=True)           # a third 256M standby is over 600M
    settle(core)
    assert len(core.store.list_standbys()) == 2
    skipped = [a for a in core.audit_log("a", 50) if a["operation"] == "standby" and a["outcome"] == "skipped"]
    assert "over rollback.standby_memory" in skipped[-1]["detail"]["reason"]
    core.close()


@pytest.mark.parametrize("bad,match", [(-1, "whole number"), ("2", "whole number"), (True, "whole number")])
def test_bad_pool_sizes_are_one_clear_error(core, bad, match):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "base")
    with pytest.raises(ConfigError, match=match):
        core.set_pool("a:base", bad)


def test_disk_only_snapshots_and_unknown_snapshots_have_no_pool(core):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "d", memory=False)
    with pytest.raises(ConfigError, match="no memory state"):
        core.set_pool("a:d", 1)
    with pytest.raises(SandboxError, match="no snapshot"):
        core.set_pool("a:nope", 1)
    with pytest.raises(ConfigError, match="memory=False"):
        core.create_snapshot(sid, "x", memory=False, standby=True)
    assert [s.name for s in core.list_snapshots(sid)] == ["d"]


def test_a_provider_without_standbys_gets_one_clear_error(core, monkeypatch):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "base")
    monkeypatch.setattr(type(core.provider), "capabilities",
                        type(core.provider).capabilities - {"standbys"})
    with pytest.raises(SandboxError, match="cannot keep warm standbys"):
        core.set_pool("a:base", 1)
    with pytest.raises(SandboxError, match="cannot keep warm standbys"):
        core.create_snapshot(sid, "s2", standby=True)


def test_deleting_the_snapshot_drops_its_standbys(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1", standby=True)
    core.set_pool(snap, 1)
    settle(core)
    assert len(core.store.list_standbys()) == 2
    core.delete_snapshot(sid, "s1")
    settle(core)
    assert core.store.list_standbys() == [] and core.store.standby_targets() == []
    assert set(machines(core)) == {core.get(sid).domain} and core.tree.verify() == []


def test_gc_drops_standbys_whose_machine_vanished(core):
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "s1", standby=True)
    settle(core)
    [stb] = core.store.list_standbys()
    del core.provider.domains[stb.domain]
    assert not [c for c in core.doctor() if c.name == "standbys"][0].ok
    done = core.gc()
    assert f"standby {stb.id} (its machine is gone)" in done
    [fresh] = core.store.list_standbys()                 # the target makes a new one
    assert fresh.id != stb.id and core.tree.verify() == []


# -- crash recovery: a journal entry left by a dead process, at each step ---------------------------
def _dead(core, op_id):
    with core.store.transaction() as db:
        db.execute("UPDATE journal SET pid=? WHERE id=?", (2 ** 22 + 7, op_id))


CHILD = """
import json, sys
from pathlib import Path
from vmsandbox.testing import fake_core
state, step = Path(sys.argv[1]), sys.argv[2]
core = fake_core(state, {"safety": {"validation": {"enabled": False}}})
if step == "prepare":
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1")
    core.create_snapshot(sid, "s2")
    core.store.set_standby_target(snap, "rollback", 1)
    core.store.set_standby_target(snap, "pool", 1)
    core.standbys.refill()
elif step == "make":
    core.standbys.make(core.store.get_snapshot("s2", core.store.get_sandbox("a").id), "rollback")
elif step == "clone":
    core.create_sandbox("c", {"clone_from": "a:s1"})
"""


def _child(state, step, crash_at=""):
    import os, subprocess, sys
    env = {**os.environ, "VMSANDBOX_CRASH_AT": crash_at}
    return subprocess.run([sys.executable, "-c", CHILD, str(state), step], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("step,point", [("make", "standby:begun"), ("make", "standby:overlay"),
                                        ("make", "standby:started"), ("clone", "pool:taken")])
def test_a_crash_at_each_step_is_recovered(tmp_path, step, point):
    """The child is SIGKILLed at ``point``; the fake's machines die with it, its records and files
    stay: the next core must finish or undo the operation and leave the tree consistent."""
    assert _child(tmp_path, "prepare").returncode == 0
    proc = _child(tmp_path, step, point)
    assert proc.returncode == -9, proc.stderr[-2000:]
    core = fake_core(tmp_path, NO_POLICY)
    assert core.store.journal_entries() == []
    info = core.store.get_sandbox("a")
    assert info.state is SandboxState.RUNNING
    assert core.tree.verify() == []
    stbs = core.store.list_standbys()
    assert all(s.state == "ready" for s in stbs)
    held = {r[0] for r in core.store._db().execute("SELECT port FROM port_holds")}
    assert held == {s.ssh_port for s in stbs}                       # no leaked port hold
    if step == "clone":
        assert core.store.find_sandbox("c") is None                  # undone, like any clone
    core.close()


class Killed(BaseException):
    """Stands in for SIGKILL in this process (the fake's machines live in its memory)."""


@pytest.mark.parametrize("point", ["swap:begun", "swap:resumed", "swap:committed"])
def test_a_swap_killed_at_each_step_is_recovered(core, monkeypatch, point):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1", standby=True)
    settle(core)
    [stb] = core.store.list_standbys()
    old = core.get(sid)

    def kill(at):
        if at == point:
            raise Killed(at)
    monkeypatch.setattr("vmsandbox.standby.fault_point", kill)
    with pytest.raises(Killed):
        core.rollback(sid, snap)
    monkeypatch.undo()
    [entry] = core.store.journal_entries()
    _dead(core, entry["id"])
    if point == "swap:committed":       # the retire thread never ran: the machine is still paused here
        pass
    assert core.maintenance.recover()
    settle(core)
    info = core.get(sid)
    assert info.state is SandboxState.RUNNING and core.store.journal_entries() == []
    if point == "swap:committed":
        assert info.domain == stb.domain and machines(core)[stb.domain] == "running"
        assert old.domain not in machines(core) and core.store.find_layer(old.active_layer) is None
    else:
        assert info.domain == old.domain and machines(core)[old.domain] == "running"
        assert stb.domain not in machines(core) and core.store.find_layer(stb.layer) is None
    held = {r[0] for r in core.store._db().execute("SELECT port FROM port_holds")}
    assert held == {s.ssh_port for s in core.store.list_standbys()}
    assert core.tree.verify() == []


def test_cli_shows_standbys_and_pools_and_errors_are_one_line(core, tmp_path):
    from click.testing import CliRunner
    from vmsandbox.cli import cli
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "base")
    core.create_snapshot(sid, "disk", memory=False)
    core.set_pool("a:base", 1)
    settle(core)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"sandbox: {{state_directory: {core.state_dir}, provider: fake}}\n"
                   "safety: {validation: {enabled: false}}\nmonitoring: {enabled: false}\n")

    def run(*args):
        return CliRunner().invoke(cli, ["--config", str(cfg), *args])
    r = run("list")
    assert r.exit_code == 0 and "standbys: 1 pool" in r.output
    r = run("show", "a")
    assert r.exit_code == 0 and "standby" in r.output and "pool of base (ready)" in r.output
    r = run("pool", "list")
    assert r.exit_code == 0 and "a:base" in r.output and "256 MiB" in r.output
    r = run("pool", "set", "a:disk", "1")
    assert r.exit_code != 0 and r.output.count("\n") == 1 and "no memory state" in r.output
    r = run("pool", "set", "a:nope", "1")
    assert r.exit_code != 0 and r.output.count("\n") == 1 and "no snapshot" in r.output
    r = run("pool", "set", "a:base", "-1")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_migration_3_to_4_adds_the_standby_tables(tmp_path):
    import sqlite3
    from vmsandbox.store import SCHEMA_VERSION, Store
    s = Store(tmp_path / "state.db")
    s.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("DROP TABLE standbys")
    db.execute("DROP TABLE standby_targets")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    s = Store(tmp_path / "state.db")
    assert s._db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert s.list_standbys() == [] and s.standby_targets() == []
    s.set_standby_target("sn-1", "pool", 2)
    assert s.standby_targets()[0]["size"] == 2


def test_metrics_count_standbys_and_their_memory(core):
    from types import SimpleNamespace
    from vmsandbox.metrics import SandboxCollector
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "base", standby=True)
    settle(core)
    watchdog = SimpleNamespace(core=core, snapshot=lambda: {})
    fams = {f.name: f for f in SandboxCollector(watchdog).collect()}
    [ready] = [s for s in fams["vmsandbox_standbys"].samples if s.labels["state"] == "ready"]
    assert ready.labels == {"snapshot": snap, "kind": "rollback", "state": "ready"} and ready.value == 1
    assert fams["vmsandbox_standby_memory_bytes"].samples[0].value == 256 << 20


def test_retention_then_gc_frees_the_snapshot_layer_a_standby_held(core):
    sid = core.create_sandbox("a")
    snap = core.create_snapshot(sid, "s1", standby=True)
    settle(core)
    layer = core.store.get_snapshot(snap).layer
    core.store.update_snapshot(snap, created_at=0.0)
    assert core.cleanup_snapshots(1) == [snap]                   # retention: the standby still stands on it
    assert core.store.find_layer(layer) is not None
    core.gc()
    assert core.store.list_standbys() == []
    assert core.store.layer_users(layer) == {"children": [core.get(sid).active_layer], "snapshots": []}
    assert core.tree.verify() == []
    core.destroy(sid)
    settle(core)
    assert core.store.list_layers() == [] and files(core) == ([], [])


@pytest.mark.parametrize("cfg,message", [
    ({"pool": [{"size": 2}]}, "pool[0].snapshot: is required"),
    ({"pool": [{"snapshot": "a:b", "size": -1}]}, "pool[0].size: -1 must be at least 0"),
    ({"pool": [{"snapshot": "a:b", "sise": 1}]}, "pool[0].sise: unknown key"),
    ({"pool": {"snapshot": "a:b"}}, "pool: {'snapshot': 'a:b'} must be a list"),
    ({"rollback": {"standby": "on"}}, "rollback.standby: 'on' is not one of off, latest"),
    ({"rollback": {"standby_memory": "lots"}}, "rollback.standby_memory:"),
    ({"rollback": {"standby_max": 1000}}, "rollback.standby_max: 1000 must be at most 256"),
])
def test_standby_config_errors_name_the_key(cfg, message):
    from vmsandbox.config import load_config
    with pytest.raises(ConfigError) as e:
        load_config(None, cfg)
    assert str(e.value).startswith(message), str(e.value)
