"""Tests for vmsandbox.ssh against a real dropbear server on 127.0.0.1.

The server runs in its own mount namespace (``unshare -m``) where a temporary directory is
bind-mounted over /root (so it reads our authorized_keys, never the real /root/.ssh) and root's
login shell is busybox sh, as in the tiny box. Needs root, unshare, dropbear, busybox, ssh-keygen.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import paramiko
import pytest

from vmsandbox.exceptions import (
    ConfigError, GuestUnreachableError, NotFoundError, ProviderError, SecurityError,
)
from vmsandbox.ssh import SSHSession

REQUIRED = ("unshare", "dropbear", "dropbearkey", "busybox", "ssh-keygen")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in REQUIRED),
    reason=f"needs root and {', '.join(REQUIRED)}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DropbearServer:
    """A dropbear on 127.0.0.1:port; ``restart`` kills it and every connection, like a guest reboot."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.home = workdir / "home"
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        self.home.chmod(0o700)
        self.host_key_file = workdir / "hostkey"
        subprocess.run(["dropbearkey", "-t", "ed25519", "-f", self.host_key_file], check=True,
                       capture_output=True)
        pub = subprocess.run(["dropbearkey", "-y", "-f", self.host_key_file], check=True,
                             capture_output=True, text=True).stdout
        self.host_key = next(line for line in pub.splitlines() if line.startswith("ssh-ed25519"))
        self.user_key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.user_key], check=True)
        self.rsa_key = workdir / "id_rsa"
        paramiko.RSAKey.generate(2048).write_private_key_file(str(self.rsa_key))
        (self.home / ".ssh" / "authorized_keys").write_text(
            Path(f"{self.user_key}.pub").read_text()
            + f"ssh-rsa {paramiko.RSAKey.from_private_key_file(str(self.rsa_key)).get_base64()}\n")
        (workdir / "bin").mkdir()
        (workdir / "bin" / "sh").symlink_to(shutil.which("busybox"))
        passwd = Path("/etc/passwd").read_text().splitlines()
        (workdir / "passwd").write_text("\n".join(
            ":".join(line.split(":")[:6] + [str(workdir / "bin" / "sh")]) if line.startswith("root:") else line
            for line in passwd) + "\n")
        (workdir / "shells").write_text(Path("/etc/shells").read_text() + f"{workdir / 'bin' / 'sh'}\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        w = self.workdir
        script = (f"mount --bind {self.home} /root && mount --bind {w}/passwd /etc/passwd && "
                  f"mount --bind {w}/shells /etc/shells && exec dropbear -F -E -s "
                  f"-r {self.host_key_file} -p 127.0.0.1:{self.port} -P {w}/dropbear.pid")
        self.process = subprocess.Popen(["unshare", "-m", "sh", "-c", script],
                                        stdout=subprocess.DEVNULL, stderr=open(w / "dropbear.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dropbear did not start: {(w / 'dropbear.log').read_text()}")

    def _descendants(self, pid: int) -> list[int]:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [d for c in map(int, children) for d in (c, *self._descendants(c))]

    def stop(self) -> None:
        if self.process is None:
            return
        for pid in [self.process.pid, *self._descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = DropbearServer(tmp_path_factory.mktemp("dropbear"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def session(server):
    sess = SSHSession("127.0.0.1", server.port, "root", server.user_key, server.host_key, connect_timeout=5)
    sess.wait_ready(10)
    yield sess
    sess.close()


def process_gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` no longer exists or is a zombie (this machine's init reaps slowly)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------ execute

def test_stdout_stderr_and_exit_codes(session):
    result = session.execute("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert not result.timed_out and not result.truncated and not result.succeeded
    assert session.execute("true").succeeded
    assert session.execute("false").exit_code == 1


def test_syntax_error_is_a_normal_result(session):
    result = session.execute("echo 'unterminated")
    assert result.exit_code == 2 and "unterminated" in result.stderr and result.stdout == ""


def test_stdin_is_fed_then_closed(session):
    assert session.execute("cat; echo done", stdin="line 1\nline 2\n").stdout == "line 1\nline 2\ndone\n"
    payload = os.urandom(3 << 20)
    result = session.execute("sha256sum", stdin=payload)
    assert result.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert session.execute("cat").stdout == ""          # no stdin: EOF at once, no hang


def test_env_values_are_quoted(session):
    env = {"A": "it's a \"test\" $HOME `id` ; exit 9", "B": "two  spaces", "EMPTY": ""}
    result = session.execute('printf "%s|%s|%s" "$A" "$B" "$EMPTY"', env=env)
    assert result.exit_code == 0 and result.stdout == "|".join(env.values())
    with pytest.raises(ConfigError, match="invalid environment variable name"):
        session.execute("true", env={"A;reboot": "x"})


def test_working_dir(session, tmp_path):
    (tmp_path / "dir with space").mkdir()
    result = session.execute("pwd; ls", working_dir=str(tmp_path / "dir with space"))
    assert result.stdout == f"{tmp_path / 'dir with space'}\n"
    missing = session.execute("echo should-not-run; echo nor-this", working_dir="/no/such/dir")
    assert missing.exit_code != 0 and missing.stdout == ""
    assert "/no/such/dir" in missing.stderr and "No such file" in missing.stderr


def test_utf8_decoding_replaces_invalid_bytes(session):
    result = session.execute(r"printf 'caf\303\251 \377\n'")
    assert result.stdout == "café \ufffd\n"


def test_large_output_on_both_streams_is_capped_without_deadlock(session):
    size, cap = 40 << 20, 16 << 20
    streamed = {"out": 0, "err": 0}
    tracemalloc.start()
    try:
        started = time.monotonic()
        result = session.execute(
            f"head -c {size} /dev/zero | tr '\\0' o & head -c {size} /dev/zero | tr '\\0' e >&2; wait",
            timeout=120, max_output=cap,
            on_stdout=lambda chunk: streamed.__setitem__("out", streamed["out"] + len(chunk)),
            on_stderr=lambda chunk: streamed.__setitem__("err", streamed["err"] + len(chunk)))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0 and not result.timed_out and result.truncated
    assert len(result.stdout) == cap and set(result.stdout) == {"o"}
    assert len(result.stderr) == cap and set(result.stderr) == {"e"}
    assert streamed == {"out": cap, "err": cap}          # the stream is capped like the result; the rest dropped
    # two capped buffers and their decoded strings (~64 MiB), not 80 MiB of input twice over
    assert peak < 100 << 20, f"peak traced memory {peak >> 20} MiB"
    print(f"\n80 MiB capped in {elapsed:.2f}s, peak traced memory {peak >> 20} MiB")


def test_small_cap_and_live_chunks(session):
    chunks: list[bytes] = []
    result = session.execute("echo 0123456789", max_output=4, on_stdout=chunks.append)
    assert result.stdout == "0123" and result.truncated and b"".join(chunks) == b"0123"


def test_timeout_kills_the_command_and_its_children(session, tmp_path):
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = session.execute(f"echo started; sleep 1000 & echo $! > {pid_file}; sleep 1001; echo never",
                             timeout=1)
    elapsed = time.monotonic() - started
    assert result.timed_out and result.exit_code is None and not result.succeeded
    assert result.stdout == "started\n"
    assert 1 <= elapsed < 4
    child = int(pid_file.read_text())
    assert process_gone(child), f"background child {child} survived the timeout"
    assert session.execute("echo still usable").stdout == "still usable\n"   # connection kept


def test_concurrent_commands_share_one_connection(session):
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = session.execute(f"sleep 0.3; echo {i}").stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i}\n" for i in range(6)}
    assert time.monotonic() - started < 1.5              # ran at once, not one after another


def test_dead_connection_is_reopened(server, session):
    assert session.execute("echo before").stdout == "before\n"
    server.restart()                                     # every connection dies, like a guest reboot
    assert session.execute("echo after").stdout == "after\n"
    assert session.is_alive()


def test_transport_failure_during_a_command_raises_provider_error(server, session):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            session.execute("sleep 30", timeout=60)
        except BaseException as exc:                      # noqa: BLE001 - checked below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    server.restart()
    thread.join(20)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ProviderError), errors
    assert not isinstance(errors[0], (paramiko.SSHException, OSError))


# ------------------------------------------------------------------ host keys and readiness

def test_host_key_mismatch_is_refused(server, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", other], check=True, capture_output=True)
    wrong = next(line for line in subprocess.run(["dropbearkey", "-y", "-f", other], check=True,
                 capture_output=True, text=True).stdout.splitlines() if line.startswith("ssh-ed25519"))
    seen: list[str] = []
    sess = SSHSession("127.0.0.1", server.port, "root", server.user_key, wrong, on_new_host_key=seen.append)
    with pytest.raises(SecurityError, match="does not match the pinned key"):
        sess.wait_ready(5)
    with pytest.raises(SecurityError):
        sess.execute("true")
    assert seen == [] and not sess.is_alive()


def test_pinned_key_type_not_offered_is_refused(server):
    # dropbear 2022.83 advertises rsa-sha2-* without an RSA key and drops the connection (OpenSSH
    # servers make paramiko say "no acceptable host key" -> SecurityError): refused either way.
    rsa_pin = f"ssh-rsa {paramiko.RSAKey.generate(2048).get_base64()}"
    sess = SSHSession("127.0.0.1", server.port, "root", server.user_key, rsa_pin)
    with pytest.raises((SecurityError, GuestUnreachableError)):
        sess.wait_ready(2)
    assert not sess.is_alive()


def test_trust_on_first_use_records_then_pins(server):
    seen: list[str] = []
    with SSHSession("127.0.0.1", server.port, "root", server.user_key, None, on_new_host_key=seen.append) as sess:
        sess.wait_ready(10)
        assert seen == [" ".join(server.host_key.split()[:2])]
        assert sess.host_key == seen[0]
    with SSHSession("127.0.0.1", server.port, "root", server.user_key, seen[0]) as pinned:
        assert pinned.execute("echo pinned").stdout == "pinned\n"
    assert len(seen) == 1


def test_rsa_user_key_and_refused_key(server, tmp_path):
    with SSHSession("127.0.0.1", server.port, "root", server.rsa_key, server.host_key) as sess:
        assert sess.execute("echo rsa").stdout == "rsa\n"
    stranger = tmp_path / "stranger"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(stranger))
    started = time.monotonic()
    with pytest.raises(ProviderError, match="refused key"):
        SSHSession("127.0.0.1", server.port, "root", stranger, server.host_key).wait_ready(10)
    assert time.monotonic() - started < 5                # not retried until the timeout
    with pytest.raises(NotFoundError):
        SSHSession("127.0.0.1", server.port, "root", tmp_path / "absent", None)


def test_wait_ready_on_a_silent_port_names_port_and_console_tail(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("".join(f"boot line {i}\n" for i in range(1, 31)))
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(key))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)                                  # accepts TCP (kernel backlog), never speaks
    port = listener.getsockname()[1]
    ticks: list[float] = []
    try:
        started = time.monotonic()
        with pytest.raises(GuestUnreachableError) as info:
            SSHSession("127.0.0.1", port, "root", key, None).wait_ready(3, console_log=console,
                                                                          progress=ticks.append)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    message = str(info.value)
    assert 3 <= elapsed < 5
    assert f"127.0.0.1:{port}" in message and str(console) in message and "within 3." in message
    assert "boot line 30" in message and "boot line 16" in message and "boot line 15\n" not in message
    assert info.value.console_log == str(console)
    assert len(ticks) >= 2 and ticks == sorted(ticks)


def test_wait_ready_retries_until_the_server_comes_up(tmp_path):
    srv = DropbearServer(tmp_path / "late")
    sess = SSHSession("127.0.0.1", srv.port, "root", srv.user_key, srv.host_key)
    starter = threading.Timer(1.0, srv.start)
    starter.start()
    try:
        waited = sess.wait_ready(15)
        assert 0.9 <= waited < 10
        assert sess.execute("echo up").stdout == "up\n"
    finally:
        starter.join()
        sess.close()
        srv.stop()


# ------------------------------------------------------------------ file copy

def test_put_get_round_trip_of_a_binary_file(session, tmp_path):
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(5 << 20) + b"\x00\xff\n\r")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    remote = str(tmp_path / "remote dir")
    os.mkdir(remote)
    session.put(source, f"{remote}/blob 'copy'.bin", mode=0o640)
    check = session.execute(f"sha256sum \"{remote}/blob 'copy'.bin\"; stat -c %a \"{remote}/blob 'copy'.bin\"")
    assert check.stdout.split()[0] == digest and check.stdout.split()[-1] == "640"
    back = tmp_path / "back.bin"
    session.get(f"{remote}/blob 'copy'.bin", back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "blob.bin", "remote dir"]


def test_copy_errors(session, tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        session.get(str(tmp_path / "absent"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []                # no partial file left behind
    with pytest.raises(ConfigError, match="is a directory.*-r"):
        session.get(str(tmp_path), tmp_path / "out")
    with pytest.raises(NotFoundError, match="no such local directory"):
        session.get("/etc/hostname", tmp_path / "nope" / "out")
    source = tmp_path / "small"
    source.write_bytes(os.urandom(1 << 20))
    with pytest.raises(NotFoundError, match="no such directory"):
        session.put(source, str(tmp_path / "nodir" / "file"))
    (tmp_path / "into").mkdir()
    with pytest.raises(NotFoundError, match="no such local file"):
        session.put(tmp_path / "absent", "/tmp/x")
    session.put(source, str(tmp_path / "into"))          # an existing directory: the file goes in it
    with pytest.raises(ConfigError, match="is a directory"):
        session.put(tmp_path, "/tmp/x")                 # a directory needs recursive


# ------------------------------------------------------------------ measurements

def test_measure_round_trips(server, session):
    """Not a timing assertion: prints the numbers for the report (run with -s)."""
    times = []
    for _ in range(20):
        started = time.monotonic()
        assert session.execute("true").exit_code == 0
        times.append(time.monotonic() - started)
    fresh = []
    for _ in range(5):
        started = time.monotonic()
        with SSHSession("127.0.0.1", server.port, "root", server.user_key, server.host_key) as sess:
            assert sess.execute("true").exit_code == 0
        fresh.append(time.monotonic() - started)
    print(f"\nopen connection: median {statistics.median(times) * 1000:.1f} ms over 20; "
          f"new connection + command: median {statistics.median(fresh) * 1000:.1f} ms over 5")


def test_pgid_marker_is_split_from_output_in_any_chunking():
    from vmsandbox.ssh import _PGID_MARK, _PgidLine
    stream = b"motd from a chatty login shell\n" + _PGID_MARK + b"4242\nreal output\n"
    for size in (1, 3, 7, len(stream)):
        out: list[bytes] = []
        line = _PgidLine(out.append)
        for i in range(0, len(stream), size):
            line.feed(stream[i:i + size])
        line.flush()
        assert line.value == 4242
        assert b"".join(out) == b"motd from a chatty login shell\nreal output\n"
    unmarked: list[bytes] = []
    line = _PgidLine(unmarked.append)
    line.feed(b"no marker here")
    line.flush()
    assert line.value is None and unmarked == [b"no marker here"]


def test_interrupted_command_is_killed(session, tmp_path):
    pid_file = tmp_path / "child.pid"

    def interrupt(chunk: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.execute(f"sleep 1000 & echo $! > {pid_file}; sleep 0.2; echo go; wait", on_stdout=interrupt)
    assert process_gone(int(pid_file.read_text()))


class _Forwarder:
    """A TCP forwarder on 127.0.0.1 in front of ``port`` (QEMU's user network, played): replies
    are held back ``reply_delay`` s (a slow greeter); connections accepted before ``up_at``
    (monotonic time) are held open and never answered (a guest whose stack is not up yet)."""

    def __init__(self, port, reply_delay=0.0, up_at=0.0):
        self.port, self.reply_delay, self.up_at = port, reply_delay, up_at
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.stop = threading.Event()
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self):
        return self.listener.getsockname()[1]

    @staticmethod
    def _pipe(src, dst, delay=0.0):
        time.sleep(delay)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self):
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            if time.monotonic() < self.up_at:
                self.held.append(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.reply_delay), daemon=True).start()

    def close(self):
        self.stop.set()
        self.listener.close()
        for c in self.held:
            c.close()


def test_wait_ready_gives_a_slow_greeter_more_time_each_attempt(tmp_path, monkeypatch):
    """A server that needs 1.6 s to greet (OpenSSH in a TCG guest on a busy host) never makes a
    fixed 1 s banner timeout; the growing one reaches it on a later attempt (after two short
    ones here, not after as many as a boot takes)."""
    monkeypatch.setattr("vmsandbox.ssh._SHORT_ATTEMPTS", 2)
    srv = DropbearServer(tmp_path / "slow")
    srv.start()
    fwd = _Forwarder(srv.port, reply_delay=1.6)
    sess = SSHSession("127.0.0.1", fwd.address, "root", srv.user_key, srv.host_key)
    try:
        waited = sess.wait_ready(15)
        assert 1.6 <= waited < 10
        assert sess.execute("echo up").stdout == "up\n"
    finally:
        sess.close()
        fwd.close()
        srv.stop()


def test_wait_ready_keeps_attempts_short_while_the_guest_stack_is_down(tmp_path):
    """While a guest boots, QEMU's user network accepts on the host and then hangs (the guest does
    not answer its SYNs yet, and a connection made then only goes through after slirp's backoff):
    attempts must stay short so that a fresh one comes soon after the guest is up. Here
    connections made in the first 3.5 s hang forever, later ones pass at once; doubling banner
    timeouts (1, 2, 4 s) only got through at ~7.6 s, growing ones (1, 1.5, 2 s) at ~5.6 s."""
    srv = DropbearServer(tmp_path / "booting")
    srv.start()
    fwd = _Forwarder(srv.port, up_at=time.monotonic() + 3.5)
    sess = SSHSession("127.0.0.1", fwd.address, "root", srv.user_key, srv.host_key)
    started = time.monotonic()
    try:
        sess.wait_ready(20)
        waited = time.monotonic() - started
        assert 3.4 <= waited < 5.0, f"ready after {waited:.1f} s"
    finally:
        sess.close()
        fwd.close()
        srv.stop()


def test_signal_gate_holds_signals_back_until_a_checkpoint_or_its_end():
    """Ctrl-C during a command must not raise inside paramiko (a lock left held hung the clean-up):
    the gate records it and runs the real handler between paramiko calls, or when it closes."""
    from vmsandbox.ssh import _SignalGate
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with _SignalGate() as gate:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)                          # handlers would have run by now
            assert gate.pending == [signal.SIGINT, signal.SIGTERM]
            with pytest.raises(KeyboardInterrupt):
                gate.checkpoint()
            assert seen == []
        assert seen == [signal.SIGTERM]               # delivered when the gate closed
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_during_a_command_kills_it_and_raises(session, tmp_path):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(KeyboardInterrupt):
        session.execute(f"sleep 1000 & echo $! > {pid_file}; echo go; wait",
                        on_stdout=lambda chunk: os.kill(os.getpid(), signal.SIGINT))
    assert process_gone(int(pid_file.read_text()))
