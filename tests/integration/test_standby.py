"""Warm standbys on real guests: a rollback that swaps to a standby restores the snapshot's state
and the guest answers with the host's clock; a clone from a warm pool works with its own host key;
a process killed mid-swap or mid-make, gc and destroy leave no domain, layer or port behind."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmsandbox.models import SandboxState

from .conftest import virsh_domains

pytestmark = pytest.mark.timeout(300)


def clean(env, core):
    """Exactly the machines and layers records name: sandboxes', standbys'; the tree consistent."""
    core.snapshots.wait_background()
    stbs = core.store.list_standbys()
    assert all(s.state == "ready" for s in stbs)
    left = env.leftovers()
    assert set(left["domains"]) == {i.domain for i in core.store.list_sandboxes()} | {s.domain for s in stbs}, left
    assert set(left["layers"]) == {Path(l.ref).name for l in core.store.list_layers()}
    assert set(left["memory"]) == {Path(s.memory_ref).name for s in core.store.list_snapshots() if s.memory_ref}
    held = {r[0] for r in core.store._db().execute("SELECT port FROM port_holds")}
    assert held == {s.ssh_port for s in stbs}
    assert core.tree.verify() == [] and core.store.journal_entries() == []
    for s in stbs:
        assert core.provider.machine_state(s.domain) == "paused", s


@pytest.fixture(scope="module")
def sb(core):
    sid = core.create_sandbox("stb-1")
    core.execute(sid, "mkdir -p /work; echo base > /work/f; sync")
    snap = core.create_snapshot(sid, "base", standby=True)
    core.snapshots.wait_background()
    yield sid, snap
    core.destroy(sid)
    core.snapshots.wait_background()


def test_rollback_swaps_to_the_standby_and_the_guest_answers(env, core, sb):
    sid, snap = sb
    [stb] = core.store.list_standbys()
    assert core.provider.machine_state(stb.domain) == "paused"
    assert "standbys: 1 rollback" == core.standbys.summary()[sid]
    core.execute(sid, "echo changed > /work/f")
    old = core.get(sid)
    time.sleep(2)                                   # the standby's clock stood still meanwhile
    t = time.monotonic()
    core.rollback(sid, snap)
    r = core.execute(sid, "cat /work/f; date +%s")
    took = time.monotonic() - t
    out = r.stdout.split()
    assert r.exit_code == 0 and out[0] == "base", r
    assert abs(int(out[1]) - time.time()) < 5                  # the clock was set from the host
    info = core.get(sid)
    assert info.domain == stb.domain and info.state is SandboxState.RUNNING
    assert took < 10, took
    core.snapshots.wait_background()
    assert old.domain not in virsh_domains(env.prefix)
    [fresh] = core.store.list_standbys()                        # a fresh standby for the next rollback
    assert fresh.id != stb.id
    core.execute(sid, "echo again > /work/f")
    core.rollback(sid, snap)
    assert core.execute(sid, "cat /work/f").stdout.strip() == "base"
    clean(env, core)


def test_clone_from_a_warm_pool_has_its_own_host_key(env, core, sb):
    sid, snap = sb
    assert core.set_pool(snap, 1)["size"] == 1
    core.snapshots.wait_background()
    [pooled] = core.store.list_standbys(kind="pool")
    cid = core.create_sandbox("stb-clone", {"clone_from": snap})
    clone, origin = core.get(cid), core.get(sid)
    assert clone.domain == pooled.domain
    assert [a for a in core.audit_log("stb-clone") if a["operation"] == "clone"][-1]["detail"]["pool"] is True
    r = core.execute(cid, "cat /work/f; hostname; cat /sys/class/net/eth0/address")
    assert r.stdout.split() == ["base", "stb-clone", clone.mac], r
    assert clone.host_key and clone.host_key != origin.host_key
    core.snapshots.wait_background()
    assert len(core.store.list_standbys(kind="pool", state="ready")) == 1      # refilled
    core.destroy(cid)
    core.set_pool(snap, 0)
    core.snapshots.wait_background()
    assert core.store.list_standbys(kind="pool") == []
    clean(env, core)


WORKER = textwrap.dedent("""
    import json, sys
    from vmsandbox import SandboxCore
    cfg, op, target, arg = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    core = SandboxCore(config=cfg)
    if op == "rollback":
        core.rollback(target, arg)
    elif op == "pool":
        core.set_pool(arg, 1)
        core.snapshots.wait_background()
    core.close()
""")


@pytest.mark.parametrize("op,point", [("rollback", "swap:committed"), ("pool", "standby:started")])
def test_a_crash_mid_swap_or_mid_make_leaves_nothing(env, core, sb, op, point):
    sid, snap = sb
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(env.config()), op, sid, snap],
                          env={**os.environ, "VMSANDBOX_CRASH_AT": point}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    fresh = env.core()                             # its construction runs recovery
    info = fresh.get(sid)
    assert info.state is SandboxState.RUNNING
    assert fresh.execute(sid, "cat /work/f").stdout.strip() == "base"
    fresh.gc()                                     # drops what lost its target, refills the rest
    clean(env, fresh)
    fresh.set_pool(snap, 0)
    fresh.snapshots.wait_background()


def test_destroy_takes_its_standbys(env, core):
    sid = core.create_sandbox("stb-2")
    snap = core.create_snapshot(sid, "s", standby=True)
    core.set_pool(snap, 1)
    core.snapshots.wait_background()
    domains = {s.domain for s in core.store.list_standbys(sandbox_id=sid)}
    assert len(domains) == 2
    core.destroy(sid)
    core.snapshots.wait_background()
    assert not domains & set(virsh_domains(env.prefix))
    assert core.store.list_standbys(sandbox_id=sid) == [] and core.list_pools() == [] or \
        all(p["snapshot"] != snap for p in core.list_pools())
