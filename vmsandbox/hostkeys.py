"""Each sandbox's own SSH host key, so a pin identifies one sandbox and not every guest of a box.

Every guest made from a box boots with the box's host key (it is in the image), so any guest's
root could read it and impersonate any other guest of that box. Right after the first connection
(pinned to the box's key, or to the origin's key for a clone), ``rotate`` makes a fresh ed25519
key on the host, installs it in the guest over that connection, restarts the guest's SSH listener
(existing sessions survive), reconnects pinned to the new key, which is then recorded as the
sandbox's ``extra.host_key``. A clone rotates again, since its disk and memory hold its origin's
key. Rollback keeps the sandbox's key: it is on the sandbox's disk since before any snapshot.

Supported servers: dropbear (busybox init respawns it, as in the ``tiny`` box) and OpenSSH
(``SIGHUP`` makes sshd re-read its host keys).
"""
from __future__ import annotations

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

# Prints "dropbear PID KEYPATH" or "openssh PID KEYPATH" for the guest's SSH listener.
_DETECT = r"""
for d in /proc/[0-9]*; do
  read -r _ comm _ ppid _ < "$d/stat" 2>/dev/null || continue
  [ "$ppid" = 1 ] || continue
  case "$comm" in
    "(dropbear)")
      key=/etc/dropbear/dropbear_ed25519_host_key; next=
      for a in $(tr '\0' ' ' < "$d/cmdline"); do
        [ "$next" = 1 ] && case "$a" in *ed25519*) key=$a;; esac; next=; [ "$a" = -r ] && next=1
      done
      echo "dropbear ${d#/proc/} $key"; exit 0;;
    "(sshd)")
      echo "openssh ${d#/proc/} /etc/ssh/ssh_host_ed25519_key"; exit 0;;
  esac
done
echo "no SSH listener found (dropbear or sshd started by init)" >&2; exit 1
"""

# $1: kind, $2: listener pid, $3: key path; the private key on stdin. Waits until the old
# listener is gone and a new one listens (dropbear is respawned by init), so the next
# connection sees the new key.
_INSTALL = r"""
kind=$1 pid=$2 key=$3
umask 077
cat > "$key.vmsandbox-new" && mv -f "$key.vmsandbox-new" "$key" || exit 1
if [ "$kind" = openssh ]; then
  ssh-keygen -y -f "$key" > "$key.pub" 2>/dev/null
  kill -HUP "$pid"; exit 0
fi
kill "$pid" || exit 1
i=0
while [ $i -lt 200 ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    for d in /proc/[0-9]*; do
      read -r _ comm _ ppid _ < "$d/stat" 2>/dev/null || continue
      [ "$ppid" = 1 ] && [ "$comm" = "(dropbear)" ] && [ "${d#/proc/}" != "$pid" ] && exit 0
    done
  fi
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
    out, err = bytearray(), bytearray()
    code = session.stream(script, [stdin] if stdin else None, out.extend, err.extend, timeout)
    if code != 0:
        from ._safe_text import visible
        raise ProviderError(f"host key rotation in the guest failed "
                            f"({'timed out' if code is None else f'exit {code}'}): "
                            f"{visible(err.decode(errors='replace').strip())}")
    return out.decode(errors="replace")


def rotate_session(session: Any, timeout: float = 30) -> str:
    """Give the guest behind ``session`` a fresh host key and re-pin ``session`` to it; returns the
    new key line. Raises ``ProviderError`` (no supported SSH server, the listener did not come
    back) or ``SecurityError`` (the guest presents another key than the one installed)."""
    fields = _run(session, _DETECT, timeout=timeout).split()
    if len(fields) != 3 or fields[0] not in ("dropbear", "openssh") or not fields[1].isdigit():
        raise ProviderError(f"host key rotation: cannot read the guest's SSH listener from {fields!r}")
    kind, pid, path = fields
    with tempfile.TemporaryDirectory(prefix="vmsandbox-hostkey-") as work:   # 0700
        private, public = _new_key(kind, Path(work))
    args = " ".join(shlex.quote(a) for a in (kind, pid, path))
    _run(session, f"set -- {args}\n{_INSTALL}", stdin=private, timeout=timeout)
    session.repin(public)
    # A new connection, which must show the new key. sshd re-reads its keys a moment after
    # SIGHUP: the old key may answer briefly; it is refused, and so is any key but the new one.
    deadline = time.monotonic() + 5
    while True:
        try:
            session.wait_ready(timeout)
            return public
        except SecurityError:
            if time.monotonic() > deadline:
                raise
            session.close()
            time.sleep(0.1)


def rotate(core: Any, info: Any, progress: Callable[[str], None] | None = None) -> str | None:
    """Rotate the host key of sandbox ``info`` (create and clone call this once the guest answers)
    and record the new pin; returns it (None when ``ssh.own_host_key`` is off)."""
    if not core.config.ssh.own_host_key:
        return None
    if progress:
        progress("giving the guest its own host key")
    started = time.monotonic()
    session = core.session(info)
    new = rotate_session(session, timeout=max(30.0, core.config.ssh.connect_timeout))
    core.store.update_sandbox(info.id, extra={"host_key": new})
    core.store.audit("host_key", "rotated", info, key=new.split()[1][:16] + "...",
                     seconds=round(time.monotonic() - started, 3))
    log.debug("%s: own host key %s in %.2fs", info.name, new[:40], time.monotonic() - started)
    return new


__all__ = ["rotate", "rotate_session"]
