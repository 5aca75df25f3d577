"""Copying files and directories in and out of a guest over SSH exec channels (``cat`` and ``tar``:
the tiny box has no sftp-server).

Owns the rules of a copy: a size cap (``ssh.max_copy``, or ``max_size`` per copy) checked while
the bytes flow, so ``cp NAME:/dev/zero`` stops with a clear error; a local result that appears
whole or not at all (written to a hidden ``.part`` next to it, renamed at the end, removed on
every exception, Ctrl-C included; the CLI turns SIGTERM into an exception too); copying into an
existing directory; directories with ``recursive`` (a tar stream, unpacked locally with the
``data`` filter: the guest writes that stream, so no absolute paths, links out of the target,
devices or set-id bits); the source's permission bits kept (less the umask, as ``cp`` does).
"""
from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Protocol

from ._safe_text import visible
from .exceptions import ConfigError, NotFoundError, ProviderError, ResourceLimitError


class Channel(Protocol):
    """What a copy needs of a command session (``ssh.SSHSession`` and its subclasses)."""
    where: str

    def stream(self, script: str, stdin_chunks, on_stdout: Callable[[bytes], None],
               on_stderr: Callable[[bytes], None], timeout: float | None) -> int | None: ...

_CHUNK = 256 << 10
MISSING = 44              # exit code of the copy scripts for "no such file or directory"
_ISDIR = 45               # ... for "is a directory" without recursive


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _cap_error(what: str, limit: int) -> ResourceLimitError:
    return ResourceLimitError(f"{what}: larger than the copy limit of {_human(limit)}; nothing was kept "
                        f"(raise ssh.max_copy, or pass --max-size / max_size=)")


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


class _Sink:
    """Takes the script's header line ("F <octal mode>" or "D"), then writes the rest to ``fh``,
    raising ``ResourceLimitError`` past ``limit`` bytes (which stops and kills the remote command)."""

    def __init__(self, fh, limit: int, what: str) -> None:
        self.fh, self.limit, self.what = fh, limit, what
        self.header: str | None = None
        self._head = b""
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self.header is None:
            self._head += chunk
            if b"\n" not in self._head:
                if len(self._head) > 256:
                    raise ProviderError(f"{self.what}: the guest sent no copy header")
                return
            line, _, chunk = self._head.partition(b"\n")
            self.header, self._head = line.decode(errors="replace"), b""
        self.size += len(chunk)
        if self.size > self.limit:
            raise _cap_error(self.what, self.limit)
        self.fh.write(chunk)


def _check(exit_code: int | None, stderr: bytearray, what: str) -> None:
    if exit_code == 0:
        return
    message = f"{what}: {visible(stderr.decode(errors='replace').strip(), multiline=True) or f'exit code {exit_code}'}"
    if exit_code == MISSING:
        raise NotFoundError(message)
    if exit_code == _ISDIR:
        raise ConfigError(f"{message} (copy directories with -r / recursive=True)", "source")
    raise ProviderError(message)


def _stderr_sink(buf: bytearray) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        if len(buf) < 64 << 10:
            buf.extend(chunk[: (64 << 10) - len(buf)])
    return write


def get(session: Channel, remote: str, local: Path, max_size: int, recursive: bool = False) -> Path:
    """Copy ``remote`` (a file, or a directory with ``recursive``) to ``local`` (or into it, when
    it is an existing directory). Returns the path written. Raises ``NotFoundError`` (no such remote
    path or local directory), ``ConfigError`` (a directory without ``recursive``), ``ResourceLimitError`` (past the cap),
    ``ProviderError``. On any error or interruption nothing is left at ``local``."""
    local = Path(local)
    name = posixpath.basename(remote.rstrip("/")) or "root"
    if local.is_dir():
        local = local / name
    if not local.parent.is_dir():
        raise NotFoundError(f"no such local directory: {local.parent}")
    if recursive and local.is_dir():
        raise ConfigError(f"{local} already exists as a directory", "destination")
    src = shlex.quote(remote)
    script = f"[ -e {src} ] || {{ echo \"no such file or directory: \"{src} >&2; exit {MISSING}; }}; "
    if recursive:
        parent, base = posixpath.split(remote.rstrip("/") or "/")
        script += (f"if [ -d {src} ]; then printf 'D\\n'; cd {shlex.quote(parent or '/')} && "
                   f"exec tar -cf - {shlex.quote(base or '.')}; fi; ")
    else:
        script += f"[ -d {src} ] && {{ echo \"is a directory: \"{src} >&2; exit {_ISDIR}; }}; "
    script += f"printf 'F %s\\n' \"$(stat -c %a {src} 2>/dev/null)\"; exec cat {src}"
    what = f"copy {session.where}:{remote} -> {local}"
    fd, part = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".part")
    stderr = bytearray()
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _Sink(fh, max_size, what)
            code = session.stream(script, None, sink.write, _stderr_sink(stderr), None)
        _check(code, stderr, what)
        if sink.header == "D" and not recursive:   # the guest writes the stream: it may lie
            raise ProviderError(f"{what}: the guest sent a directory for a file copy")
        _place(sink.header, Path(part), local, remote, what)
    except OSError as exc:                # local disk full, a directory in the way...
        raise ProviderError(f"{what}: {exc.strerror or exc}") from exc
    finally:
        Path(part).unlink(missing_ok=True)
    return local


def _place(header: str | None, part: Path, local: Path, remote: str, what: str) -> None:
    """Move the finished download into place: a file with its mode, or the unpacked tree."""
    if header == "D":
        unpacked = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}.", suffix=".part"))
        try:
            _untar(part, unpacked, what)
            top = unpacked / (posixpath.basename(remote.rstrip("/")) or ".")
            os.chmod(top, os.stat(top).st_mode & 0o7777 & ~_umask())
            os.rename(top, local)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
    else:
        mode = int(header[2:], 8) if header and header[2:].isdigit() else 0o644
        os.chmod(part, mode & 0o777 & ~_umask())
        os.replace(part, local)


def _untar(archive: Path, into: Path, what: str) -> None:
    try:
        with tarfile.open(archive, "r:") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ProviderError(f"{what}: bad archive from the guest: {visible(exc)}") from exc


def put(session: Channel, local: Path, remote: str, max_size: int, recursive: bool = False,
        mode: int | None = None) -> str:
    """Copy the local file (or directory, with ``recursive``) ``local`` to ``remote`` in the guest,
    or into it when it is an existing directory there. The guest sees the new file (or tree) appear
    whole: it is written in a temporary directory beside it and moved into place. Keeps the
    permission bits (``mode`` overrides them for a file). Returns nothing useful; raises like ``get``."""
    local = Path(local)
    if not local.exists():
        raise NotFoundError(f"no such local file or directory: {local}")
    if local.is_dir() and not recursive:
        raise ConfigError(f"{local} is a directory (copy directories with -r / recursive=True)", "source")
    size = _tree_size(local) if local.is_dir() else local.stat().st_size
    what = f"copy {local} -> {session.where}:{remote}"
    if size > max_size:
        raise _cap_error(what, max_size)
    dst = shlex.quote(remote)
    base = shlex.quote(local.name)
    # T: the target; D: its directory; a temp dir in D holds the upload until it is whole.
    script = (f"T={dst}; [ -d \"$T\" ] && T=\"${{T%/}}\"/{base}; D=$(dirname \"$T\"); "
              f"[ -d \"$D\" ] || {{ echo \"no such directory: $D\" >&2; exit {MISSING}; }}; "
              f"W=$(mktemp -d \"$D/.vmsandbox-copy.XXXXXX\") || exit 1; trap 'rm -rf \"$W\"' EXIT; ")
    stderr = bytearray()
    if local.is_dir():
        script += ("[ -e \"$T\" ] && { echo \"already exists: $T\" >&2; exit 1; }; "
                   "tar -xf - -C \"$W\" && mv \"$W/x\" \"$T\"")
        with tempfile.TemporaryFile() as staged:         # 0600, unlinked: the tree as one tar stream
            with tarfile.open(fileobj=staged, mode="w:") as tar:
                tar.add(local, arcname="x")
            staged.seek(0)
            code = session.stream(script, iter(lambda: staged.read(_CHUNK), b""), lambda _c: None,
                                  _stderr_sink(stderr), None)
    else:
        perm = (local.stat().st_mode if mode is None else mode) & 0o7777
        script += f"cat > \"$W/x\" && chmod {perm:o} \"$W/x\" && mv -f \"$W/x\" \"$T\""
        with open(local, "rb") as src:
            code = session.stream(script, iter(lambda: src.read(_CHUNK), b""), lambda _c: None,
                                  _stderr_sink(stderr), None)
    _check(code, stderr, what)
    return remote


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


__all__ = ["get", "put", "MISSING"]
