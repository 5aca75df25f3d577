"""SSH to guests: one pinned, self-healing paramiko connection per guest, command execution
with timeouts and output caps, file copy over exec channels, and OpenSSH client config.

Owns every use of paramiko in vmsandbox; paramiko and socket errors are mapped here to
``ProviderError`` (``GuestUnreachableError`` when a guest never answers) and ``SecurityError``
(host-key mismatch). Guests run busybox + dropbear without sftp-server, so copies use ``cat``.

How a command runs: the requested script first prints a kill handle on stdout (its process
group, or the cgroup slot it moved into; stripped before anyone sees it), so a timeout can kill
the command and all its children from a second channel without killing the connection. How the
handle is made depends on the guest (``execmode``: probed once per sandbox, not per connection).
"""
from __future__ import annotations

import base64
import logging
import os
import random
import re
import select
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from vmsandbox._paramiko import paramiko   # without invoke: see there

from vmsandbox import execmode
from vmsandbox.filecopy import get as copy_out, put as copy_in
from vmsandbox._safe_text import visible
from vmsandbox.exceptions import (
    ConfigError, GuestUnreachableError, NotFoundError, ProviderError, SecurityError,
)
from vmsandbox.models import ExecutionResult

log = logging.getLogger("vmsandbox.ssh")
# paramiko logs every refused banner while a guest boots (expected) as an ERROR with a traceback.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

_CHUNK = 256 << 10                  # read/write granularity for channels and files
_BANNER_TIMEOUT = 1.0               # per attempt while waiting for a guest
_RETRY_WAIT = 0.2                   # pause between readiness attempts
_SHORT_ATTEMPTS = 8                 # timed-out attempts kept at _BANNER_TIMEOUT while no refusal was seen
_MAX_COMMANDS = 4                   # commands at once on one connection: dropbear 2022.83 refused channels
                                    # and then dropped the connection with 8 opening at once (measured)
_KILL_TIMEOUT = 2.0                 # how long the kill channel may take (each step)
_PGID_GRACE = 2.0                   # after a timeout, how long to wait for the pgid line
_CONSOLE_TAIL_LINES = 15
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_PGID_MARK = execmode.MARK + b"pgid:"
_FORK_WRAPPER = execmode.FORK_WRAPPER        # the wrapper that works on any POSIX guest (containers use it)


class _TransportFault(ProviderError):
    """The guest's SSH server is not answering (yet): worth retrying while a guest boots."""


class _Deadline(ProviderError):
    """A command's deadline passed before its channel could be opened (server stalled or gone)."""


class SSHSession:
    """One SSH connection to one guest, reopened when dead; thread-safe (several channels at once).

    ``host_key`` ("ssh-ed25519 AAAA...") is pinned: a server presenting another key raises
    ``SecurityError``. With ``host_key=None`` the first key seen is trusted, handed to
    ``on_new_host_key`` so the caller can record it, and pinned from then on.
    """

    def __init__(self, host: str, port: int, username: str, key_path: Path, host_key: str | None,
                 connect_timeout: float = 10.0,
                 on_new_host_key: Callable[[str], None] | None = None,
                 exec_mode: str | None = None,
                 on_exec_mode: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.key_path = Path(key_path)
        self.host_key = normalize_host_key(host_key) if host_key else None
        self.connect_timeout = connect_timeout
        self.on_new_host_key = on_new_host_key
        self._pkey = _load_private_key(self.key_path)
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        # How commands start (``execmode``): known for the sandbox (``exec_mode``), else probed on
        # first use and handed to ``on_exec_mode`` so the sandbox remembers it.
        self._wrapper: execmode.Wrapper | None = execmode.Wrapper(exec_mode) if exec_mode else None
        self.on_exec_mode = on_exec_mode
        self._slots = threading.BoundedSemaphore(_MAX_COMMANDS)
        self._lanes = list(range(_MAX_COMMANDS))   # which of the concurrent commands a command is
        self._probe_lock = threading.Lock()

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def use_exec_mode(self, mode: str | None, on_exec_mode: Callable[[str], None] | None) -> None:
        """Start commands the way ``mode`` says (known for this sandbox; None: probe on first use)
        and hand a probed mode to ``on_exec_mode``. The same as the constructor's arguments."""
        self.on_exec_mode = on_exec_mode
        if mode:
            self._wrapper = execmode.Wrapper(mode)

    @property
    def exec_mode(self) -> str | None:
        """How commands start in this guest (an ``execmode.MODES`` name; None until probed)."""
        return self._wrapper.mode if self._wrapper else None

    @property
    def where(self) -> str:
        """Where commands run, for messages (host:port; a container's name for containers)."""
        return self._where

    # ----------------------------------------------------------------- connection

    def wait_ready(self, timeout: float, console_log: Path | None = None,
                   progress: Callable[[float], None] | None = None) -> float:
        """Wait until the guest answers with an SSH banner, accepts our key and runs a command.

        Returns the seconds waited. Raises ``GuestUnreachableError`` (with the tail of
        ``console_log``) when it does not within ``timeout``, ``SecurityError`` on a host-key
        mismatch and ``ProviderError`` when the key is refused (neither is retried).
        """
        started = time.monotonic()
        deadline = started + timeout
        # An attempt that used its whole banner timeout met either a guest whose network stack is
        # not up yet (QEMU's user network accepts on the host, then its SYNs to the guest go
        # unanswered and are retried with a growing backoff: a long attempt waits that backoff
        # out, a fresh one sends a fresh SYN; measured: a 2 s attempt begun before the stack was
        # up ended 1.5 s after a fresh one would have got in), or a server too slow to greet
        # (OpenSSH re-executes itself per connection, seconds in a TCG guest on a loaded host;
        # cutting such attempts short forever is a livelock). Once an attempt failed fast (the
        # guest's stack answers: no listener yet), a timeout means a slow server: each next
        # attempt gets twice as long. Before that, attempts stay short for as long as a boot
        # takes (``_SHORT_ATTEMPTS``), then grow by half.
        banner = [_BANNER_TIMEOUT]
        stack_up = [False]
        timeouts = [0]

        def attempt() -> None:
            if progress is not None:
                progress(time.monotonic() - started)
            remaining = max(deadline - time.monotonic(), 0.05)
            with self._lock:
                if self._transport is not None and self._transport.is_active():
                    return
                self._close_transport()
                tried = time.monotonic()
                try:
                    self._transport = self._connect(banner_timeout=min(banner[0], remaining),
                                                    timeout=min(self.connect_timeout, remaining))
                except _TransportFault:
                    if time.monotonic() - tried < 0.9 * banner[0]:
                        stack_up[0] = True
                    else:
                        timeouts[0] += 1
                        if stack_up[0] or timeouts[0] >= _SHORT_ATTEMPTS:
                            longer = banner[0] * (2 if stack_up[0] else 1.5)
                            banner[0] = min(longer, max(self.connect_timeout, _BANNER_TIMEOUT))
                    raise

        try:
            from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed   # only here: it imports asyncio
            Retrying(retry=retry_if_exception_type(_TransportFault), stop=stop_after_delay(timeout),
                     wait=wait_fixed(_RETRY_WAIT), reraise=True)(attempt)
        except _TransportFault as exc:
            elapsed = time.monotonic() - started
            raise GuestUnreachableError(
                f"guest at {self._where} did not answer SSH within {elapsed:.1f}s (last error: {exc})"
                + _console_tail(console_log),
                console_log=str(console_log) if console_log else None) from exc
        # Ready means a command runs: the probe when the mode is not known yet, else an empty
        # command, which also makes the cgroup slots on a freshly booted guest (off the hot path).
        if self._wrapper is None:
            self._command_wrapper(deadline)
        elif self._run(":", None, _discard, _discard, max(deadline - time.monotonic(), 1.0)) is None:
            raise GuestUnreachableError(f"guest at {self._where} accepted SSH but did not run a command "
                                        f"within {timeout:.0f}s" + _console_tail(console_log),
                                        console_log=str(console_log) if console_log else None)
        waited = time.monotonic() - started
        log.debug("ssh %s ready after %.2fs", self._where, waited)
        return waited

    def repin(self, host_key: str) -> None:
        """Pin another host key (the guest's key was rotated); the next connection must show it."""
        with self._lock:
            self.host_key = normalize_host_key(host_key)
            self._close_transport()

    def is_alive(self) -> bool:
        transport = self._transport
        return transport is not None and transport.is_active() and transport.is_authenticated()

    def close(self) -> None:
        with self._lock:
            self._close_transport()

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _connect(self, banner_timeout: float, timeout: float) -> paramiko.Transport:
        """Open, verify and authenticate a new transport (caller holds the lock)."""
        started = time.monotonic()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise _TransportFault(f"cannot connect to {self._where}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # small requests: no Nagle delay
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = banner_timeout
            transport.auth_timeout = timeout
            if self.host_key:
                transport.get_security_options().key_types = _host_key_algorithms(self.host_key)
            try:
                transport.start_client(timeout=timeout)
            except paramiko.SSHException as exc:
                if "host key" in str(exc):      # the server does not even offer the pinned key type
                    raise SecurityError(f"SSH server at {self._where} does not offer the pinned "
                                        f"host key type {self.host_key.split()[0]}: {exc}") from exc
                raise
            self._verify_host_key(transport.get_remote_server_key())
            try:
                transport.auth_publickey(self.username, self._pkey)
            except paramiko.AuthenticationException as exc:
                raise ProviderError(f"SSH server at {self._where} refused key {self.key_path} "
                                    f"for user {self.username}: {exc}") from exc
        except (SecurityError, ProviderError):
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise _TransportFault(f"SSH handshake with {self._where} failed: "
                                  f"{str(exc) or type(exc).__name__}") from exc
        except BaseException:
            transport.close()
            raise
        log.debug("ssh %s@%s connected in %.3fs", self.username, self._where, time.monotonic() - started)
        return transport

    def _verify_host_key(self, key: paramiko.PKey) -> None:
        seen = f"{key.get_name()} {key.get_base64()}"
        if self.host_key is None:
            log.debug("ssh %s: trusting new host key %s", self._where, seen)
            if self.on_new_host_key is not None:
                self.on_new_host_key(seen)
            self.host_key = seen
        elif _key_blob(self.host_key) != key.asbytes():
            raise SecurityError(f"host key of {self._where} does not match the pinned key "
                                f"(expected {self.host_key[:60]}..., got {seen[:60]}...); refusing to connect")

    def _open_channel(self, command: str, deadline: float | None = None) -> paramiko.Channel:
        """Start ``command`` on a new channel, reopening a dead connection first.

        Connecting is retried with jittered backoff on transport faults (a busy guest's SSH server
        refuses unauthenticated connections beyond a few per source, and every host client arrives
        from one address), never past ``deadline`` (default: ``connect_timeout`` from now);
        ``_Deadline`` when it passes."""
        deadline = deadline if deadline is not None else time.monotonic() + self.connect_timeout
        failed: paramiko.Transport | None = None
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline(f"SSH server at {self._where} did not answer in time")
            try:
                with self._lock:
                    current = self._transport
                    if current is None or current is failed or not current.is_active():
                        self._close_transport()
                        budget = min(self.connect_timeout, remaining)
                        self._transport = self._connect(banner_timeout=budget, timeout=budget)
                    transport = self._transport
            except _TransportFault as exc:
                if time.monotonic() + delay >= deadline:
                    raise _Deadline(f"SSH server at {self._where} did not answer in time ({exc})") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            try:
                channel = transport.open_session(timeout=max(0.05, min(self.connect_timeout,
                                                                        deadline - time.monotonic())))
                channel.exec_command(command)
                return channel
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if time.monotonic() >= deadline:
                    raise _Deadline(f"SSH server at {self._where} did not open a channel in time ({exc})") from exc
                if transport.is_active():        # the server refused one channel: the connection is fine
                    log.debug("ssh %s: channel refused (%s), retrying", self._where, exc)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                if failed is transport:
                    raise ProviderError(f"cannot start a command on {self._where}: {exc}") from exc
                log.debug("ssh %s: connection dead (%s), reopening", self._where, exc)
                failed = transport

    def _command_wrapper(self, deadline: float | None = None) -> execmode.Wrapper:
        """How commands start on this guest (probed once, by one thread: the others wait for its
        answer)."""
        with self._probe_lock:
            return self._wrapper or self._probe_wrapper(deadline)

    def _probe_wrapper(self, deadline: float | None) -> execmode.Wrapper:
        if self._wrapper is None:
            channel = self._open_channel(execmode.PROBE, deadline)
            channel.settimeout(max(0.05, (deadline or time.monotonic() + self.connect_timeout) - time.monotonic()))
            try:
                out = b""
                while True:
                    chunk = channel.recv(_CHUNK)
                    if not chunk:
                        break
                    out += chunk
            except socket.timeout as exc:
                raise _Deadline(f"SSH server at {self._where} did not answer in time") from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ProviderError(f"connection to {self._where} failed: {exc}") from exc
            finally:
                channel.close()
            self._wrapper = execmode.Wrapper(execmode.choose(out.decode(errors="replace")))
            log.debug("ssh %s: exec mode %s", self._where, self._wrapper.mode)
            if self.on_exec_mode is not None:
                self.on_exec_mode(self._wrapper.mode)
        return self._wrapper

    # ----------------------------------------------------------------- commands

    def execute(self, command: str, timeout: float | None = None, working_dir: str | None = None,
                env: Mapping[str, str] | None = None, stdin: bytes | str | None = None,
                max_output: int = 16 << 20, on_stdout: Callable[[bytes], None] | None = None,
                on_stderr: Callable[[bytes], None] | None = None) -> ExecutionResult:
        """Run ``command`` with the guest's shell and return what it did.

        A non-zero exit is a normal result. Past ``timeout`` seconds the command and its
        children are killed and the result has ``timed_out=True, exit_code=None``. Each stream
        keeps at most ``max_output`` bytes (``truncated=True`` when more came; the rest is read and
        dropped while the command runs on); ``on_stdout`` / ``on_stderr`` get the same bytes as
        they arrive. Raises ``ProviderError`` when the
        connection fails, ``ConfigError`` for an invalid environment variable name.
        """
        script = _shell_script(command, working_dir, env)
        stdout, stderr = _CappedBuffer(max_output, on_stdout), _CappedBuffer(max_output, on_stderr)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        started = time.monotonic()
        try:
            exit_code = self._run(script, [data] if data else None, stdout.write, stderr.write, timeout)
        except _Deadline as exc:
            if timeout is None:
                raise ProviderError(str(exc)) from exc
            stderr.write(f"vmsandbox: {exc}; the command may not have run\n".encode())
            exit_code = None
        duration = time.monotonic() - started
        log.debug("ssh %s exec %r -> %s in %.3fs", self._where, command[:200],
                  "timeout" if exit_code is None else exit_code, duration)
        return ExecutionResult(stdout=stdout.text(), stderr=stderr.text(), exit_code=exit_code,
                               duration=duration, timed_out=exit_code is None,
                               truncated=stdout.truncated or stderr.truncated)

    def _run(self, script: str, stdin_chunks: Iterable[bytes] | None, on_stdout: Callable[[bytes], None],
             on_stderr: Callable[[bytes], None], timeout: float | None) -> int | None:
        """Run ``script`` in its own session, feeding ``stdin_chunks`` then EOF while draining both
        streams. Returns the exit code, or None when ``timeout`` expired and the session was killed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._slots.acquire(timeout=None if deadline is None else max(0.0, deadline - time.monotonic())):
            raise _Deadline(f"{_MAX_COMMANDS} commands already run on {self._where} and none ended in time")
        lane = self._lanes.pop()                  # list.pop/append are atomic; the semaphore bounds them
        try:
            with _SignalGate() as gate:
                return self._run_in_slot(script, stdin_chunks, on_stdout, on_stderr, timeout, deadline, lane, gate)
        finally:
            self._lanes.append(lane)
            self._slots.release()

    def _run_in_slot(self, script: str, stdin_chunks: Iterable[bytes] | None, on_stdout: Callable[[bytes], None],
                     on_stderr: Callable[[bytes], None], timeout: float | None, deadline: float | None,
                     lane: int = 0, gate: _SignalGate | None = None) -> int | None:
        wrapper = self._wrapper or self._command_wrapper(deadline)
        channel = self._open_channel(wrapper.command(script, lane), deadline)
        pgid = _PgidLine(on_stdout)
        feeder = _Feeder(channel, stdin_chunks)
        finished = False
        try:
            timed_out = False
            while True:
                if channel.recv_ready():
                    pgid.feed(channel.recv(_CHUNK))
                if channel.recv_stderr_ready():
                    on_stderr(channel.recv_stderr(_CHUNK))
                if channel.recv_ready() or channel.recv_stderr_ready():
                    continue
                if channel.eof_received or channel.closed:
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if pgid.value is not None or now >= deadline + _PGID_GRACE:
                        timed_out = True
                        break
                if gate is not None:
                    gate.checkpoint()                 # Ctrl-C / SIGTERM land here, not inside paramiko
                wait = 0.5 if deadline is None else min(0.5, max(deadline - now, 0.01))
                select.select([channel], [], [], wait)
            if timed_out:
                pgid.flush()
                self._kill_group(channel.get_transport(), pgid.value, pgid.kind)
                finished = True
                return None
            while channel.recv_ready():               # whatever arrived just before EOF
                pgid.feed(channel.recv(_CHUNK))
            while channel.recv_stderr_ready():
                on_stderr(channel.recv_stderr(_CHUNK))
            pgid.flush()
            if not channel.status_event.wait(self.connect_timeout):
                raise ProviderError(f"command on {self._where} ended without an exit status")
            status = channel.recv_exit_status()
            if status == -1:
                raise ProviderError(f"connection to {self._where} lost while a command was running")
            finished = True
            feeder.raise_error()
            return status
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ProviderError(f"connection to {self._where} failed during a command: {exc}") from exc
        finally:
            if not finished and pgid.value is not None:   # interrupted (Ctrl-C, a callback raised)
                self._kill_quietly(channel.get_transport(), pgid.value, pgid.kind)
            channel.close()
            feeder.join()

    def _kill_quietly(self, transport: paramiko.Transport, pgid: int, kind: str = "pgid") -> None:
        try:
            self._kill_group(transport, pgid, kind)
        except ProviderError as exc:
            log.debug("ssh %s: could not kill %s %d: %s", self._where, kind, pgid, exc)

    def _kill_group(self, transport: paramiko.Transport, pgid: int | None, kind: str = "pgid") -> None:
        """Kill a command's process group (or cgroup slot: ``kind``) from a second channel on the
        same connection (a new connection could reach a rebooted guest, where that number means
        another process).
        Bounded by ``_KILL_TIMEOUT``: a server that does not answer gets its connection closed
        (the next command reconnects) and the kill is reported unconfirmed, never waited for."""
        if pgid is None:
            log.warning("ssh %s: timed-out command never reported its process group", self._where)
            self._drop_if_wedged(transport)
            return
        try:
            channel = transport.open_session(timeout=_KILL_TIMEOUT)
            try:
                channel.exec_command(execmode.kill_command(kind, pgid))
                channel.shutdown_write()
                if not channel.status_event.wait(_KILL_TIMEOUT) or channel.recv_exit_status() != 0:
                    log.warning("ssh %s: could not confirm the kill of process group %d", self._where, pgid)
                    self._drop_if_wedged(transport)
                    return
            finally:
                channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.warning("ssh %s: cannot kill process group %d (%s); the server does not answer", self._where, pgid, exc)
            self._drop_if_wedged(transport)
            return
        log.debug("ssh %s: killed process group %d", self._where, pgid)

    def _drop_if_wedged(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._transport is transport:
                self._close_transport()

    # ----------------------------------------------------------------- file copy

    def put(self, local: Path, remote: str, mode: int | None = None, max_size: int = 1 << 30,
            recursive: bool = False) -> None:
        """Copy a local file (a directory with ``recursive``) to ``remote`` in the guest; see ``filecopy.put``."""
        started = time.monotonic()
        copy_in(self, Path(local), remote, max_size, recursive, mode)
        log.debug("ssh %s put %s -> %s in %.3fs", self._where, local, remote, time.monotonic() - started)

    def get(self, remote: str, local: Path, max_size: int = 1 << 30, recursive: bool = False) -> Path:
        """Copy ``remote`` from the guest to ``local`` (or into it); see ``filecopy.get``. Returns the path written."""
        started = time.monotonic()
        written = copy_out(self, remote, Path(local), max_size, recursive)
        log.debug("ssh %s get %s -> %s in %.3fs", self._where, remote, written, time.monotonic() - started)
        return written

    def stream(self, script: str, stdin_chunks: Iterable[bytes] | None, on_stdout: Callable[[bytes], None],
               on_stderr: Callable[[bytes], None], timeout: float | None) -> int | None:
        """Run a shell ``script`` as ``execute`` does, but with raw streams: stdin from ``stdin_chunks``,
        every output chunk to the callbacks (one that raises stops and kills the script). Returns the
        exit code (None on timeout)."""
        return self._run(script, stdin_chunks, on_stdout, on_stderr, timeout)


# --------------------------------------------------------------------- helpers

_GATED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupted(BaseException):
    """A gated signal whose action is the default one (terminate): unwinds the command so its
    clean-up runs; ``_SignalGate.__exit__`` then re-raises the signal itself."""


class _SignalGate:
    """Holds SIGINT, SIGTERM and SIGHUP back while a command's paramiko calls run in the main
    thread. A handler's exception (KeyboardInterrupt, the CLI's SystemExit on SIGTERM) raised
    inside one of paramiko's lock sections leaves that lock held, and the command's clean-up
    (kill, close) then waits on it forever: seen as a copy that never ended after Ctrl-C. A signal
    that arrives is recorded; its own handler runs at ``checkpoint()`` (between paramiko calls,
    so the clean-up runs as usual) or, if none came, when the gate closes. Other threads: no-op."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.saved: dict[int, object] = {}

    def __enter__(self) -> "_SignalGate":
        if threading.current_thread() is threading.main_thread():
            try:
                for signum in _GATED_SIGNALS:
                    if signal.getsignal(signum) is not None:    # None: a handler not set from Python
                        self.saved[signum] = signal.signal(signum, self._record)
            except (ValueError, OSError):       # not the main interpreter: leave signals alone
                self._restore()
        return self

    def _record(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)

    def checkpoint(self) -> None:
        """Run the original handler of a signal that arrived (it may raise)."""
        if not self.pending:
            return
        handler = self.saved.get(self.pending[0])
        if callable(handler):
            handler(self.pending.pop(0), None)
        elif handler == signal.SIG_IGN or handler is None:
            self.pending.pop(0)
        else:                                   # SIG_DFL: terminate, after the clean-up
            raise _Interrupted()

    def _restore(self) -> None:
        saved, self.saved = self.saved, {}
        for signum, handler in saved.items():
            signal.signal(signum, handler)

    def __exit__(self, *exc_info: object) -> None:
        pending, self.pending = self.pending, []
        self._restore()
        for signum in pending:                  # delivered now to the restored handlers
            signal.raise_signal(signum)


class _CappedBuffer:
    """Keeps the first ``limit`` bytes of a stream and passes the same bytes on to ``on_chunk``:
    a caller streaming the output sees exactly what the result keeps. The rest is read (so the
    command is never blocked on a full pipe) and dropped."""

    def __init__(self, limit: int, on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.limit = limit
        self.on_chunk = on_chunk
        self.data = bytearray()
        self.truncated = False

    def write(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:max(room, 0)]
        if chunk:
            self.data += chunk
            if self.on_chunk is not None:
                self.on_chunk(chunk)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class _PgidLine:
    """Takes the wrapper's marker line (the kill handle: ``kind`` "pgid" or "cgroup" and its
    number ``value``) out of stdout. Output before it (a chatty login shell) is passed on; without
    it after 64 KiB, everything is passed on. The first marker is the wrapper's: it prints it
    before the script runs."""

    def __init__(self, on_stdout: Callable[[bytes], None]) -> None:
        self.on_stdout = on_stdout
        self.value: int | None = None
        self.kind = "pgid"
        self._head: bytes | None = b""       # None once the marker was found or given up on

    def feed(self, chunk: bytes) -> None:
        if self._head is None:
            self.on_stdout(chunk)
            return
        self._head += chunk
        start = self._head.find(execmode.MARK)
        end = self._head.find(b"\n", start) if start >= 0 else -1
        if end >= 0:
            handle = execmode.parse_handle(self._head[start + len(execmode.MARK):end])
            if handle is not None:
                self.kind, self.value = handle
                self._head = self._head[:start] + self._head[end + 1:]
            self.flush()
        elif len(self._head) > 64 << 10:
            self.flush()

    def flush(self) -> None:
        head, self._head = self._head, None
        if head:
            self.on_stdout(head)


class _Feeder:
    """Sends stdin chunks on a thread (so a command that writes before reading cannot deadlock
    us), then EOF. A channel closed early by the command is not an error; a local read error is."""

    def __init__(self, channel: paramiko.Channel, chunks: Iterable[bytes] | None) -> None:
        self._error: BaseException | None = None
        if chunks is None:                                # nothing to send: EOF now, no thread
            channel.shutdown_write()
            self._thread = None
            return
        self._thread = threading.Thread(target=self._send, args=(channel, chunks),
                                        name="vmsandbox-ssh-stdin", daemon=True)
        self._thread.start()

    def _send(self, channel: paramiko.Channel, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                channel.sendall(chunk)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass                                  # the command closed its stdin or exited
        except BaseException as exc:              # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def raise_error(self) -> None:
        self.join()
        if self._error is not None:
            raise ProviderError(f"reading the data to send failed: {self._error}") from self._error


def _discard(_chunk: bytes) -> None:
    pass


def _shell_script(command: str, working_dir: str | None, env: Mapping[str, str] | None) -> str:
    """Prefix ``command`` with quoted environment assignments and a ``cd`` that stops it on failure."""
    prefix = ""
    if env:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ConfigError(f"invalid environment variable name {name!r}", "env")
        prefix += "export " + " ".join(f"{name}={shlex.quote(str(value))}" for name, value in env.items()) + "\n"
    if working_dir:
        prefix += f"cd -- {shlex.quote(working_dir)} || exit\n"
    return prefix + command


def _load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError as exc:
        raise NotFoundError(f"SSH key not found: {path}") from exc
    except (OSError, ValueError, paramiko.SSHException) as exc:
        raise ProviderError(f"cannot load SSH key {path}: {exc}") from exc


def normalize_host_key(keyline: str) -> str:
    """'type base64 [comment]' -> 'type base64'; rejects anything else."""
    fields = keyline.split()
    if len(fields) < 2:
        raise SecurityError(f"malformed host key {keyline!r}: expected 'TYPE BASE64'")
    _key_blob(" ".join(fields[:2]))
    return " ".join(fields[:2])


def _key_blob(keyline: str) -> bytes:
    try:
        return base64.b64decode(keyline.split()[1], validate=True)
    except (ValueError, IndexError) as exc:
        raise SecurityError(f"malformed host key {keyline!r}") from exc


def _host_key_algorithms(keyline: str) -> tuple[str, ...]:
    """Host-key algorithms to offer so the server presents the pinned key and no other."""
    key_type = keyline.split()[0]
    if key_type == "ssh-rsa":
        return ("rsa-sha2-512", "rsa-sha2-256")
    return (key_type,)


def _console_tail(console_log: Path | None) -> str:
    if console_log is None:
        return ""
    try:
        with open(console_log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64 * 1024, 0))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()[-_CONSOLE_TAIL_LINES:]
    except OSError as exc:
        return f"; console log {console_log} unreadable: {exc.strerror}"
    tail = visible("\n".join(lines), multiline=True) if lines else "(empty)"   # the guest wrote it
    return f"; console log: {console_log}, last lines:\n{tail}"


__all__ = ["SSHSession", "normalize_host_key"]
