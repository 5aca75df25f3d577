"""The state directory's modes: created private, and every violation found with its fix."""
import os
import shutil
import stat
import subprocess

import pytest

from vmsandbox import perms
from vmsandbox.testing import fake_core


@pytest.fixture(autouse=True)
def reachable(monkeypatch, request):
    """pytest's tmp directories sit under a 0700 directory QEMU cannot pass; only the test of
    that very check sees it."""
    if request.node.name != "test_a_parent_qemu_cannot_pass_is_reported":
        monkeypatch.setattr(perms, "_can_search", lambda path, user: True)


@pytest.fixture
def core(tmp_path):
    """A fake core whose state directory holds nothing but what the core made."""
    c = fake_core(tmp_path / "state", {"safety": {"validation": {"enabled": False}}})
    c._boxes = type(c._boxes)(tmp_path / "fakeboxes")
    shutil.rmtree(tmp_path / "state" / "fakeboxes")
    yield c
    c.close()


def test_fake_core_state_dir_is_private_and_doctor_agrees(core):
    sd = core.state_dir
    assert stat.S_IMODE(sd.stat().st_mode) & 0o067 == 0
    sid = core.create_sandbox("p1")
    core.create_snapshot(sid, "s1")
    assert perms.check(sd) == []
    check = next(c for c in core.doctor() if c.name == "state permissions")
    assert check.ok, check.detail


def test_violations_name_the_path_and_the_exact_fix(core, tmp_path):
    sd = core.state_dir
    leak = sd / "memory" / "sn-x.save.zst"
    leak.write_bytes(b"guest ram")
    os.chmod(leak, 0o644)
    os.chmod(sd / "sandboxes", 0o755)
    found = {v.path: v for v in perms.check(sd)}
    assert set(found) == {str(leak), str(sd / "sandboxes")}
    ok, detail, fix = perms.summary(sd)
    assert not ok and str(leak) in detail and "file mode 644" in detail
    subprocess.run(fix, shell=True, check=True)          # the command doctor prints really fixes it
    assert perms.check(sd) == []


def test_many_files_get_one_find_command(tmp_path):
    sd = perms.private_dir(tmp_path / "st")
    perms.prepare_state_dir(sd)
    for i in range(5):
        (sd / f"f{i}").write_text("x")
        os.chmod(sd / f"f{i}", 0o664)
    ok, detail, fix = perms.summary(sd)
    assert not ok and "5 paths" in detail and fix.startswith("find ")
    subprocess.run(fix, shell=True, check=True)
    assert [v for v in perms.check(sd) if "file" in v.problem] == []


def test_open_private_narrows_an_existing_file(tmp_path):
    p = tmp_path / "x"
    p.write_text("old")
    os.chmod(p, 0o666)
    with perms.open_private(p) as fh:
        fh.write(b"new")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_bytes() == b"new"


def test_qemu_search_acl_grants_only_search(tmp_path):
    user = perms.qemu_user()
    d = perms.private_dir(tmp_path / "q", qemu_search=True)
    if user is None:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        return
    import pwd
    assert perms._acl_users(d) == {pwd.getpwnam(user).pw_uid: 1}
    assert stat.S_IMODE(d.stat().st_mode) == 0o710        # the group bits show the ACL mask (--x)
    assert perms.check(d) == []                          # the state dir itself may carry QEMU's search


def test_a_parent_qemu_cannot_pass_is_reported(tmp_path):
    user = perms.qemu_user()
    if user is None:
        pytest.skip("QEMU runs as root here")
    parent = tmp_path / "closed"
    parent.mkdir(mode=0o700)
    os.chmod(parent, 0o700)
    sd = parent / "state"
    sd.mkdir()
    perms.prepare_state_dir(sd)
    found = [v for v in perms.check(sd) if v.path == str(parent)]
    assert found and found[0].fix == f"setfacl -m u:{user}:x {parent}"
    subprocess.run(found[0].fix, shell=True, check=True)
    assert [v for v in perms.check(sd) if v.path == str(parent)] == []


def test_no_acl_support_falls_back_to_search_for_all(tmp_path, monkeypatch):
    import errno
    if perms.qemu_user() is None:
        pytest.skip("QEMU runs as root here")

    def no_acls(*args):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")
    monkeypatch.setattr(perms.os, "setxattr", no_acls)
    d = perms.private_dir(tmp_path / "nfs", qemu_search=True)
    assert stat.S_IMODE(d.stat().st_mode) == 0o711
    assert [v.problem for v in perms.check(d)] == ["directory mode 711"]
