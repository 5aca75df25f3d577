"""The memory rollback's libvirt calls on real libvirt: no lookup on the hot path nor in the old
guest's retirement, the replaced guest paused while its successor starts (and running again when
the rollback fails), and kept domain handles that go stale (another client replaced the domain)
looked up again instead of acting on the wrong machine."""
import collections
import functools
import threading

import libvirt
import pytest

from vmsandbox.exceptions import ProviderError, RollbackError
from vmsandbox.models import SandboxState

from .conftest import assert_clean, virsh_domains

pytestmark = pytest.mark.timeout(600)

LOCAL = {"isAlive", "connect", "c_pointer"}          # answered by the client library, no RPC


@pytest.fixture
def rpcs(monkeypatch):
    """Every libvirt call (``Connect.x``/``Domain.x``), by thread: 'hot' (the test's) or 'background'."""
    calls = collections.Counter()
    main = threading.current_thread()
    for cls in (libvirt.virConnect, libvirt.virDomain):
        for name in dir(cls):
            fn = getattr(cls, name)
            if name.startswith("_") or name in LOCAL or not callable(fn):
                continue

            def counted(*args, _fn=fn, _label=f"{cls.__name__[3:]}.{name}", **kwargs):
                calls[("hot" if threading.current_thread() is main else "background", _label)] += 1
                return _fn(*args, **kwargs)
            monkeypatch.setattr(cls, name, functools.wraps(fn)(counted))
    return calls


@pytest.fixture(scope="module")
def sb(core):
    sid = core.create_sandbox("hot-1")
    core.execute(sid, "echo base > /root/f; sync")
    core.create_snapshot(sid, "base")
    core.snapshots.wait_background()
    yield sid
    core.destroy(sid)


def test_memory_rollback_makes_no_lookup(env, core, sb, rpcs):
    for _ in range(2):                      # the second starts from a guest the first one restored
        core.execute(sb, "echo drifted > /root/f")
        rpcs.clear()
        core.rollback(sb, "base")
        core.snapshots.wait_background()
        hot = {k[1]: n for k, n in rpcs.items() if k[0] == "hot"}
        background = {k[1]: n for k, n in rpcs.items() if k[0] == "background"}
        assert hot == {"Domain.suspend": 1, "Connect.restoreFlags": 1, "Connect.defineXML": 1}, hot
        assert background == {"Domain.destroy": 1, "Domain.undefineFlags": 1}, background
        assert core.execute(sb, "cat /root/f").stdout == "base\n"
    assert_clean(env, core)


def test_failed_restore_leaves_the_old_guest_running(env, core, sb, monkeypatch):
    core.execute(sb, "echo kept > /root/f")
    before = core.get(sb)

    def fail(memory_ref, spec):
        raise ProviderError("restore refused (test)")
    monkeypatch.setattr(core.router.default, "restore_machine", fail)
    with pytest.raises(RollbackError, match="restore refused"):
        core.rollback(sb, "base")
    after = core.get(sb)
    assert after.state is SandboxState.RUNNING and after.domain == before.domain
    assert core.router.default.machine_state(before.domain) == "running"     # resumed, not left paused
    assert core.execute(sb, "cat /root/f").stdout == "kept\n"
    assert_clean(env, core)


def test_stale_kept_handle_is_looked_up_again(env, core, sb):
    """Another client replaces our domain under the same name (new uuid): the kept handle names
    the old uuid, so pause and destroy look the name up and act on the machine that has it now."""
    provider = core.router.default
    name = env.prefix + "stale-probe"
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>16</memory>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
    other = libvirt.open(provider.uri)
    try:
        first = provider.conn().defineXML(xml)
        provider._keep(name, first)
        first.undefine()
        second = other.defineXML(xml)          # same name, a uuid libvirt picks
        assert second.UUIDString() != first.UUIDString()
        provider.destroy_machine(name)          # not running: destroy is refused, then undefine
        assert virsh_domains(name) == []
        assert provider._find(name) is None
    finally:
        for d in virsh_domains(name):
            other.lookupByName(d).undefine()
        other.close()
