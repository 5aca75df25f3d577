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
import shlex
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .exceptions import ProviderError, ResourceLimitError, StateError
from .models import SandboxInfo, SandboxState

#: states in which a new guest is on its way: the proxy waits for it instead of failing
_COMING = (SandboxState.CREATING, SandboxState.ROLLING_BACK)


def pinned_host_key(boxes, info: SandboxInfo) -> Optional[str]:
    """The host key the sandbox's guest must present (the same choice as ``SandboxCore.session``)."""
    return boxes.get(info.box).host_key or info.extra.get("host_key")


def host_key_alias(info: SandboxInfo) -> str:
    return f"vmsandbox-{info.id}"


def known_hosts_path(state_dir: Path, info: SandboxInfo) -> Path:
    return Path(state_dir) / "sandboxes" / info.id / "known_hosts"


def write_known_hosts(state_dir: Path, info: SandboxInfo, host_key: str) -> Path:
    """(Re)write the sandbox's known_hosts file when its content differs; atomic for concurrent readers."""
    from .ssh import normalize_host_key
    path = known_hosts_path(state_dir, info)
    line = f"{host_key_alias(info)} {normalize_host_key(host_key)}\n"
    try:
        if path.read_text() == line:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".known_hosts.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(line)
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
            ("HostName", "127.0.0.1"),          # unused with ProxyCommand; keeps -G output honest
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
        """Host variables for an ansible inventory (ssh connection plugin)."""
        return {
            "ansible_host": "127.0.0.1",
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
        proxy_command=tuple(vmsandbox_command(config_path, core.state_dir) + ["ssh-proxy", info.name]))


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
            cls = ResourceLimitError if info.reason.startswith("limit:") else StateError
            hint = {SandboxState.PAUSED: "resume", SandboxState.STOPPED: "start"}.get(info.state)
            msg = f"sandbox {info.name!r} is {info.state}{why}" + (f"; `vmsandbox {hint} {info.name}`" if hint else "")
            raise ResourceLimitError(msg) if cls is ResourceLimitError else StateError(msg, info.state)
        if info.state is SandboxState.RUNNING:
            host_key = pinned_host_key(boxes, info)
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


def pump(sock: socket.socket, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Copy stdin to the socket and the socket to stdout until the guest closes the connection."""
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
    while True:
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
