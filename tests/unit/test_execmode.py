"""Exec modes (vmsandbox.execmode): choosing a mode from the probe, the kill-handle line, the
per-sandbox memory, and each mode on a real dropbear + busybox sh on 127.0.0.1 (the server of
test_ssh.py): same output, exit codes, stdin, env and working directory, and a timeout that kills
children, grandchildren, a double-forked child and a nohup child.

``leader`` runs on a second server whose login shell leads its own session, as OpenSSH's does.
The cgroup mode uses this machine's cgroup v2 (as root, like the tiny box); conftest.py removes
the slots it makes at the end of the session.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmsandbox import execmode
from vmsandbox.sessions import SessionPool
from vmsandbox.ssh import SSHSession, _PgidLine

from .test_ssh import REQUIRED, DropbearServer, process_gone

real_server = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in (*REQUIRED, "setsid")),
    reason=f"needs root and {', '.join(REQUIRED)}, setsid")

# One line of pids: the shell, a child, a grandchild, a double-forked child, a nohup child.
TREE = ("echo $$ >{d}/pids; sleep 300 & echo $! >>{d}/pids; sh -c 'sleep 301 & echo $! >>{d}/pids; wait' & "
        "(sleep 302 & echo $! >>{d}/pids) ; nohup sleep 303 >/dev/null 2>&1 & echo $! >>{d}/pids; "
        "echo ready; wait")


# ------------------------------------------------------------------ pure

@pytest.mark.parametrize("output, mode", [
    ("stat 812 812\nhas-setsid\n", "leader"),                      # OpenSSH: the shell leads its group
    ("stat 161 160\nhas-setsid\nhas-cgroup-kill\n", "cgroup"),     # dropbear as root, cgroup v2
    ("stat 161 160\nhas-setsid\n", "setsid"),                      # dropbear, no cgroup.kill / not root
    ("stat 161 160\n", "fork"),                                    # no setsid
    ("has-setsid\nhas-cgroup-kill\n", "fork"),                     # no /proc: cannot tell
    ("", "fork"),
    ("stat 12 x\nhas-setsid\n", "fork"),                           # unreadable stat line
    ("Welcome! stat 1 1\nstat counts\nstat 161 160\nhas-setsid\n", "setsid"),   # a greeting first
])
def test_choose(output, mode):
    assert execmode.choose(output) == mode


def test_wrapper_rejects_unknown_modes():
    with pytest.raises(ValueError):
        execmode.Wrapper("magic")
    with pytest.raises(ValueError):
        execmode.save(Path("/nonexistent"), "magic")


def test_lanes_of_one_connection_try_different_slots():
    w = execmode.Wrapper("cgroup")
    firsts = set()
    for lane in range(4):
        cmd = w.command("true", lane)
        slots = cmd.split("for _vms_s in ", 1)[1].split(";", 1)[0].split()
        assert len(slots) == 4 and all(0 <= int(s) < execmode.CGROUP_SLOTS for s in slots)
        firsts.add(slots[0])
    assert len(firsts) == 4


@pytest.mark.parametrize("kind, number", [("pgid", 4242), ("cgroup", 7)])
def test_handle_line_is_split_from_output_in_any_chunking(kind, number):
    stream = b"motd\n" + execmode.MARK + f"{kind}:{number}\n".encode() + b"out\n" + execmode.MARK + b"pgid:1\n"
    for size in (1, 2, 5, len(stream)):
        out: list[bytes] = []
        line = _PgidLine(out.append)
        for i in range(0, len(stream), size):
            line.feed(stream[i:i + size])
        line.flush()
        assert (line.kind, line.value) == (kind, number)
        # only the first marker is the wrapper's; a later one is the command's output
        assert b"".join(out) == b"motd\nout\n" + execmode.MARK + b"pgid:1\n"


@pytest.mark.parametrize("bad", [b"pgid:", b"pgid:12x", b"cgroup:-1", b"shell:3", b"pgid:99999999999999"])
def test_malformed_handle_is_output_not_a_handle(bad):
    out: list[bytes] = []
    line = _PgidLine(out.append)
    line.feed(execmode.MARK + bad + b"\nrest")
    line.flush()
    assert line.value is None and b"".join(out) == execmode.MARK + bad + b"\nrest"


def test_kill_commands():
    assert execmode.kill_command("pgid", 12) == "kill -9 -12 2>/dev/null || kill -9 12"
    assert execmode.kill_command("cgroup", 3) == f"echo 1 >{execmode.CGROUP_DIR}/3/cgroup.kill"


def test_mode_file_round_trip_and_never_recreates_a_removed_sandbox(tmp_path):
    d = tmp_path / "sb"
    assert execmode.load(d) is None
    d.mkdir()
    execmode.save(d, "cgroup")
    assert execmode.load(d) == "cgroup" and [p.name for p in d.iterdir()] == ["exec-mode"]
    (d / "exec-mode").write_text("nonsense\n")
    assert execmode.load(d) is None                     # unknown: probe again
    shutil.rmtree(d)
    execmode.save(d, "setsid")                          # destroyed meanwhile: nothing is made
    assert not d.exists()


class _Recorder:
    def __init__(self) -> None:
        self.mode = self.on_mode = None

    def use_exec_mode(self, mode, on_mode):
        self.mode, self.on_mode = mode, on_mode

    def close(self) -> None:
        pass


def test_session_pool_hands_the_sandbox_mode_and_a_clone_inherits_it(tmp_path):
    from types import SimpleNamespace
    from vmsandbox.providers import Endpoint
    sessions = []
    provider = SimpleNamespace(
        endpoint=lambda info, box: Endpoint("127.0.0.1", info.ssh_port, "root", Path("/k"), None),
        open_session=lambda endpoint, on_new_host_key=None: sessions.append(_Recorder()) or sessions[-1])
    snapshots = {"sn-1": SimpleNamespace(sandbox_id="sb-src")}
    store = SimpleNamespace(find_snapshot=snapshots.get)
    pool = SessionPool(provider, store, lambda: {"tiny": None}, 10, lambda sid: tmp_path / sid)
    info = lambda sid, port, cloned="": SimpleNamespace(id=sid, provider="libvirt", box="tiny", ssh_port=port,  # noqa: E731
                                                         host_key="", domain=sid, cloned_from=cloned)
    (tmp_path / "sb-src").mkdir()
    (tmp_path / "sb-clone").mkdir()
    src = pool.get(info("sb-src", 1))
    assert src.mode is None                                         # never probed
    src.on_mode("cgroup")                                           # the session probed: remembered
    assert execmode.load(tmp_path / "sb-src") == "cgroup"
    assert pool.get(info("sb-src", 1)) is src                       # hot path: same session
    assert pool.get(info("sb-src", 2)).mode == "cgroup"             # moved (rollback): new session, known mode
    assert pool.get(info("sb-clone", 3, "sn-1")).mode == "cgroup"   # a clone starts with its source's
    assert execmode.load(tmp_path / "sb-clone") == "cgroup"         # and keeps it when the source goes
    assert pool.get(info("sb-new", 4, "sn-gone")).mode is None


# ------------------------------------------------------------------ real dropbear

class LeaderDropbear(DropbearServer):
    """dropbear whose login shell leads its own session, as under OpenSSH."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        shell = workdir / "bin" / "sh"
        shell.unlink()
        shell.write_text(f"#!{shutil.which('busybox')} sh\nexec {shutil.which('setsid')} {shutil.which('busybox')} sh \"$@\"\n")
        shell.chmod(0o755)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    plain = DropbearServer(tmp_path_factory.mktemp("dropbear"))
    leader = LeaderDropbear(tmp_path_factory.mktemp("leader"))
    plain.start()
    leader.start()
    yield {"plain": plain, "leader": leader}
    plain.stop()
    leader.stop()


def _probed_mode(server) -> str:
    with SSHSession("127.0.0.1", server.port, "root", server.user_key, server.host_key, connect_timeout=5) as s:
        s.wait_ready(10)
        return s.exec_mode


MODES = ["leader", "cgroup", "setsid", "fork"]


@pytest.fixture(params=MODES)
def moded(request, servers):
    mode = request.param
    server = servers["leader" if mode == "leader" else "plain"]
    if mode == "cgroup" and _probed_mode(server) != "cgroup":
        pytest.skip("this machine gives root no cgroup v2 with cgroup.kill")
    probed = []
    sess = SSHSession("127.0.0.1", server.port, "root", server.user_key, server.host_key, connect_timeout=5,
                      exec_mode=mode, on_exec_mode=probed.append)
    sess.wait_ready(10)
    yield sess
    sess.close()
    assert probed == []                                 # a known mode is never probed again


@real_server
def test_probe_picks_leader_for_a_leading_shell_and_cgroup_or_setsid_for_dropbear(servers):
    assert _probed_mode(servers["leader"]) == "leader"
    assert _probed_mode(servers["plain"]) in ("cgroup", "setsid")


@real_server
def test_probed_once_then_handed_on(servers):
    server = servers["plain"]
    probed = []
    with SSHSession("127.0.0.1", server.port, "root", server.user_key, server.host_key, connect_timeout=5,
                    on_exec_mode=probed.append) as s:
        for _ in range(3):
            assert s.execute("true").exit_code == 0
        s.close()                                       # a new connection keeps the mode
        assert s.execute("true").exit_code == 0
    assert probed == [s.exec_mode]


@real_server
def test_results_are_the_same_in_every_mode(moded, tmp_path):
    r = moded.execute("echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 7, False)
    r = moded.execute("wc -c", stdin=b"x" * 100000)
    assert r.stdout.split() == ["100000"]
    r = moded.execute('pwd; echo "$V"; echo "$0"; echo "$#"; set | grep -c "^_vms_"', working_dir=str(tmp_path),
                      env={"V": "it's $x"})
    lines = r.stdout.splitlines()
    assert lines[0] == str(tmp_path) and lines[1] == "it's $x" and lines[3] == "0" and lines[4] == "0", r
    r = moded.execute("for i in 1 2; do break; done; echo after-break")   # a `break` stays in the script
    assert r.stdout == "after-break\n"
    r = moded.execute("echo before; if then fi")
    assert r.exit_code != 0 and r.stdout == ""                            # a syntax error runs nothing
    r = moded.execute("printf '\\036vmsandbox-pgid:1\\n'; echo x")          # the command's own marker is output
    assert r.stdout == "\x1evmsandbox-pgid:1\nx\n"


@real_server
def test_timeout_kills_children_grandchildren_double_forked_and_nohup(moded, tmp_path):
    tmp_path.chmod(0o755)
    started = time.monotonic()
    r = moded.execute(TREE.format(d=tmp_path), timeout=1.5)
    assert r.timed_out and r.exit_code is None and "ready" in r.stdout
    assert time.monotonic() - started < 6
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 5, pids
    if moded.exec_mode == "fork" and shutil.which("setsid") is None:
        pytest.skip("without setsid only the shell is killed")
    assert [p for p in pids if not process_gone(p)] == []


@real_server
def test_a_finished_commands_background_child_survives_later_timeouts(moded):
    r = moded.execute("nohup sleep 305 >/dev/null 2>&1 & echo $!")
    child = int(r.stdout)
    try:
        assert moded.execute("sleep 300", timeout=0.5).timed_out
        assert not process_gone(child, within=0.5)
    finally:
        subprocess.run(["kill", "-9", str(child)], capture_output=True)


@real_server
def test_concurrent_commands_in_cgroup_mode_get_their_own_slots(servers):
    server = servers["plain"]
    with SSHSession("127.0.0.1", server.port, "root", server.user_key, server.host_key,
                    exec_mode="cgroup") as s:
        s.wait_ready(10)
        if s.exec_mode != "cgroup":
            pytest.skip("no cgroup mode here")
        out: list[str] = []
        threads = [threading.Thread(target=lambda: out.append(s.execute("cat /proc/self/cgroup; sleep 0.5").stdout))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        slots = [line for text in out for line in text.splitlines() if line.startswith("0::")]
        assert len(slots) == 4 and len(set(slots)) == 4, slots
        assert all("/vmsandbox/" in s for s in slots)
