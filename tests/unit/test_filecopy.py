"""Copies over SSH against the real local dropbear of test_ssh.py: size caps, nothing partial left
on errors, Ctrl-C or SIGTERM, copying into directories, directories with -r, modes kept, and a
hostile tar stream unpacked safely."""
from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.unit.test_ssh import pytestmark, server, session  # noqa: F401  (fixtures and skip rule)
from vmsandbox import filecopy
from vmsandbox.exceptions import ConfigError, NotFoundError, ProviderError, ResourceLimitError


def entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def no_cat_of(path: str, within: float = 5.0) -> bool:
    """True once no process reads ``path`` (the capped remote command was killed)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        r = subprocess.run(["pgrep", "-f", f"cat {path}"], capture_output=True)
        if r.returncode != 0:
            return True
        time.sleep(0.1)
    return False


def test_dev_zero_stops_at_the_cap_and_leaves_nothing(session, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    with pytest.raises(ResourceLimitError, match=r"larger than the copy limit of 4 MiB; nothing was kept"):
        session.get("/dev/zero", out / "zero", max_size=4 << 20)
    assert time.monotonic() - started < 10
    assert entries(out) == []
    assert no_cat_of("/dev/zero")
    assert session.execute("echo still-usable").stdout == "still-usable\n"


def test_cap_is_exact_and_put_is_refused_before_sending(session, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x" * 1000)
    session.put(src, str(tmp_path / "g"), max_size=1000)
    session.get(str(tmp_path / "g"), tmp_path / "h", max_size=1000)
    assert (tmp_path / "h").read_bytes() == b"x" * 1000
    with pytest.raises(ResourceLimitError):
        session.get(str(tmp_path / "g"), tmp_path / "i", max_size=999)
    with pytest.raises(ResourceLimitError):
        session.put(src, str(tmp_path / "j"), max_size=999)
    assert entries(tmp_path) == ["f", "g", "h"]


def test_copy_into_an_existing_directory_and_modes_kept(session, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    script = remote / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o750)
    here = tmp_path / "here"
    here.mkdir()
    written = session.get(str(script), here)                     # `cp NAME:/x DIR/`
    assert written == here / "run.sh" and (here / "run.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((here / "run.sh").stat().st_mode) == 0o750
    secret = tmp_path / "secret"
    secret.write_text("s")
    os.chmod(secret, 0o600)
    session.put(secret, str(remote))                              # `cp FILE NAME:/DIR`
    assert stat.S_IMODE((remote / "secret").stat().st_mode) == 0o600
    assert not [p for p in remote.iterdir() if p.name.startswith(".vmsandbox-copy")]


def test_directories_need_r_and_round_trip_with_it(session, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub" / "deep").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "deep" / "b.bin").write_bytes(os.urandom(70000))
    os.chmod(tree / "sub" / "deep" / "b.bin", 0o700)
    (tree / "link").symlink_to("a.txt")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ConfigError, match="-r"):
        session.get(str(tree), dest / "t")
    session.get(str(tree), dest, recursive=True)                  # into DIR: DIR/tree
    got = dest / "tree"
    assert (got / "a.txt").read_text() == "a" and os.readlink(got / "link") == "a.txt"
    assert (got / "sub" / "deep" / "b.bin").read_bytes() == (tree / "sub" / "deep" / "b.bin").read_bytes()
    assert stat.S_IMODE((got / "sub" / "deep" / "b.bin").stat().st_mode) == 0o700
    assert entries(dest) == ["tree"]
    with pytest.raises(ConfigError, match="already exists"):
        session.get(str(tree), dest, recursive=True)
    up = tmp_path / "up"
    up.mkdir()
    session.put(got, str(up / "copy"), recursive=True)
    assert (up / "copy" / "sub" / "deep" / "b.bin").read_bytes() == (tree / "sub" / "deep" / "b.bin").read_bytes()
    with pytest.raises(ResourceLimitError):
        session.get(str(tree), tmp_path / "small", recursive=True, max_size=50000)
    assert not (tmp_path / "small").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_missing_remote_and_local_directory_in_the_way(session, tmp_path):
    with pytest.raises(NotFoundError, match="no such file or directory"):
        session.get(str(tmp_path / "absent"), tmp_path / "x")
    f = tmp_path / "f"
    f.write_text("f")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "f").mkdir()
    with pytest.raises(ProviderError):                            # a directory where the file would go
        session.get(str(f), tmp_path / "blocker")
    assert entries(tmp_path / "blocker") == ["f"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_leave_no_partial_file(server, tmp_path, sig):
    """The CLI's handler turns SIGTERM into an exception; Ctrl-C already is one."""
    out = tmp_path / "out"
    out.mkdir()
    code = textwrap.dedent(f"""
        import sys, faulthandler
        faulthandler.dump_traceback_later(20, exit=True)   # a hang shows where it hangs (below)
        from vmsandbox.ssh import SSHSession
        from vmsandbox.cli.sandbox_cmds import _terminate_as_exception
        s = SSHSession("127.0.0.1", {server.port}, "root", {str(server.user_key)!r}, {server.host_key!r})
        s.wait_ready(10)
        print("ready", flush=True)
        with _terminate_as_exception():
            s.get("/dev/zero", {str(out / "zero")!r}, max_size=1 << 40)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline() == b"ready\n"
    deadline = time.monotonic() + 10
    while not any(p.name.endswith(".part") and p.stat().st_size > 1 << 20 for p in out.iterdir()):
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode in (143, -signal.SIGINT), err.decode(errors="replace")[-3000:]   # SystemExit(143) / KeyboardInterrupt
    assert entries(out) == []
    assert no_cat_of("/dev/zero")


def test_a_hostile_tar_stream_cannot_escape_or_plant_devices(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name, kind, extra in (("d/../../escape", tarfile.REGTYPE, {}), ("/abs", tarfile.REGTYPE, {})):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ProviderError, match="bad archive"):
        filecopy._untar(evil, tmp_path / "into", "test")
    with tarfile.open(evil, "w") as tar:
        link = tarfile.TarInfo("d/pw")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ProviderError, match="bad archive"):
        filecopy._untar(evil, tmp_path / "into2", "test")
    with tarfile.open(evil, "w") as tar:
        dev = tarfile.TarInfo("d/sda")
        dev.type, dev.devmajor, dev.devminor = tarfile.BLKTYPE, 8, 0
        tar.addfile(dev)
        suid = tarfile.TarInfo("d/suid")
        suid.size, suid.mode = 1, 0o4755
        tar.addfile(suid, io.BytesIO(b"x"))
    with pytest.raises(ProviderError, match="bad archive"):
        filecopy._untar(evil, tmp_path / "into3", "test")
    assert not (tmp_path.parent / "escape").exists() and not Path("/abs").exists()


class LyingGuest:
    """A guest that answers every copy script with what it likes."""
    where = "127.0.0.1:0"

    def __init__(self, stdout: bytes, code: int = 0) -> None:
        self.stdout, self.code = stdout, code

    def stream(self, script, stdin_chunks, on_stdout, on_stderr, timeout):
        for i in range(0, len(self.stdout), 1000):
            on_stdout(self.stdout[i:i + 1000])
        return self.code


def test_a_guest_cannot_turn_a_file_copy_into_a_directory_or_set_id_mode(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x/f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ProviderError, match="sent a directory for a file copy"):
        filecopy.get(LyingGuest(b"D\n" + buf.getvalue()), "/x", tmp_path / "out", 1 << 20)
    assert entries(tmp_path) == []
    filecopy.get(LyingGuest(b"F 6777\nabc"), "/x", tmp_path / "out", 1 << 20)
    assert (tmp_path / "out").read_bytes() == b"abc"
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) & 0o7000 == 0
    with pytest.raises(ProviderError, match="no copy header"):
        filecopy.get(LyingGuest(b"x" * 5000), "/x", tmp_path / "out2", 1 << 20)
    assert entries(tmp_path) == ["out"]
