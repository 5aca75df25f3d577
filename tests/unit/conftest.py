"""Shared unit-test fixtures: a SandboxCore on the fakes (no VM, no SSH)."""
import pytest

from vmsandbox.testing import fake_core

NO_POLICY = {"safety": {"validation": {"enabled": False}}}


@pytest.fixture
def core(tmp_path):
    """A fake core with the command policy off (tests of the policy turn it on themselves)."""
    c = fake_core(tmp_path, NO_POLICY)
    yield c
    c.close()
