from pathlib import Path
"""SandboxCore on the fakes: lifecycle, state machine, bad input, clean-up, gc (no VM)."""
import time

import pytest

from vmsandbox.exceptions import (ConfigError, GuestUnreachableError, NotFoundError, ProviderError,
                                  ResourceLimitError, StateError)
from vmsandbox.models import SandboxState
from vmsandbox.testing import FakeSession, fake_core

from .conftest import NO_POLICY


def leftovers(core):
    return (core.provider.list_machines(""), sorted(p.name for p in (core.state_dir / "sandboxes").iterdir()),
            core.store.list_sandboxes())


def test_create_execute_destroy(core):
    sid = core.create_sandbox("build-1", {"box": "tiny", "resource_limits": {"cpu": "1", "memory": "256M", "disk": "1G"}})
    info = core.get("build-1")
    assert info.id == sid and info.state is SandboxState.RUNNING
    assert info.domain.startswith("vmsbx-build-1-")
    assert Path(core.store.get_layer(info.active_layer).ref).exists()
    r = core.execute(sid, "make test", timeout=5, working_dir="/src")
    assert r.exit_code == 0 and core.fake_sessions[sid].commands == ["make test"]
    assert core.destroy(sid)
    assert leftovers(core) == ([], [], [])
    ops = [(r["operation"], r["outcome"]) for r in core.audit_log("build-1")]
    assert ops == [("create", "ok"), ("execute", "ok"), ("destroy", "ok")]


def test_fractional_cpu_becomes_quota(core):
    core.create_sandbox("q", {"resource_limits": {"cpu": "0.5"}})
    spec = core.provider.domains[core.get("q").domain]["spec"]
    assert spec.vcpus == 1 and spec.cpu_quota == 0.5


@pytest.mark.parametrize("name,cfg,exc,words", [
    ("Bad Name", {}, ConfigError, "not a valid sandbox name"),
    ("", {}, ConfigError, "not a valid sandbox name"),
    ("ok", {"box": "nope"}, NotFoundError, "no box 'nope'"),
    ("ok", {"resource_limits": {"memory": "4Q"}}, ConfigError, "resource_limits.memory"),
    ("ok", {"resource_limits": {"cpu": "0"}}, ConfigError, "resource_limits.cpu"),
    ("ok", {"resource_limits": {"disk": "100M"}}, ConfigError, "smaller than box"),
    ("ok", {"resource_limits": {"memory": "64G"}}, ResourceLimitError, "exceeds safety.limits.memory"),
    ("ok", {"resource_limits": {"gpu": 1}}, ConfigError, "resource_limits.gpu"),
    ("ok", {"colour": "red"}, ConfigError, "sandbox config.colour"),
    ("ok", {"isolation_type": "jail"}, ConfigError, "is not one of vm, container"),
    ("ok", {"image": "vmsandbox/tiny"}, ConfigError, "image is for containers"),
    ("ok", {"isolation_type": "container", "image": "Bad Image"}, ConfigError, "not a container image name"),
    ("ok", {"network_mode": "bridge"}, ConfigError, "not supported yet"),
    ("ok", {"network_mode": "host"}, ConfigError, "network_mode"),
    ("ok", {"persistent": "yes"}, ConfigError, "persistent"),
])
def test_bad_input_is_one_clear_error_and_leaves_nothing(core, name, cfg, exc, words):
    with pytest.raises(exc, match=words):
        core.create_sandbox(name, cfg)
    assert leftovers(core) == ([], [], [])


def test_duplicate_name(core):
    core.create_sandbox("dup")
    with pytest.raises(ConfigError, match="already exists"):
        core.create_sandbox("dup")
    assert len(core.list_sandboxes()) == 1


def test_boot_failure_leaves_nothing(core):
    core.provider.fail_on["start_machine"] = ProviderError("booting: QEMU said no")
    with pytest.raises(ProviderError, match="QEMU said no"):
        core.create_sandbox("x")
    assert leftovers(core) == ([], [], [])
    assert core.audit_log("x")[-1]["outcome"] == "failed"


def test_unreachable_guest_keeps_only_console_log(tmp_path):
    core = fake_core(tmp_path, NO_POLICY)

    def session(info):
        core.console_log(info).write_text("kernel panic\n")
        return FakeSession(info.ssh_port, ready_error=GuestUnreachableError(
            f"no SSH; see {core.console_log(info)}", str(core.console_log(info))))
    core.sessions.factory = session
    with pytest.raises(GuestUnreachableError) as e:
        core.create_sandbox("silent")
    assert leftovers(core) == ([], [], [])
    kept = e.value.console_log
    assert "logs/silent-" in kept and open(kept).read() == "kernel panic\n"
    assert kept in str(e.value)


def test_state_machine_guards(core):
    sid = core.create_sandbox("s")
    core.pause(sid)
    with pytest.raises(StateError, match="it is paused"):
        core.execute(sid, "true")
    with pytest.raises(StateError):
        core.pause(sid)
    core.resume(sid)
    core.stop(sid)
    assert core.get(sid).state is SandboxState.STOPPED
    with pytest.raises(StateError, match="needs running"):
        core.execute(sid, "true")
    core.start(sid)
    assert core.execute(sid, "true").exit_code == 0


def test_limit_pause_raises_resource_limit_error(core):
    sid = core.create_sandbox("lim")
    core.pause(sid, reason="limit: disk 1.2G over its 1G limit")
    with pytest.raises(ResourceLimitError, match="disk 1.2G over"):
        core.execute(sid, "true")


def test_destroyed_sandbox(core):
    sid = core.create_sandbox("gone")
    core.destroy(sid)
    with pytest.raises(NotFoundError):
        core.execute(sid, "true")
    with pytest.raises(NotFoundError):
        core.destroy(sid)


def test_reconcile_notices_vanished_domain(core):
    sid = core.create_sandbox("v")
    core.provider.domains.clear()
    info = core.get(sid)
    assert info.state is SandboxState.BROKEN and "gone" in info.reason


def test_empty_command_and_bad_timeout(core):
    sid = core.create_sandbox("c")
    with pytest.raises(ConfigError, match="empty"):
        core.execute(sid, "  ")
    with pytest.raises(ConfigError, match="timeout"):
        core.execute(sid, "true", timeout=0)


def test_gc_ttl_and_orphans(tmp_path):
    core = fake_core(tmp_path, {**NO_POLICY, "sandbox": {"ttl_seconds": 1}})
    old = core.create_sandbox("old")
    keep = core.create_sandbox("keep", {"persistent": True})
    core.store.update_sandbox(old, last_used_at=time.time() - 10)
    core.store.update_sandbox(keep, last_used_at=time.time() - 10)
    core.provider.domains["vmsbx-orphan-1"] = core.provider.domains[core.get(keep).domain]
    (core.state_dir / "sandboxes" / "sb-orphan").mkdir()
    removed = core.gc()
    assert any("old" in r for r in removed) and any("vmsbx-orphan-1" in r for r in removed)
    assert any("sb-orphan" in r for r in removed)
    assert [i.name for i in core.list_sandboxes()] == ["keep"]
    assert core.provider.list_machines("vmsbx-") == [core.get(keep).domain]


def test_restart_sees_earlier_sandboxes(tmp_path):
    a = fake_core(tmp_path, NO_POLICY)
    sid = a.create_sandbox("persist")
    b = fake_core(tmp_path, NO_POLICY, machines=a.provider.domains)
    assert b.get("persist").id == sid
    assert b.execute("persist", "true").exit_code == 0


def test_async_twin(tmp_path):
    import asyncio
    from vmsandbox import AsyncSandboxCore

    async def go():
        ac = AsyncSandboxCore.__new__(AsyncSandboxCore)
        ac.sync = fake_core(tmp_path, NO_POLICY)
        sid = await ac.create_sandbox("as")
        r = await ac.execute(sid, "echo")
        await ac.destroy(sid)
        await ac.close()
        return r.exit_code
    assert asyncio.run(go()) == 0


def test_box_in_use_cannot_be_removed(core, tmp_path):
    from click.testing import CliRunner
    from vmsandbox.cli import cli
    core.create_sandbox("user-of-tiny")
    with pytest.raises(StateError, match="in use by user-of-tiny"):
        core.require_box_unused("tiny")
    r = CliRunner().invoke(cli, ["--state-dir", str(core.state_dir), "box", "remove", "tiny"])
    assert r.exit_code == 4 and "in use by user-of-tiny" in r.output
    core.require_box_unused("other")


def test_approval_callback_and_timeout_raise(tmp_path, monkeypatch):
    import sys
    import types
    from vmsandbox.exceptions import CommandTimeout, SecurityError
    from vmsandbox.models import ExecutionResult
    seen = []
    mod = types.ModuleType("approver_for_test")
    mod.approve = lambda assessment, info: seen.append((assessment.risk_level.value, info.name)) or \
        "shadow" in assessment.command
    monkeypatch.setitem(sys.modules, "approver_for_test", mod)
    core = fake_core(tmp_path, {"safety": {"approval_callback": "approver_for_test:approve"}})
    sid = core.create_sandbox("appr")
    assert core.execute(sid, "cat /etc/shadow").exit_code == 0          # HIGH, approved by the callback
    with pytest.raises(SecurityError, match="needs approval"):
        core.execute(sid, "chmod 4755 /tmp/x")                          # HIGH, refused by it
    assert seen == [("HIGH", "appr"), ("HIGH", "appr")]
    with pytest.raises(SecurityError, match="blocked"):
        core.execute(sid, "rm -rf /")                                    # CRITICAL never asks
    outcomes = [r["outcome"] for r in core.audit_log("appr") if r["operation"] == "policy"]
    assert outcomes == ["approved", "needs_approval", "block"]
    s = core.fake_sessions[sid]
    s.responses["sleep 9"] = ExecutionResult("partial", "", None, 1.0, timed_out=True)
    assert core.execute(sid, "sleep 9", timeout=1).timed_out
    with pytest.raises(CommandTimeout) as e:
        core.execute(sid, "sleep 9", timeout=1, raise_on_timeout=True)
    assert e.value.result.stdout == "partial" and e.value.timeout == 1


def test_missing_layer_file_is_state_corruption(core):
    from vmsandbox.exceptions import RollbackError, StateCorruptionError
    sid = core.create_sandbox("corrupt")
    snap = core.create_snapshot(sid, "s")
    frozen = Path(core.store.get_layer(core.store.get_snapshot(snap).layer).ref)
    frozen.unlink()
    with pytest.raises(RollbackError, match="missing") as e:
        core.rollback(sid, snap)
    assert isinstance(e.value.__cause__, StateCorruptionError)
    assert core.get(sid).state is SandboxState.RUNNING
    assert any("missing" in p for p in core.tree.verify())


def test_gc_leaves_other_state_directories_alone(tmp_path):
    a = fake_core(tmp_path / "a", NO_POLICY)
    b = fake_core(tmp_path / "b", NO_POLICY, machines=a.provider.domains)   # one libvirtd, two state directories
    a.create_sandbox("mine")
    b.create_sandbox("theirs")
    assert a.gc() == [] and b.gc() == []
    assert len(a.provider.list_machines("vmsbx-")) == 2
    a.store.delete_sandbox(a.get("mine").id)      # now a's domain is a's orphan
    removed = a.gc()
    assert any("vmsbx-mine-" in r for r in removed)
    assert [d for d in a.provider.list_machines("vmsbx-")] == [b.get("theirs").domain]
