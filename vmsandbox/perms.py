"""Who may read the state directory: only its owner, and QEMU where it must.

Guests' disks (layers), memory states and console logs are secrets of their owner: every directory
under ``sandbox.state_directory`` is 0700 and every file 0600. QEMU runs as another user
(``libvirt-qemu`` on Debian) and must still open disks, the backing chain and box kernels: libvirt
(``dynamic_ownership``, the default) hands each file to that user while a guest uses it, and the
directories on the way grant that user *search* only, through a POSIX ACL entry (``u:USER:--x``):
it can open a file whose name it is given, never list or read anything else. Memory states and
console logs are opened by libvirt/virtlogd as root and passed on, so their directories get no ACL.

This module creates directories and files with those modes, and ``check`` walks a state directory
and reports every violation with the exact command that fixes it (``vmsandbox doctor``).
"""
from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import re
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Optional

log = logging.getLogger("vmsandbox.perms")
DIR_MODE = 0o700
FILE_MODE = 0o600
#: sub-directories QEMU opens files in (by name); the state directory itself is on their path
QEMU_DIRS = ("layers", "boxes")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
_ACL_XATTR = "system.posix_acl_access"
# struct posix_acl_xattr_entry {u16 tag; u16 perm; u32 id}; header u32 version 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


def qemu_user() -> Optional[str]:
    """The user QEMU runs as under qemu:///system (``user =`` in qemu.conf, else the distribution's
    default), or None when it runs as root or no such user exists (nothing to grant)."""
    name = None
    try:
        m = re.search(r'^\s*user\s*=\s*"([^"]+)"', QEMU_CONF.read_text(), re.M)
        name = m.group(1) if m else None
    except OSError:
        pass
    for candidate in ([name] if name else ["libvirt-qemu", "qemu"]):
        try:
            pw = pwd.getpwnam(candidate.lstrip("+")) if not candidate.startswith("+") else pwd.getpwuid(int(candidate[1:]))
        except (KeyError, ValueError):
            continue
        return None if pw.pw_uid == 0 else pw.pw_name
    return None


def _acl_bytes(uid: int, owner_perm: int, user_perm: int) -> bytes:
    entries = [(_USER_OBJ, owner_perm, _NO_ID), (_USER, user_perm, uid), (_GROUP_OBJ, 0, _NO_ID),
               (_MASK, user_perm, _NO_ID), (_OTHER, 0, _NO_ID)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _acl_users(path: Path) -> dict[int, int]:
    """uid -> permission bits of the named-user entries of ``path``'s access ACL."""
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return {}
        raise
    out = {}
    for off in range(4, len(raw) - 7, 8):
        tag, perm, uid = struct.unpack_from("<HHI", raw, off)
        if tag == _USER:
            out[uid] = perm
    return out


def grant_search(path: Path, user: Optional[str]) -> None:
    """``path`` (a directory) becomes 0700 plus search (x) for ``user`` alone."""
    os.chmod(path, DIR_MODE)
    if user:
        try:
            os.setxattr(path, _ACL_XATTR, _acl_bytes(pwd.getpwnam(user).pw_uid, 7, 1))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # no POSIX ACLs on this file system: everyone may pass through (doctor reports it)
            log.warning("%s: the file system has no POSIX ACLs; mode 0711 so QEMU (%s) can pass", path, user)
            os.chmod(path, 0o711)


def private_dir(path: Path, qemu_search: bool = False) -> Path:
    """Create ``path`` (and parents) 0700; with ``qemu_search`` QEMU's user may pass through it."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if qemu_search:
        grant_search(path, qemu_user())
    else:
        os.chmod(path, DIR_MODE)
    return path


def prepare_state_dir(state_dir: Path, box_dir: Optional[Path] = None) -> None:
    """Give the state directory and its sub-directories their modes (idempotent, at every start)."""
    user = qemu_user()
    grant_search(state_dir, user)
    for sub in ("sandboxes", "logs", "locks", "memory", "layers"):
        private_dir(state_dir / sub)
    grant_search(state_dir / "layers", user)
    if box_dir is not None and _inside(box_dir, state_dir) and box_dir.is_dir():
        for d in [box_dir, *(p for p in box_dir.rglob("*") if p.is_dir())]:
            grant_search(d, user)


def open_private(path: Path | str, mode: str = "wb") -> IO:
    """``open(path, mode)`` for a new or existing file that only its owner may read (0600)."""
    flags = {"wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}[mode]
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, mode)


def write_private(path: Path, text: str) -> None:
    with open_private(path, "w") as fh:
        fh.write(text)


def make_private(path: Path | str) -> None:
    """Take group and world access away from a file another program created (qemu-img, libvirt)."""
    st = os.stat(path)
    if st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)


@dataclass(frozen=True)
class Violation:
    path: str
    problem: str
    fix: str


def check(state_dir: Path, box_dir: Optional[Path] = None) -> list[Violation]:
    """Every file or directory under ``state_dir`` that a user other than its owner (and QEMU's,
    where it must search) could read, list or enter; each with the command that fixes it."""
    state_dir = Path(state_dir)
    user = qemu_user()
    qdirs = {state_dir, state_dir / "layers"}
    if box_dir is not None and _inside(box_dir, state_dir):
        qdirs |= {box_dir, *(p for p in box_dir.rglob("*") if p.is_dir())} if box_dir.is_dir() else set()
    found: list[Violation] = []
    uid = pwd.getpwnam(user).pw_uid if user else None
    if user:
        for parent in list(state_dir.resolve().parents)[::-1]:
            if not _can_search(parent, user):
                q = shlex.quote(str(parent))
                found.append(Violation(str(parent), f"QEMU's user {user} cannot pass through it to reach the "
                                                    f"state directory", f"setfacl -m u:{user}:x {q}"))
    for path in _walk(state_dir):
        st = path.lstat()
        q = shlex.quote(str(path))
        if path.is_symlink():
            continue
        if path.is_dir():
            extra = {u: p for u, p in _acl_users(path).items() if not (u == uid and p == 1 and path in qdirs)}
            if st.st_mode & 0o007 or (st.st_mode & 0o070 and not _acl_users(path)) or extra:
                found.append(Violation(str(path), f"directory mode {st.st_mode & 0o777:o}" +
                                       (f", ACL grants uids {sorted(extra)}" if extra else ""),
                                       f"chmod 700 {q}" + (f" && setfacl -m u:{user}:x {q}" if path in qdirs and user else
                                                             f" && setfacl -b {q}" if extra else "")))
            elif path in qdirs and user and _acl_users(path).get(uid) != 1:
                found.append(Violation(str(path), f"QEMU's user {user} cannot pass through it",
                                       f"chmod 700 {q} && setfacl -m u:{user}:x {q}"))
        elif st.st_mode & 0o077 or _acl_users(path):
            found.append(Violation(str(path), f"file mode {st.st_mode & 0o777:o}", f"chmod 600 {q}"))
    return found


def dynamic_ownership() -> bool:
    """libvirt hands disks to QEMU's user only with ``dynamic_ownership`` (on unless qemu.conf says 0)."""
    try:
        m = re.search(r"^\s*dynamic_ownership\s*=\s*(\d+)", QEMU_CONF.read_text(), re.M)
    except OSError:
        return True
    return not m or m.group(1) != "0"


def summary(state_dir: Path, box_dir: Optional[Path] = None) -> tuple[bool, str, str]:
    """``(ok, detail, fix)`` for ``vmsandbox doctor``: the violations and one command that fixes them all."""
    user = qemu_user()
    if user and not dynamic_ownership():
        return (False, f"libvirt dynamic_ownership is off: QEMU ({user}) cannot open 0600 disks",
                f"set dynamic_ownership = 1 in {QEMU_CONF} and restart libvirtd")
    found = check(state_dir, box_dir)
    if not found:
        return True, f"{state_dir}: 0700 directories, 0600 files" + (f"; {user} may only pass through" if user else ""), ""
    shown = "; ".join(f"{v.path}: {v.problem}" for v in found[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    fixes = [v.fix for v in found if not v.fix.startswith("chmod 600 ")]
    files = [v for v in found if v.fix.startswith("chmod 600 ")]
    if len(files) > 3:
        fixes.append(f"find {shlex.quote(str(state_dir))} -type f -perm /077 -exec chmod go-rwx {{}} +")
    else:
        fixes += [v.fix for v in files]
    fix = " && ".join(dict.fromkeys(fixes))
    return False, f"{len(found)} paths other users could read: {shown}{more}", fix


def _can_search(path: Path, user: str) -> bool:
    """Whether ``user`` may pass through directory ``path`` (mode bits, groups, ACL entry)."""
    pw = pwd.getpwnam(user)
    st = path.stat()
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & 0o100)
    acl = _acl_users(path)
    if pw.pw_uid in acl:
        return bool(acl[pw.pw_uid] & 1 and st.st_mode & 0o010)     # the group bits hold the ACL mask
    groups = {pw.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    if st.st_gid in groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _walk(root: Path) -> Iterable[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


def _inside(path: Path, parent: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False


__all__ = ["qemu_user", "private_dir", "prepare_state_dir", "open_private", "write_private", "make_private",
           "grant_search", "check", "Violation", "DIR_MODE", "FILE_MODE"]
