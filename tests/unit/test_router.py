"""Several providers in one state directory (providers/router.py): each sandbox's calls reach the
provider its record names; references with a ``<provider>:`` prefix go to that provider; the
capabilities asked are the sandbox's own; gc and list_machines cover every provider in use."""
from pathlib import Path

import pytest

from vmsandbox import providers
from vmsandbox.exceptions import SandboxError
from vmsandbox.providers import Capability
from vmsandbox.providers.fake import FakeProvider
from vmsandbox.testing import fake_core

from .conftest import NO_POLICY

PREFIX = "fakectr:"


class FakeContainers(FakeProvider):
    """A second provider whose references are not file paths (like docker's) and that has no
    memory snapshots; its artifacts are still files underneath, behind the prefix."""
    name = "fakectr"
    ref_scheme = True
    capabilities = FakeProvider.capabilities - {Capability.MEMORY_SNAPSHOTS}
    machines: dict = {}

    def __init__(self, config=None, layout=None):
        super().__init__(config, layout)
        self.domains = FakeContainers.machines

    def box(self, source):
        from types import SimpleNamespace
        return SimpleNamespace(name=source, virtual_size=0, image=Path("/img"))

    def _write_layer(self, parent):
        return PREFIX + super()._write_layer(parent)

    def new_layer(self, parent_ref, size_bytes=None):
        return PREFIX + super().new_layer(parent_ref[len(PREFIX):], size_bytes)[len(PREFIX):]

    def delete_layer(self, ref):
        super().delete_layer(ref[len(PREFIX):])

    def check_layer(self, ref, parent_ref):
        return super().check_layer(ref[len(PREFIX):], parent_ref and parent_ref[len(PREFIX):])

    def stray_artifacts(self, known):
        return []

    def plan_snapshot(self, active_ref, memory):
        assert not memory
        return providers.SnapshotPlan(active_ref, PREFIX + super().plan_snapshot(active_ref, False).active_ref, None)

    def _carry_out(self, plan):
        super()._carry_out(providers.SnapshotPlan(plan.frozen_ref[len(PREFIX):], plan.active_ref[len(PREFIX):], None))

    def discard_snapshot(self, plan):
        Path(plan.active_ref[len(PREFIX):]).unlink(missing_ok=True)


@pytest.fixture
def core(tmp_path, monkeypatch):
    monkeypatch.setitem(providers.PROVIDERS, "fakectr", f"{__name__}.FakeContainers")
    FakeContainers.machines = {}
    c = fake_core(tmp_path, NO_POLICY)
    c.isolation["container_runtime"] = "fakectr"
    yield c
    c.close()


def test_each_sandbox_uses_its_own_provider(core):
    vm = core.create_sandbox("vm-1")
    ct = core.create_sandbox("ct-1", {"isolation_type": "container", "image": "some/image"})
    assert core.get(vm).provider == "fake" and core.get(ct).provider == "fakectr"
    assert core.get(ct).box == "fakectr:some/image"
    assert core.get(ct).domain in FakeContainers.machines and core.get(ct).domain not in core.provider.domains
    assert core.store.get_layer(core.get(ct).active_layer).ref.startswith(PREFIX)
    snap = core.create_snapshot(ct, "s")                       # disk-only: the default for a provider without memory
    assert core.store.get_snapshot(snap).memory_ref is None
    assert core.store.get_snapshot(core.create_snapshot(vm, "s")).memory_ref is not None
    assert core.rollback(ct, snap)
    clone = core.create_sandbox("ct-2", {"clone_from": snap})
    assert core.get(clone).provider == "fakectr"
    assert set(core.router.list_machines("vmsbx-")) == {core.get(s).domain for s in (vm, ct, clone)}
    core.pause(ct)
    assert FakeContainers.machines[core.get(ct).domain]["state"] == "paused"
    core.resume(ct)
    for sid in (clone, ct, vm):
        core.destroy(sid)
    core.snapshots.wait_background()
    assert FakeContainers.machines == {} and core.provider.domains == {}
    assert core.tree.verify() == [] and list((core.state_dir / "layers").iterdir()) == []


def test_memory_snapshot_refused_for_a_provider_without_it(core):
    ct = core.create_sandbox("ct-1", {"isolation_type": "container"})
    with pytest.raises(SandboxError, match="fakectr provider cannot take a snapshot with memory"):
        core.create_snapshot(ct, "m", memory=True)
    assert core.list_snapshots(ct) == []


def test_gc_removes_orphans_of_every_provider_in_use(core):
    ct = core.create_sandbox("ct-1", {"isolation_type": "container"})
    FakeContainers.machines["vmsbx-orphan-ctr"] = dict(FakeContainers.machines[core.get(ct).domain])
    done = core.gc()
    assert any("vmsbx-orphan-ctr" in line for line in done)
    assert "vmsbx-orphan-ctr" not in FakeContainers.machines


def test_top_level_isolation_keys(tmp_path):
    from vmsandbox.exceptions import ConfigError
    with pytest.raises(ConfigError, match="isolation_type"):
        _core(tmp_path, {"isolation_type": "jail"})
    with pytest.raises(ConfigError, match="container_runtime"):
        _core(tmp_path, {"container_runtime": "lxc"})


def _core(tmp_path, top):
    from vmsandbox import SandboxCore
    return SandboxCore(config={"sandbox": {"state_directory": str(tmp_path), "provider": "fake"}, **top},
                       start_watchdog=False)
