"""Retention by count and memory size, pins, and console-log rotation (on the fakes; the fake
provider's memory states are 12 bytes each, so byte caps of a few dozen bytes bite)."""
import time

import pytest
from click.testing import CliRunner

from vmsandbox.config import load_config
from vmsandbox.exceptions import ConfigError, StateError
from vmsandbox.models import Snapshot
from vmsandbox.retention import next_victim, old_console_logs
from vmsandbox.testing import fake_core

from .conftest import NO_POLICY

MEM = 12          # bytes of one fake memory state


def names(core, sid):
    return [s.name for s in core.list_snapshots(sid)]


def snap(id, t, memory=False, pinned=False):
    return Snapshot(id=id, name=id, sandbox_id="sb", layer="L", memory_ref=f"/m/{id}" if memory else None,
                    cpu="1", memory="256M", created_at=t, pinned=pinned)


def test_next_victim_takes_the_oldest_unpinned_and_says_why():
    snaps = [snap("c", 3), snap("a", 1, pinned=True), snap("b", 2), snap("d", 4)]
    victim, why = next_victim(snaps, {"d"}, 2, 0, lambda ref: 0)
    assert victim.id == "b" and "max_snapshots=2" in why
    assert next_victim(snaps, {"d"}, 4, 0, lambda ref: 0) is None               # within the cap
    assert next_victim(snaps, {"b", "c", "d"}, 1, 0, lambda ref: 0) is None     # all spared or pinned


def test_next_victim_by_memory_skips_disk_only_snapshots():
    snaps = [snap("a", 1), snap("b", 2, memory=True), snap("c", 3, memory=True)]
    victim, why = next_victim(snaps, {"c"}, 0, 150, lambda ref: 100)
    assert victim.id == "b" and "max_memory_bytes=150" in why
    assert next_victim(snaps, {"c"}, 0, 200, lambda ref: 100) is None


def test_count_cap_removes_oldest_first_never_the_new_one(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"max_snapshots": 2}})
    sid = core.create_sandbox("a")
    for n in ("s1", "s2", "s3", "s4"):
        core.create_snapshot(sid, n, memory=False)
    assert names(core, sid) == ["s3", "s4"]
    removals = [a for a in core.audit_log("a") if a["operation"] == "delete_snapshot"]
    assert [a["detail"]["name"] for a in removals] == ["s1", "s2"]
    assert all("max_snapshots=2" in a["detail"]["reason"] for a in removals)
    assert core.tree.verify() == []
    core.close()


def test_pinned_snapshots_survive_age_count_and_delete(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"max_snapshots": 2}})
    sid = core.create_sandbox("a")
    base = core.create_snapshot(sid, "base", memory=False)
    assert core.pin_snapshot("a", "base").pinned
    for n in ("s1", "s2", "s3"):
        core.create_snapshot(sid, n, memory=False)
    assert names(core, sid) == ["base", "s3"]          # the pin counts towards the cap but stays
    core.store.update_snapshot(base, created_at=time.time() - 30 * 86400)
    assert core.cleanup_snapshots(7) == []
    with pytest.raises(StateError, match="pinned"):
        core.delete_snapshot(sid, "base")
    assert not core.pin_snapshot(sid, base, pinned=False).pinned
    assert core.cleanup_snapshots(7) == [base]
    ops = [a["operation"] for a in core.audit_log("a")]
    assert "pin_snapshot" in ops and "unpin_snapshot" in ops
    with pytest.raises(ConfigError, match="pinned"):
        core.pin_snapshot(sid, "s3", pinned="yes")
    core.close()


def test_memory_cap_removes_oldest_memory_states(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"max_memory_bytes": 2 * MEM}})
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "m1")
    core.create_snapshot(sid, "d1", memory=False)
    core.create_snapshot(sid, "m2")
    core.create_snapshot(sid, "m3")
    assert names(core, sid) == ["d1", "m2", "m3"]      # disk-only d1 frees no memory: kept
    assert sum(1 for s in core.list_snapshots(sid) if s.has_memory) == 2
    assert core.tree.verify() == []
    core.close()


def test_a_snapshot_whose_memory_is_in_use_is_skipped(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"max_snapshots": 1}})
    sid = core.create_sandbox("a")
    s1 = core.create_snapshot(sid, "s1")
    with core.snapshots.snapshot_lock(s1, "a restore in another thread"):
        core.create_snapshot(sid, "s2")
        assert names(core, sid) == ["s1", "s2"]        # busy: kept for now
    core.create_snapshot(sid, "s3")
    assert names(core, sid) == ["s3"]
    core.close()


def test_gc_applies_caps_lowered_since_the_last_snapshot(tmp_path):
    core = fake_core(tmp_path, NO_POLICY)
    sid = core.create_sandbox("a", {"persistent": True})
    for n in ("s1", "s2", "s3"):
        core.create_snapshot(sid, n, memory=False)
    core.close()
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"max_snapshots": 1}}, machines=core.provider.domains)
    done = core.gc()
    assert [line for line in done if "max_snapshots" in line] and names(core, sid) == ["s3"]
    core.close()


def test_caps_apply_per_sandbox(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "rollback": {"max_snapshots": 1}})
    a, b = core.create_sandbox("a"), core.create_sandbox("b")
    core.create_snapshot(a, "a1", memory=False)
    core.create_snapshot(b, "b1", memory=False)
    core.create_snapshot(a, "a2", memory=False)
    assert names(core, a) == ["a2"] and names(core, b) == ["b1"]
    core.close()


@pytest.mark.parametrize("key,value,words", [
    ("max_snapshots", -1, "at least 0"), ("max_snapshots", 2.5, "whole number"), ("max_snapshots", "3", "number"),
    ("max_memory_bytes", "2Q", "not a size"), ("max_memory_bytes", -1, "not a positive size"),
    ("max_memory_bytes", True, "not a size")])
def test_bad_caps_are_one_config_error_with_the_key(key, value, words):
    with pytest.raises(ConfigError, match=f"rollback.{key}: .*{words}"):
        load_config(config={"rollback": {key: value}})


def test_caps_accept_sizes_and_zero():
    cfg = load_config(config={"rollback": {"max_snapshots": 10, "max_memory_bytes": "2G"}}).rollback
    assert (cfg.max_snapshots, cfg.memory_cap) == (10, 2 << 30)
    assert load_config(config={"rollback": {"max_memory_bytes": 0}}).rollback.memory_cap == 0
    assert load_config().rollback.memory_cap == 0 and load_config().sandbox.console_logs_keep == 3
    with pytest.raises(ConfigError, match="sandbox.console_logs_keep: 0 must be at least 1"):
        load_config(config={"sandbox": {"console_logs_keep": 0}})


def test_old_console_logs_keep_the_newest_and_the_current(tmp_path):
    for g in (0, 1, 2, 3, 10):
        (tmp_path / f"console-{g}.log").write_text("x")
    (tmp_path / "console-x.log").write_text("not a generation")
    assert sorted(p.name for p in old_console_logs(tmp_path, tmp_path / "console-10.log", 3)) == \
        ["console-0.log", "console-1.log"]
    # the current log is never returned, even when newer generations exist (a failed start)
    assert tmp_path / "console-0.log" not in old_console_logs(tmp_path, tmp_path / "console-0.log", 1)


def test_rollbacks_rotate_console_logs(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "sandbox": {"console_logs_keep": 2}})
    sid = core.create_sandbox("a")
    s = core.create_snapshot(sid, "s")
    for _ in range(4):
        info = core.get(sid)
        core.console_log(info).write_text(f"gen {info.generation}")   # the fake guest writes none
        core.rollback(sid, s)
    core.console_log(core.get(sid)).write_text("current")
    core.stop(sid)
    core.start(sid)
    logs = sorted(p.name for p in core.layout.sandbox_dir(sid).glob("console-*.log"))
    assert logs == ["console-3.log", "console-4.log"]
    core.close()


def test_cli_pin_unpin_and_list(tmp_path, monkeypatch):
    from vmsandbox.cli import cli
    core = fake_core(tmp_path, NO_POLICY)
    sid = core.create_sandbox("a")
    core.create_snapshot(sid, "keep", memory=False)
    monkeypatch.setattr("vmsandbox.cli._context.get_core", lambda ctx: core)
    monkeypatch.setattr("vmsandbox.cli.snapshot_cmds.get_core", lambda ctx: core)
    r = CliRunner().invoke(cli, ["snapshot", "pin", "a", "keep"])
    assert r.exit_code == 0 and "pinned snapshot keep" in r.output
    r = CliRunner().invoke(cli, ["snapshot", "list", "a"])
    assert "PINNED" in r.output and "yes" in r.output.split("keep", 1)[1].splitlines()[0]
    r = CliRunner().invoke(cli, ["snapshot", "list", "a", "--json"])
    assert '"pinned": true' in r.output
    r = CliRunner().invoke(cli, ["snapshot", "unpin", "a", "nope"])
    assert r.exit_code != 0 and "no snapshot 'nope'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["snapshot", "unpin", "a", "keep"])
    assert r.exit_code == 0 and not core.store.get_snapshot("keep", sid).pinned
    core.close()
