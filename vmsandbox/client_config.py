"""What an SSH client outside vmsandbox (OpenSSH, scp, sftp, rsync, ansible) needs to reach a sandbox.

Owns the client's connection settings (user, key, the pinned host key, the ProxyCommand) in one
place, so ``vmsandbox ssh``, ``ssh-config`` and the ansible inventory cannot drift apart, and the
``ssh-proxy`` byte pump those settings point at.

Why a ProxyCommand: a rollback or a restart boots a new guest on a new forwarded port. The client
settings therefore never name a port; ``vmsandbox ssh-proxy NAME`` looks the sandbox's current
port up in the state store at each connection. The host key is pinned under a stable alias
(``HostKeyAlias vmsandbox-<id>``) in a per-sandbox known_hosts file, which the proxy refreshes
from the record before each connection, so a re-pinned key is picked up as well.
"""
from __future__ import annotations

import os
import select
import shlex
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .exceptions import ConfigError, NotFoundError, ProviderError, ResourceLimitError, StateError
from .models import SandboxInfo, SandboxState
from .perms import write_private

#: states in which a new guest is on its way: the proxy waits for it instead of failing
_COMING = (SandboxState.CREATING, SandboxState.ROLLING_BACK)


def pinned_host_key(boxes, info: SandboxInfo) -> Optional[str]:
    """The host key the sandbox's guest must present: its own pin, else its box's (the same choice
    as ``Provider.endpoint``)."""
    return info.host_key or boxes.get(info.box).host_key


def host_key_alias(info: SandboxInfo) -> str:
    return f"vmsandbox-{info.id}"


def known_hosts_path(state_dir: Path, info: SandboxInfo) -> Path:
    return Path(state_dir) / "sandboxes" / info.id / "known_hosts"


def write_known_hosts(state_dir: Path, info: SandboxInfo, host_key: str) -> Path:
    """(Re)write the sandbox's known_hosts file when its content differs; atomic for concurrent readers."""
    path = known_hosts_path(state_dir, info)
    try:
        if path.read_text() == f"{host_key_alias(info)} {' '.join(host_key.split()[:2])}\n":
            return path                 # the usual case: no need to load paramiko to check the key
    except OSError:
        pass
    from .ssh import normalize_host_key
    line = f"{host_key_alias(info)} {normalize_host_key(host_key)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".known_hosts.{os.getpid()}.{threading.get_ident()}")
    write_private(tmp, line)
    os.replace(tmp, path)
    return path


def vmsandbox_command(config_path: str | os.PathLike | None, state_dir: str | os.PathLike) -> list[str]:
    """The absolute command line that runs this vmsandbox with the same config and state directory."""
    script = Path(sys.executable).parent / "vmsandbox"      # the console script of this interpreter
    if not script.exists():
        found = shutil.which("vmsandbox")
        script = Path(found) if found else None
    argv = [str(script.absolute())] if script else [sys.executable, "-m", "vmsandbox"]
    config_path = config_path or os.environ.get("VMSANDBOX_CONFIG")
    if config_path:
        argv += ["--config", os.path.abspath(config_path)]
    return argv + ["--state-dir", os.path.abspath(state_dir)]


@dataclass(frozen=True)
class ClientSettings:
    """How an OpenSSH client reaches one sandbox. Render with ``config_block``, ``ssh_args`` or
    ``ansible_vars``; all three carry the same options."""
    name: str
    user: str
    identity_file: Path
    known_hosts: Path
    host_key_alias: str
    proxy_command: tuple[str, ...]

    @property
    def aliases(self) -> tuple[str, str]:
        """The names the config answers to: the sandbox's own and the prefixed one."""
        return (self.name, f"vmsandbox-{self.name}")

    def options(self) -> list[tuple[str, str]]:
        """OpenSSH options in ssh_config order (values unquoted, '%' escaped)."""
        def pct(value: object) -> str:          # ssh expands %-tokens in these options
            return str(value).replace("%", "%%")
        return [
            # Never resolved or dialled with a ProxyCommand, but it is ssh's %h (in ControlPath and
            # such): one name per sandbox, so connection sharing never mixes two sandboxes up.
            ("HostName", self.host_key_alias),
            ("User", self.user),
            ("IdentityFile", pct(self.identity_file)),
            ("IdentitiesOnly", "yes"),
            ("PasswordAuthentication", "no"),
            ("UserKnownHostsFile", pct(self.known_hosts)),
            ("StrictHostKeyChecking", "yes"),
            ("HostKeyAlias", self.host_key_alias),
            ("ProxyCommand", pct(shlex.join(self.proxy_command))),
        ]

    def config_block(self) -> str:
        """A ``Host NAME vmsandbox-NAME`` block for ~/.ssh/config or ``ssh -F``."""
        def arg(key: str, value: str) -> str:
            # a newline or quote would end the value and start a directive of its own
            if not value or '"' in value or not value.isprintable():
                raise ConfigError(f"{value!r} cannot be written into an OpenSSH config", f"ssh config.{key}")
            # ProxyCommand takes the rest of the line verbatim (a shell command line);
            # other values with blanks need double quotes.
            if key != "ProxyCommand" and any(c.isspace() for c in value):
                return f'"{value}"'
            return value
        lines = [f"Host {' '.join(self.aliases)}"]
        lines += [f"    {k} {arg(k, v)}" for k, v in self.options()]
        return "\n".join(lines) + "\n"

    def ssh_args(self) -> list[str]:
        """``-o Key=Value`` arguments for ssh/scp/sftp (and rsync's ``-e``)."""
        args: list[str] = []
        for k, v in self.options():
            args += ["-o", f"{k}={v}"]
        return args

    def ansible_vars(self) -> dict:
        """Host variables for an ansible inventory (ssh connection plugin). ``ansible_host`` is
        the per-sandbox alias, never dialled (the ProxyCommand is): ansible's ControlPath hashes
        it, and 127.0.0.1 for every sandbox would share one master connection between them."""
        return {
            "ansible_host": self.host_key_alias,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.identity_file),
            "ansible_ssh_common_args": shlex.join(
                a for k, v in self.options() if k not in ("HostName", "User", "IdentityFile")
                for a in ("-o", f"{k}={v}")),
        }


def client_settings(core, name: str, config_path: str | os.PathLike | None = None) -> ClientSettings:
    """The client settings for sandbox ``name`` of ``core`` (writes its known_hosts file).

    ``config_path`` is the config file ``core`` was built from, if any, so the ProxyCommand runs
    with the same settings. Raises NotFoundError, or StateError when no host key is known yet.
    """
    info = core.store.get_sandbox(name)
    box = core.boxes.get(info.box)
    host_key = pinned_host_key(core.boxes, info)
    if not host_key:
        raise StateError(f"no host key known yet for {info.name!r}; run `vmsandbox exec {info.name} -- true` once",
                         info.state)
    known = write_known_hosts(core.state_dir, info, host_key)
    return ClientSettings(
        name=info.name, user=box.ssh_user, identity_file=Path(box.ssh_key).absolute(), known_hosts=known,
        host_key_alias=host_key_alias(info),
        proxy_command=tuple(vmsandbox_command(config_path, core.state_dir)
                            + ["ssh-proxy", "--box-dir", str(Path(core.config.sandbox.box_path).absolute()), info.name]))


# ---------------------------------------------------------------------------- ssh-proxy

def connect_current(store, boxes, state_dir: Path, name: str, wait: float = 60.0) -> tuple[socket.socket, SandboxInfo]:
    """A TCP connection to the sandbox's current SSH endpoint (127.0.0.1:port from the store).

    Re-reads the record on every attempt: while a rollback or a creation is under way, or while
    the new guest's forward is not listening yet, it retries for up to ``wait`` seconds.
    Raises NotFoundError, StateError/ResourceLimitError (stopped, paused, broken) or ProviderError.
    """
    deadline = time.monotonic() + wait
    while True:
        info = store.get_sandbox(name)
        if info.state in (SandboxState.PAUSED, SandboxState.STOPPED, SandboxState.BROKEN, SandboxState.DESTROYING):
            why = f" ({info.reason})" if info.reason else ""
            hint = {SandboxState.PAUSED: "resume", SandboxState.STOPPED: "start"}.get(info.state)
            msg = f"sandbox {info.name!r} is {info.state}{why}" + (f"; `vmsandbox {hint} {info.name}`" if hint else "")
            if info.reason.startswith("limit:"):
                raise ResourceLimitError(msg)
            raise StateError(msg, info.state)
        if info.state is SandboxState.RUNNING:
            try:
                host_key = pinned_host_key(boxes, info)
            except (NotFoundError, ConfigError):    # box gone or elsewhere: keep the file ssh-config wrote
                host_key = None
            if host_key:
                write_known_hosts(state_dir, info, host_key)
            try:
                return socket.create_connection(("127.0.0.1", info.ssh_port), timeout=10), info
            except OSError as exc:
                last = exc
        else:
            last = None
        if time.monotonic() >= deadline:
            where = f"127.0.0.1:{info.ssh_port}"
            raise ProviderError(f"sandbox {info.name!r} ({info.state}) does not answer on {where}"
                                + (f": {last.strerror or last}" if last else ""))
        time.sleep(0.25)


def pump(sock: socket.socket, stdin_fd: int = 0, stdout_fd: int = 1,
         still_open: Optional[Callable[[], None]] = None, every: float = 60.0) -> None:
    """Copy stdin to the socket and the socket to stdout until the guest closes the connection;
    ``still_open()`` runs every ``every`` seconds meanwhile (an open session is use, not idleness)."""
    sock.settimeout(None)

    def upstream() -> None:
        try:
            while True:
                data = os.read(stdin_fd, 65536)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, name="ssh-proxy-up", daemon=True).start()
    last = time.monotonic()
    while True:
        if still_open is not None:              # on the clock, busy or idle
            if time.monotonic() - last >= every:
                last = time.monotonic()
                try:
                    still_open()
                except Exception:               # bookkeeping never breaks the connection
                    pass
            if not select.select([sock], [], [], max(0.0, every - (time.monotonic() - last)))[0]:
                continue
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(stdout_fd, view):]
            except BrokenPipeError:
                return
    sock.close()


__all__ = ["ClientSettings", "client_settings", "connect_current", "pump", "pinned_host_key",
           "vmsandbox_command", "write_known_hosts"]


def run_proxy(config, name: str, wait: float, box_dir: Optional[Path] = None) -> None:
    """``vmsandbox ssh-proxy``: pump stdin/stdout to sandbox ``name``'s current endpoint. Opens the
    state store directly, not a ``SandboxCore`` (ssh starts a proxy for every connection: no
    recovery, provider or policy start-up on that path); audits the connection and keeps the
    sandbox in use while it is open."""
    from .boxes import BoxStore
    from .store import Store, default_db_path
    db = default_db_path(config.sandbox.state_path)
    if not db.exists():
        raise NotFoundError(f"no sandbox {name!r}: no state database at {db}")
    store = Store(db)
    try:
        sock, info = connect_current(store, BoxStore(box_dir or config.sandbox.box_path),
                                     config.sandbox.state_path, name, wait=wait)
        store.touch(info.id)
        store.audit("ssh-proxy", "ok", info, port=info.ssh_port)
        pump(sock, still_open=lambda: store.touch(info.id))     # gc's ttl counts an open session as use
    finally:
        store.close()
