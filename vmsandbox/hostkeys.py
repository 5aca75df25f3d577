"""Each sandbox's own SSH host key, so a pin identifies one sandbox and not every guest of a box.

Every guest made from a box boots with the box's host key (it is in the image), so any guest's
root could read it and impersonate any other guest of that box. Right after the first connection
(pinned to the box's key, or to the origin's key for a clone), ``rotate`` makes a fresh ed25519
key on the host, installs it in the guest over that connection, restarts the guest's SSH listener
(existing sessions survive), reconnects pinned to the new key, which is then recorded as the
sandbox's ``extra.host_key``. A clone rotates again, since its disk and memory hold its origin's
key. Rollback keeps the sandbox's key: it is on the sandbox's disk since before any snapshot.

Supported servers: dropbear (2022 and later re-executes itself per connection and so reads the
new key at once; an older one is restarted and init respawns it, as in the ``tiny`` box) and
OpenSSH (``SIGHUP`` makes sshd re-read its host keys). Measured cost: 0.25-0.3 s per create or
clone on the tiny box (no restart needed); a restart through busybox init takes ~2 s more.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .exceptions import ProviderError, SecurityError

log = logging.getLogger("vmsandbox.hostkeys")

# The guest's SSH listener: a dropbear or sshd whose parent is init (orphaned dropbear connection
# processes also have parent 1 once the listener is gone; they carry "-2 FD" and are skipped).
_LISTENER = r"""
listener() {
  for d in /proc/[0-9]*; do
    read -r _ comm _ ppid _ < "$d/stat" 2>/dev/null || continue
    [ "$ppid" = 1 ] || continue
    case "$comm" in "(dropbear)"|"(sshd)") ;; *) continue;; esac
    case " $(tr '\0' ' ' < "$d/cmdline") " in *" -2 "*) continue;; esac
    echo "${comm#(}" | tr -d ')'; echo "${d#/proc/}"; tr '\0' '\n' < "$d/cmdline"; return 0
  done
  return 1
}
"""

# Prints "dropbear PID KEYPATH" or "sshd PID KEYPATH".
_DETECT = _LISTENER + r"""
found=$(listener) || { echo "no SSH listener found (dropbear or sshd started by init)" >&2; exit 1; }
set -- $found
kind=$1 pid=$2; shift 2
key=/etc/dropbear/dropbear_ed25519_host_key
[ "$kind" = sshd ] && key=/etc/ssh/ssh_host_ed25519_key
while [ $# -gt 0 ]; do [ "$1" = -r ] && case "$2" in *ed25519*) key=$2;; esac; shift; done
echo "$kind $pid $key"
"""

# $1: kind, $2: listener pid, $3: key path; the private key on stdin. dropbear (2022 and later)
# re-executes itself for each connection and so reads the new key at once; sshd re-reads it on SIGHUP.
_INSTALL = r"""
kind=$1 pid=$2 key=$3
umask 077
cat > "$key.vmsandbox-new" && mv -f "$key.vmsandbox-new" "$key" || exit 1
if [ "$kind" = sshd ]; then ssh-keygen -y -f "$key" > "$key.pub" 2>/dev/null; kill -HUP "$pid"; fi
exit 0
"""

# For a dropbear that keeps its keys in memory: stop the listener; init starts it again (busybox
# init takes ~2 s); done once the new one listens on port 22 (hex 0016, state 0A).
_RESTART = _LISTENER + r"""
pid=$1
kill "$pid" || exit 1
i=0
while [ $i -lt 500 ]; do
  new=$(listener | sed -n 2p)
  if [ -n "$new" ] && [ "$new" != "$pid" ] && grep -qs ':0016 [0:]* 0A ' /proc/net/tcp /proc/net/tcp6; then exit 0; fi
  usleep 20000 2>/dev/null || sleep 1; i=$((i+1))
done
echo "the SSH listener did not come back" >&2; exit 1
"""


def _new_key(kind: str, workdir: Path) -> tuple[bytes, str]:
    """(private key in the server's format, "ssh-ed25519 BASE64") made on the host."""
    key = workdir / "key"
    if kind == "dropbear":
        tool = shutil.which("dropbearkey")
        if tool is None:
            raise ProviderError("dropbearkey is not installed on the host (apt-get install dropbear-bin)")
        subprocess.run([tool, "-t", "ed25519", "-f", str(key)], check=True, capture_output=True, timeout=30)
        pub = subprocess.run([tool, "-y", "-f", str(key)], check=True, capture_output=True, text=True,
                             timeout=30).stdout
    else:
        tool = shutil.which("ssh-keygen")
        if tool is None:
            raise ProviderError("ssh-keygen is not installed on the host (apt-get install openssh-client)")
        subprocess.run([tool, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True,
                       capture_output=True, timeout=30)
        pub = Path(f"{key}.pub").read_text()
    line = next((ln for ln in pub.splitlines() if ln.startswith("ssh-ed25519 ")), None)
    if line is None:
        raise ProviderError(f"{tool} made no ed25519 public key")
    return key.read_bytes(), " ".join(line.split()[:2])


def _run(session: Any, script: str, stdin: bytes | None = None, timeout: float = 30) -> str:
    if session.username != "root":          # a Vagrant box logs in as vagrant, with sudo
        script = f"exec sudo -n sh -c {shlex.quote(script)}"
    out, err = bytearray(), bytearray()
    code = session.stream(script, [stdin] if stdin else None, out.extend, err.extend, timeout)
    if code != 0:
        from ._safe_text import visible
        raise ProviderError(f"host key rotation in the guest failed "
                            f"({'timed out' if code is None else f'exit {code}'}): "
                            f"{visible(err.decode(errors='replace').strip())} (for a box whose SSH server "
                            f"cannot take a new key, set ssh.own_host_key: false)")
    return out.decode(errors="replace")


def rotate_session(session: Any, timeout: float = 30) -> str:
    """Give the guest behind ``session`` (an ``ssh.SSHSession``) a fresh host key and re-pin
    ``session`` to it; returns the new key line. Raises ``ProviderError`` (no supported SSH
    server, the listener did not come back) or ``SecurityError`` (the guest keeps presenting
    another key than the one installed)."""
    fields = _run(session, _DETECT, timeout=timeout).split()
    if len(fields) != 3 or fields[0] not in ("dropbear", "sshd") or not fields[1].isdigit():
        raise ProviderError(f"host key rotation: cannot read the guest's SSH listener from {fields!r}")
    kind, pid, path = fields
    with tempfile.TemporaryDirectory(prefix="vmsandbox-hostkey-") as work:   # 0700
        private, public = _new_key(kind, Path(work))
    old = session.host_key
    _run(session, f"set -- {_quote(kind, pid, path)}\n{_INSTALL}", stdin=private, timeout=timeout)
    session.repin(public)
    # From now on only the new key is accepted. A listener that still shows the old one is
    # restarted (over a connection pinned to the old key) or, for sshd, given a moment to reload.
    deadline = time.monotonic() + timeout
    restarted = kind != "dropbear"
    while True:
        try:
            session.wait_ready(max(deadline - time.monotonic(), 1.0))
            return public
        except SecurityError:
            if time.monotonic() > deadline:
                raise
            session.close()
            if not restarted:
                restarted = True
                _restart_listener(session, old, pid, timeout)
            else:
                time.sleep(0.1)


def _restart_listener(session: Any, old_key: str, pid: str, timeout: float) -> None:
    from .ssh import SSHSession
    with SSHSession(session.host, session.port, session.username, session.key_path, old_key,
                    connect_timeout=session.connect_timeout, exec_mode=getattr(session, "exec_mode", None)) as old:
        old.wait_ready(timeout)
        _run(old, f"set -- {_quote(pid)}\n{_RESTART}", timeout=timeout)


def fingerprint(keyline: str) -> str:
    """OpenSSH's SHA256 fingerprint of "TYPE BASE64" (what ``ssh-keygen -lf`` prints)."""
    blob = base64.b64decode(keyline.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _quote(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


def rotate(config: Any, sessions: Any, store: Any, info: Any,
           progress: Callable[[str], None] | None = None) -> str | None:
    """Rotate the host key of sandbox ``info`` (create and clone call this once the guest answers)
    and record the new pin; returns it (None when ``ssh.own_host_key`` is off, or the sandbox is
    not reached over SSH)."""
    from .providers import Endpoint
    if not config.ssh.own_host_key or not isinstance(sessions.endpoint(info), Endpoint):
        return None
    if progress:
        progress("giving the guest its own host key")
    started = time.monotonic()
    new = rotate_session(sessions.get(info), timeout=max(30.0, config.ssh.connect_timeout))
    store.update_sandbox(info.id, host_key=new)
    store.audit("host_key", "rotated", info, fingerprint=fingerprint(new),
                seconds=round(time.monotonic() - started, 3))
    log.debug("%s: own host key %s in %.2fs", info.name, new[:40], time.monotonic() - started)
    return new


__all__ = ["rotate", "rotate_session", "fingerprint"]
