"""The base snapshot of a farm: prepared once, reused while its inputs do not change.

Owns the digest of the base's inputs (the box's identity, the setup command, the content of
every upload, the machine) and the base sandbox: a persistent sandbox named
``farmbase-<digest12>`` that boots the box, receives the uploads, runs the setup, takes a
memory snapshot and is then stopped. It stays (stopped) because it holds the snapshots its jobs'
clones start from; deleting it would drop their memory states. When a farm's inputs change, the
new base replaces the farm's older ones.

The base takes ``SLOTS`` memory snapshots in a row (identical states, ~0.2 s each): clones of one
memory snapshot are restored one at a time (its save image's header is rewritten per restore,
under the snapshot's lock), so jobs that start together are spread over the slots instead of
queueing on one (measured under load: 4 clones at once, max 10.5 s from one snapshot against
3.9 s from four).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..exceptions import NotFoundError, SandboxError
from .errors import FarmError
from .history import History
from .spec import FarmSpec
from .text import one_line, tail

BASE_SNAPSHOT = "farm-base"
SLOTS = 4
DIGEST_VERSION = 2


@dataclass(frozen=True)
class Base:
    digest: str
    sandbox: str
    snapshots: tuple               # SLOTS memory snapshots of the same state
    reused: bool
    seconds: float


def box_identity(box) -> dict:
    """What identifies a box's content cheaply: its metadata file (written once per build or
    import, with its creation time) and the image's size and mtime. Hashing a multi-GiB image
    on every run would cost more than the run."""
    info = {"name": box.name}
    for label, path in (("meta", Path(box.path) / "vmsandbox.json"), ("image", box.image),
                        ("kernel", box.kernel), ("initrd", box.initrd)):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        info[label] = [st.st_size, st.st_mtime_ns]
        if label == "meta":
            info["meta_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return info


def tree_digest(path: str | Path) -> str:
    """sha256 over a file, or over a directory's relative paths, modes and file contents, in order."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*"))
    for f in files:
        rel = "." if f == p else f.relative_to(p).as_posix()
        st = f.lstat()
        h.update(f"{rel}\0{st.st_mode & 0o777}\0{'d' if f.is_dir() else 'l' if f.is_symlink() else 'f'}\0".encode())
        if f.is_symlink():
            h.update(os.readlink(f).encode())
        elif f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def base_inputs(core, spec: FarmSpec) -> dict:
    b = spec.base
    return {"version": DIGEST_VERSION, "box": box_identity(core.boxes.get(b.box)), "setup": b.setup,
            "upload": [[remote, tree_digest(local)] for local, remote in b.upload],
            "machine": [b.cpu, b.memory, b.disk, b.network], "slots": SLOTS}


def digest_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def base_name(digest: str) -> str:
    return f"farmbase-{digest[:12]}"


def prepare_base(core, history: History, spec: FarmSpec, rebuild: bool = False,
                 progress: Optional[Callable[[str], None]] = None) -> Base:
    """The base snapshot for ``spec``: reused when one with the same inputs exists, else built.

    Raises FarmError (the setup failed or an upload could not be unpacked) and the core's own
    errors (unknown box, boot failure). A failed build leaves no sandbox behind."""
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    inputs = base_inputs(core, spec)
    digest = digest_of(inputs)
    name = base_name(digest)
    with open(core.state_dir / "locks" / f"farm-base-{spec.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one preparation of a farm's base at a time
        existing = _existing(core, history, digest, name)
        if existing and not rebuild:
            history.touch_base(digest)
            say("base reused")
            return Base(digest, name, tuple(existing), True, time.monotonic() - t0)
        _remove_base(core, history, digest, name)
        snaps = _build(core, spec, name, say)
        history.put_base(digest, spec.name, name, snaps, inputs)
        for old in history.bases(spec.name):       # a farm's inputs changed: its older bases go
            if old["digest"] != digest:
                _remove_base(core, history, old["digest"], old["sandbox"])
        return Base(digest, name, tuple(snaps), False, time.monotonic() - t0)


def _existing(core, history: History, digest: str, name: str) -> Optional[list]:
    """The base's snapshot ids when the base and all its memory snapshots are still there."""
    row = history.base(digest)
    if row is None:
        return None
    try:
        have = {s.id for s in core.list_snapshots(name) if s.has_memory}
    except NotFoundError:
        return None
    wanted = row["snapshots"]
    return wanted if wanted and set(wanted) <= have else None


def _remove_base(core, history: History, digest: str, name: str) -> None:
    try:
        core.destroy(core.get(name).id)
    except NotFoundError:
        pass
    history.drop_base(digest)


def _build(core, spec: FarmSpec, name: str, say: Callable[[str], None]) -> list[str]:
    b = spec.base
    say(f"preparing the base: booting box {b.box}")
    sid = core.create_sandbox(name, {"box": b.box, "persistent": True, "network_mode": b.network,
                                     "resource_limits": {"cpu": b.cpu, "memory": b.memory, "disk": b.disk}})
    try:
        for local, remote in b.upload:
            say(f"uploading {local} -> {remote}")
            _upload(core, sid, Path(local), remote)
        if b.setup:
            say("running the base setup")
            r = core.execute(sid, b.setup, timeout=b.timeout)
            if not r.succeeded:
                why = "timed out" if r.timed_out else f"exit code {r.exit_code}"
                raise FarmError(f"base setup failed ({why}): {one_line(tail(r.stderr or r.stdout, 300), 300)}")
        say("snapshotting the base (disk and memory)")
        snaps = [core.create_snapshot(sid, f"{BASE_SNAPSHOT}-{i}", memory=True,
                                      metadata={"reason": f"farm {spec.name} base, slot {i}"}) for i in range(SLOTS)]
        core.stop(sid)
        return snaps
    except BaseException:
        try:
            core.destroy(sid)
        except SandboxError:
            pass
        raise


def _upload(core, sid: str, local: Path, remote: str) -> None:
    """A file is copied as it is; a directory is packed into a tar here and unpacked by the guest."""
    q = shlex.quote
    parent = remote.rstrip("/").rsplit("/", 1)[0] or "/"
    if local.is_file():
        core.execute(sid, f"mkdir -p {q(parent)}", timeout=60)
        core.put_file(sid, local, remote)
        return
    with tempfile.TemporaryDirectory(prefix="farm-up-") as tmp:
        archive = Path(tmp) / "up.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(local, arcname=".")
        guest_tar = "/tmp/.vmsandbox-farm-upload.tar"
        core.put_file(sid, archive, guest_tar)
        r = core.execute(sid, f"mkdir -p {q(remote)} && tar -xf {guest_tar} -C {q(remote)} && rm -f {guest_tar}",
                         timeout=300)
        if not r.succeeded:
            raise FarmError(f"unpacking {local} into {remote} failed (exit {r.exit_code}): "
                            f"{one_line(r.stderr, 200)}")
