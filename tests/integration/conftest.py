"""Fixtures for tests on real libvirt, real QEMU (TCG here) and real SSH.

Each test module gets its own state directory (QEMU must be able to read it: not under
pytest's 0700 tmp) and its own domain prefix, and fails if it leaves a domain, disk or memory
file behind."""
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from vmsandbox import SandboxCore
from vmsandbox.boxes import BoxStore
from vmsandbox.exceptions import NotFoundError

BOX_DIR = os.environ.get("VMSANDBOX_TEST_BOX_DIR", "/var/lib/vmsandbox/boxes")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_box():
    store = BoxStore(Path(BOX_DIR))
    if store.stale("tiny"):                  # missing, or built from an older recipe
        return store.build("tiny", force=True)
    return store.get("tiny")


def virsh_domains(prefix: str) -> list[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in out.split() if d.startswith(prefix)]


def make_config(state_dir: str, prefix: str, **sections) -> dict:
    cfg = {"sandbox": {"state_directory": state_dir, "box_directory": BOX_DIR, "domain_prefix": prefix,
                       "boot_timeout_seconds": 90},
           "monitoring": {"enabled": False}}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


class Env:
    """A state directory, a domain prefix, and every SandboxCore opened on them."""

    def __init__(self) -> None:
        self.state_dir = tempfile.mkdtemp(prefix="vmsbx-it-", dir="/var/tmp")
        os.chmod(self.state_dir, 0o711)
        self.prefix = "vt" + uuid.uuid4().hex[:4] + "-"
        self.cores: list[SandboxCore] = []

    def config(self, **sections) -> dict:
        return make_config(self.state_dir, self.prefix, **sections)

    def core(self, **sections) -> SandboxCore:
        c = SandboxCore(config=self.config(**sections))
        self.cores.append(c)
        return c

    def leftovers(self) -> dict:
        state = Path(self.state_dir)
        return {"domains": virsh_domains(self.prefix),
                "layers": sorted(p.name for p in (state / "layers").glob("*")),
                "memory": sorted(p.name for p in (state / "memory").glob("*"))}

    def teardown(self) -> dict:
        core = self.cores[0] if self.cores else SandboxCore(config=self.config())
        for info in core.store.list_sandboxes():
            try:
                core.destroy(info.id)
            except Exception:
                pass
        for c in self.cores or [core]:
            c.snapshots.wait_background()
            c.close()
        left = self.leftovers()
        for d in left["domains"]:          # never leave a leak behind, even when the test fails
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", d], capture_output=True)
            subprocess.run(["virsh", "-c", "qemu:///system", "undefine", d], capture_output=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return left


@pytest.fixture(scope="module")
def env(tiny_box):
    e = Env()
    yield e
    left = e.teardown()
    assert left == {"domains": [], "layers": [], "memory": []}, f"leaked: {left}"


@pytest.fixture(scope="module")
def core(env):
    return env.core()


def assert_clean(env: Env, core: SandboxCore) -> None:
    """No domain, layer or memory file beyond what the remaining sandboxes and snapshots need
    (and the spare overlays the journal names for their next disk-only snapshots)."""
    core.snapshots.wait_background()
    known = {Path(l.ref).name for l in core.store.list_layers()} | {
        Path(j["data"]["ref"]).name for j in core.store.journal_entries() if j["operation"] == "spare"}
    mem = {Path(s.memory_ref).name for s in core.store.list_snapshots() if s.memory_ref}
    left = env.leftovers()
    domains = {i.domain for i in core.store.list_sandboxes()}
    assert set(left["domains"]) == domains, left
    assert set(left["layers"]) == known, (left, known)
    assert set(left["memory"]) == mem, (left, mem)
    assert core.tree.verify() == []
