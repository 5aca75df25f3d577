"""Shared unit-test fixtures: a SandboxCore on the fakes (no VM, no SSH); the removal of the
cgroup slots that commands on the test dropbear servers (root, this machine's cgroup v2: exec
mode ``cgroup``) make."""
import time
from pathlib import Path

import pytest

from vmsandbox.testing import fake_core

NO_POLICY = {"safety": {"validation": {"enabled": False}}}


@pytest.fixture
def core(tmp_path):
    """A fake core with the command policy off (tests of the policy turn it on themselves)."""
    c = fake_core(tmp_path, NO_POLICY)
    yield c
    c.close()


def cgroup2_mount() -> str | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return fields[1]
    return None


def remove_cgroup_slots() -> None:
    """Remove the slot cgroups the exec mode ``cgroup`` made on this machine (the test dropbear runs
    as root here, as in the tiny box)."""
    root = cgroup2_mount()
    if root is None:
        return
    top = Path(root, "vmsandbox")
    deadline = time.monotonic() + 20
    for slot in top.glob("[0-9]*"):
        while True:
            try:
                slot.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:                 # EBUSY until its killed processes are reaped
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    try:
        top.rmdir()
    except OSError:
        pass


@pytest.fixture(scope="session", autouse=True)
def _cgroup_slots_removed():
    made = not Path(cgroup2_mount() or "/nonexistent", "vmsandbox").exists()
    yield
    if made:
        remove_cgroup_slots()
