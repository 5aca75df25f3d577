"""SIGKILL the process at every journaled step of create, snapshot, rollback, clone, delete and
destroy of a container sandbox: the next SandboxCore (recovery) plus ``gc`` must leave no
container, no layer image and no record that nothing accounts for, and the sandbox usable."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vmsandbox.models import SandboxState

from .conftest import Env
from .containers import docker_leftovers, require_docker

pytestmark = pytest.mark.timeout(300)
CONTAINER = {"isolation_type": "container"}

WORKER = textwrap.dedent("""
    import json, sys
    from vmsandbox import SandboxCore
    cfg, op, target, arg = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    core = SandboxCore(config=cfg)
    if op == "snapshot":
        core.create_snapshot(target, arg)
    elif op == "rollback":
        core.rollback(target, arg)
    elif op == "clone":
        core.create_sandbox(arg, {"clone_from": target})
    elif op == "delete":
        core.delete_snapshot(target, arg)
    elif op == "create":
        core.create_sandbox(arg, {"isolation_type": "container"})
    elif op == "destroy":
        core.destroy(target)
    core.close()
""")


@pytest.fixture(scope="module")
def kit(tiny_box):
    client = require_docker(tiny_box)
    env = Env()
    core = env.core()
    sid = core.create_sandbox("crash-c", CONTAINER)
    core.execute(sid, "mkdir -p /work; echo base > /work/f")
    core.create_snapshot(sid, "base")
    yield env, client, sid
    c = env.core()
    for info in c.store.list_sandboxes():
        c.destroy(info.id)
    left = docker_leftovers(client, env.prefix, env.state_dir)
    env.teardown()
    assert left == {"containers": [], "images": []}, left


def crash(env, point, op, target, arg):
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(env.config()), op, target, arg],
                          env={**os.environ, "VMSANDBOX_CRASH_AT": point}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def recovered(env, client):
    """A fresh core (recovery runs at construction) and a gc: what is left is exactly what the records name."""
    core = env.core()
    core.gc()
    assert core.store.journal_entries() == []
    core.snapshots.wait_background()
    assert core.tree.verify() == []
    left = docker_leftovers(client, env.prefix, env.state_dir)
    assert set(left["containers"]) == {i.domain for i in core.store.list_sandboxes()}, left
    assert {f"docker:{t}" for t in left["images"]} == {l.ref for l in core.store.list_layers()}, left
    return core


@pytest.mark.parametrize("point,kept", [("snapshot:begun", False), ("snapshot:switched", True),
                                        ("snapshot:committed", True)])
def test_crash_during_snapshot(kit, point, kept):
    env, client, sid = kit
    name = "s-" + point.split(":")[1]
    crash(env, point, "snapshot", sid, name)
    c = recovered(env, client)
    assert (name in [s.name for s in c.list_snapshots(sid)]) == kept
    assert c.execute(sid, "cat /work/f").stdout == "base\n"


@pytest.mark.parametrize("point,moved", [("rollback:begun", False), ("rollback:overlay", False),
                                         ("rollback:started", False), ("rollback:committed", True)])
def test_crash_during_rollback(kit, point, moved):
    env, client, sid = kit
    env.cores[0].execute(sid, "echo drifted > /work/f")
    before = env.cores[0].get(sid)
    crash(env, point, "rollback", sid, "base")
    c = recovered(env, client)
    after = c.get(sid)
    assert after.state is SandboxState.RUNNING and (after.domain != before.domain) == moved
    assert c.execute(sid, "cat /work/f").stdout == ("base\n" if moved else "drifted\n")


@pytest.mark.parametrize("point", ["clone:overlay", "clone:started"])
def test_crash_during_clone(kit, point):
    env, client, sid = kit
    snap = env.cores[0].store.get_snapshot("base", sid).id
    name = "clone-" + point.split(":")[1]
    crash(env, point, "clone", snap, name)
    c = recovered(env, client)
    assert name not in [i.name for i in c.list_sandboxes()]


def test_crash_during_delete(kit):
    env, client, sid = kit
    env.cores[0].create_snapshot(sid, "doomed")
    crash(env, "delete:record", "delete", sid, "doomed")
    c = recovered(env, client)
    assert "doomed" not in [s.name for s in c.list_snapshots(sid)]


@pytest.mark.parametrize("point", ["create:disk", "create:started"])
def test_crash_during_create(kit, point):
    env, client, sid = kit
    name = "born-" + point.split(":")[1]
    crash(env, point, "create", "-", name)
    c = recovered(env, client)
    assert name not in [i.name for i in c.list_sandboxes()]


def test_crash_during_destroy(kit):
    env, client, _ = kit
    sid = env.cores[0].create_sandbox("doomed-sb", CONTAINER)
    env.cores[0].create_snapshot(sid, "s")
    crash(env, "destroy:begun", "destroy", sid, "-")
    c = recovered(env, client)
    assert "doomed-sb" not in [i.name for i in c.list_sandboxes()]
