"""``vmsandbox serve``: the one long-running service per state directory.

Owns what must happen whether or not anyone runs a command: the watchdog over every sandbox
(alerts and ``monitoring.limit_action``, from ``vmsandbox.watchdog``), ttl expiry and garbage
collection (``SandboxCore.gc`` every ``gc_interval`` seconds), the Prometheus endpoint (loopback
only, ``vmsandbox.metrics``), and its own bookkeeping: an exclusive lock and a pidfile in the state
directory (a second service on the same directory refuses to start), a log file, and a clean stop
on SIGTERM or SIGINT. ``service_status`` tells any other process whether a service is running.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .config import Config
from .exceptions import SandboxError, StateError

log = logging.getLogger("vmsandbox.service")

LOCK_FILE = "service.lock"
PID_FILE = "service.pid"
LOG_FILE = Path("logs") / "service.log"
_LOCK_WAIT = 1.0          # a status probe holds the lock for microseconds: retry that long before refusing


@dataclass(frozen=True)
class ServiceStatus:
    """Whether a service runs for a state directory, and what it said about itself."""
    running: bool
    pid: Optional[int]
    state_dir: Path
    detail: str = ""           # the pidfile's second line: "metrics http://127.0.0.1:9464/metrics" or ""


def _paths(state_dir: Path) -> tuple[Path, Path]:
    return Path(state_dir) / LOCK_FILE, Path(state_dir) / PID_FILE


def service_status(state_dir: Path | str) -> ServiceStatus:
    """Probe the service lock of ``state_dir`` (never blocks, never starts anything)."""
    state_dir = Path(state_dir)
    lock_path, pid_path = _paths(state_dir)
    if not lock_path.exists():
        return ServiceStatus(False, None, state_dir)
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return ServiceStatus(False, None, state_dir, "service lock unreadable")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return ServiceStatus(False, None, state_dir)
    except BlockingIOError:
        pid, detail = _read_pidfile(pid_path)
        return ServiceStatus(True, pid, state_dir, detail)
    finally:
        os.close(fd)


def _read_pidfile(path: Path) -> tuple[Optional[int], str]:
    try:
        lines = path.read_text().splitlines()
        return int(lines[0]), (lines[1] if len(lines) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""


def service_line(config: Config) -> str:
    """One line for people: is the service enforcing limits on this state directory?"""
    st = service_status(config.sandbox.state_path)
    if st.running:
        return f"service: running (pid {st.pid}); limits, ttl and gc are enforced"
    return ("service: not running; resource limits, ttl and gc are not enforced "
            "(start `vmsandbox serve`, see docs/operations.md)")


class Service:
    """The service over one state directory. ``run()`` blocks until ``stop()`` or a signal."""

    def __init__(self, core_factory: Callable[[], object], state_dir: Path, gc_interval: float = 60.0,
                 metrics_host: str = "127.0.0.1", metrics_port: Optional[int] = 9464,
                 log_file: Optional[Path] = None) -> None:
        if not gc_interval > 0:
            from .exceptions import ConfigError
            raise ConfigError(f"{gc_interval!r} must be above 0 seconds", "--gc-interval")
        self.core_factory = core_factory
        self.state_dir = Path(state_dir)
        self.gc_interval = gc_interval
        self.metrics_host, self.metrics_port = metrics_host, metrics_port
        self.log_file = Path(log_file) if log_file else self.state_dir / LOG_FILE
        self._stop = threading.Event()
        self._lock_fd: Optional[int] = None
        self.core = None

    # -- lock and pidfile ------------------------------------------------------------------
    def _acquire(self) -> None:
        lock_path, pid_path = _paths(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                pid, _ = _read_pidfile(pid_path)
                raise StateError(f"a vmsandbox service already runs for {self.state_dir}"
                                 + (f" (pid {pid})" if pid else "") + "; stop it first (SIGTERM)") from None
        self._lock_fd = fd

    def _write_pidfile(self, detail: str) -> None:
        _, pid_path = _paths(self.state_dir)
        tmp = pid_path.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n{detail}\n")
        os.replace(tmp, pid_path)

    def _release(self) -> None:
        _, pid_path = _paths(self.state_dir)
        pid, _ = _read_pidfile(pid_path)
        if pid == os.getpid():
            pid_path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)          # closing drops the flock
            self._lock_fd = None

    # -- logging ---------------------------------------------------------------------------
    def _log_to_file(self) -> logging.Handler:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_file)
        os.chmod(self.log_file, 0o600)               # audit lines carry command lines
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("vmsandbox")
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)              # alerts, limit actions and gc go to the log
        return handler

    # -- run -------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        self._stop.set()

    def run(self, install_signals: bool = True) -> None:
        """Take the lock, start the watchdog and the metrics endpoint, collect garbage every
        ``gc_interval`` until stopped, then stop everything and remove the pidfile.
        Raises StateError when another service holds the state directory."""
        self._acquire()
        handler = None
        server = None
        try:
            handler = self._log_to_file()
            if install_signals:
                signal.signal(signal.SIGTERM, self.stop)
                signal.signal(signal.SIGINT, self.stop)
            self.core = core = self.core_factory()
            from .watchdog import Watchdog
            if core.watchdog is None:
                core.watchdog = Watchdog(core)
            if not core.config.monitoring.enabled:
                log.warning("monitoring.enabled is false in the config; the service watches anyway")
            core.watchdog.start()
            detail = ""
            if self.metrics_port:
                from .metrics import serve_metrics
                server = serve_metrics(core.watchdog, self.metrics_host, self.metrics_port)
                detail = f"metrics http://{self.metrics_host}:{self.metrics_port}/metrics"
            self._write_pidfile(detail)
            log.info("service started: pid %d, state %s, watchdog every %.1f s (limit_action %s), gc every %.0f s%s",
                     os.getpid(), self.state_dir, core.config.monitoring.interval_seconds,
                     core.config.monitoring.limit_action, self.gc_interval, f", {detail}" if detail else "")
            core.store.audit("service", "started", pid=os.getpid())
            while not self._stop.is_set():
                self._gc(core)
                self._stop.wait(self.gc_interval)
            log.info("service stopping")
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            if self.core is not None:
                try:
                    self.core.store.audit("service", "stopped", pid=os.getpid())
                finally:
                    self.core.close()                # stops the watchdog, waits for background work
            self._release()
            log.info("service stopped")
            if handler is not None:
                logging.getLogger("vmsandbox").removeHandler(handler)
                handler.close()

    def _gc(self, core) -> None:
        try:
            for line in core.gc():
                log.info("gc removed %s", line)
        except SandboxError as exc:
            log.error("gc failed (will retry in %.0f s): %s", self.gc_interval, exc)
        except Exception:                             # the service outlives any one failure
            log.exception("gc failed (will retry in %.0f s)", self.gc_interval)


__all__ = ["Service", "ServiceStatus", "service_status", "service_line"]
