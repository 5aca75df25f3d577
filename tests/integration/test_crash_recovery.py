"""Kill the process (SIGKILL) at every step of create, destroy, snapshot, rollback, clone and delete; the next
SandboxCore must finish or undo the operation: no leaked domain or file, no lost snapshot, every
image passing qemu-img check, the sandbox usable."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vmsandbox.models import SandboxState

from .conftest import assert_clean, virsh_domains

pytestmark = pytest.mark.timeout(300)

WORKER = textwrap.dedent("""
    import json, sys
    from vmsandbox import SandboxCore
    cfg, op, target, arg = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    core = SandboxCore(config=cfg)
    if op == "snapshot":
        core.create_snapshot(target, arg)
    elif op == "snapshot-disk":
        core.create_snapshot(target, arg, memory=False)
    elif op == "rollback":
        core.rollback(target, arg)
    elif op == "clone":
        core.create_sandbox(arg, {"clone_from": target})
    elif op == "delete":
        core.delete_snapshot(target, arg)
    elif op == "create":
        core.create_sandbox(arg)
    elif op == "destroy":
        core.destroy(target)
    core.close()
""")


def crash(env, point, op, target, arg):
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(env.config()), op, target, arg],
                          env={**os.environ, "VMSANDBOX_CRASH_AT": point}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


@pytest.fixture(scope="module")
def sb(core):
    sid = core.create_sandbox("crash-1")
    core.execute(sid, "mkdir -p /work; echo base > /work/f; sync")
    core.create_snapshot(sid, "base")
    yield sid
    core.destroy(sid)


def recovered(env):
    """A fresh core (its construction runs recovery), checked for consistency."""
    core = env.core()
    assert core.store.journal_entries() == []
    assert_clean(env, core)
    return core


@pytest.mark.parametrize("point,kept", [("snapshot:begun", False), ("snapshot:switched", True),
                                        ("snapshot:committed", True)])
@pytest.mark.parametrize("op", ["snapshot", "snapshot-disk"])
def test_crash_during_snapshot(env, core, sb, point, kept, op):
    name = f"{op}-{point.split(':')[1]}"
    crash(env, point, op, sb, name)
    c = recovered(env)
    names = [s.name for s in c.list_snapshots(sb)]
    assert (name in names) == kept, names
    assert c.execute(sb, "cat /work/f").stdout == "base\n"
    if kept:
        c.execute(sb, "echo changed > /work/f")
        c.rollback(sb, name)
        assert c.execute(sb, "cat /work/f").stdout == "base\n"
        assert_clean(env, c)


@pytest.mark.parametrize("point,moved", [("rollback:begun", False), ("rollback:overlay", False),
                                         ("rollback:started", False), ("rollback:committed", True)])
def test_crash_during_rollback(env, core, sb, point, moved):
    core.execute(sb, "echo drifted > /work/f")
    before = core.get(sb)
    crash(env, point, "rollback", sb, "base")
    c = recovered(env)
    after = c.get(sb)
    assert after.state is SandboxState.RUNNING
    assert (after.domain != before.domain) == moved
    assert c.execute(sb, "cat /work/f").stdout == ("base\n" if moved else "drifted\n")
    assert [s.name for s in c.list_snapshots(sb)].count("base") == 1


@pytest.mark.parametrize("point", ["clone:overlay", "clone:started"])
def test_crash_during_clone(env, core, sb, point):
    snap = core.store.get_snapshot("base", core.get(sb).id).id
    name = "clone-" + point.split(":")[1]
    crash(env, point, "clone", snap, name)
    c = recovered(env)
    assert name not in [i.name for i in c.list_sandboxes()]
    assert virsh_domains(env.prefix + name) == []
    assert c.execute(sb, "true").exit_code == 0


def test_crash_during_delete(env, core, sb):
    core.create_snapshot(sb, "doomed")
    mem = core.store.get_snapshot("doomed", core.get(sb).id).memory_ref
    crash(env, "delete:record", "delete", sb, "doomed")
    c = recovered(env)
    assert "doomed" not in [s.name for s in c.list_snapshots(sb)]
    assert not os.path.exists(mem)
    assert [s.name for s in c.list_snapshots(sb)].count("base") == 1


@pytest.mark.parametrize("point", ["create:disk", "create:started"])
def test_crash_during_create(env, core, sb, point):
    name = "born-" + point.split(":")[1]
    crash(env, point, "create", "-", name)
    c = recovered(env)                                    # undone at once: no ttl wait, no gc needed
    assert name not in [i.name for i in c.list_sandboxes()]
    assert virsh_domains(env.prefix + name) == []
    assert c.execute(sb, "true").exit_code == 0


def test_crash_during_destroy(env, core):
    sid = core.create_sandbox("doomed-sb")
    core.create_snapshot(sid, "s")
    crash(env, "destroy:begun", "destroy", sid, "-")
    c = recovered(env)                                    # finished: nothing left in destroying
    assert "doomed-sb" not in [i.name for i in c.list_sandboxes()]
    assert virsh_domains(env.prefix + "doomed-sb") == []
