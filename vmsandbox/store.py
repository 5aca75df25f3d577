"""The state store: one SQLite database (WAL) under ``sandbox.state_directory``.

Owns the records that are the truth about sandboxes (and, later, their disk layers and
snapshots) plus the audit log of every operation. Safe across threads (one connection per
thread) and processes (SQLite locking; ``BEGIN IMMEDIATE`` for read-modify-write such as
port reservation). Nothing else in vmsandbox issues SQL.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from .exceptions import NotFoundError, SandboxError, StateCorruptionError
from .models import SandboxInfo, SandboxState

audit_log = logging.getLogger("vmsandbox.audit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    box TEXT NOT NULL,
    domain TEXT NOT NULL,
    ssh_port INTEGER NOT NULL UNIQUE,
    cpu TEXT NOT NULL, memory TEXT NOT NULL, disk TEXT NOT NULL,
    network_mode TEXT NOT NULL,
    persistent INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    operation TEXT NOT NULL,
    sandbox_id TEXT,
    sandbox_name TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_sandbox ON audit(sandbox_name, seq);
-- The qcow2 layer tree. parent NULL: the layer stands on its box image. A frozen layer never changes.
CREATE TABLE IF NOT EXISTS layers (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    parent TEXT REFERENCES layers(id),
    box TEXT NOT NULL,
    owner TEXT NOT NULL,              -- sandbox that wrote it
    frozen INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    name TEXT NOT NULL,
    layer TEXT NOT NULL REFERENCES layers(id),
    memory_path TEXT,                 -- libvirt save image (maybe .zst); NULL: disk only
    cpu TEXT NOT NULL, memory TEXT NOT NULL,
    created_at REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    UNIQUE(sandbox_id, name)
);
-- Extra SSH ports held by a sandbox while a second guest of it starts (rollback).
CREATE TABLE IF NOT EXISTS port_holds (
    port INTEGER PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
-- Multi-step operations in flight: what they planned to create, how far they got.
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    sandbox_id TEXT,
    step TEXT NOT NULL,
    data TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL
);
"""

_SANDBOX_COLS = ("id", "name", "state", "box", "domain", "ssh_port", "cpu", "memory", "disk",
                 "network_mode", "persistent", "created_at", "last_used_at", "reason", "extra")


class TreeStore:
    """Mixin: the layer tree, snapshots and the operation journal."""

    # layers
    def add_layer(self, id: str, path: str, parent: str | None, box: str, owner: str, frozen: bool = False) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO layers (id, path, parent, box, owner, frozen, created_at) VALUES (?,?,?,?,?,?,?)",
                       (id, path, parent, box, owner, int(frozen), time.time()))

    def get_layer(self, id: str) -> dict:
        row = self._db().execute("SELECT * FROM layers WHERE id=?", (id,)).fetchone()
        if row is None:
            raise StateCorruptionError(f"layer {id} is referenced but has no record")
        return dict(row)

    def find_layer(self, id: str) -> Optional[dict]:
        row = self._db().execute("SELECT * FROM layers WHERE id=?", (id,)).fetchone()
        return dict(row) if row else None

    def list_layers(self) -> list[dict]:
        return [dict(r) for r in self._db().execute("SELECT * FROM layers ORDER BY created_at")]

    def update_layer_parent(self, id: str, parent: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE layers SET parent=? WHERE id=?", (parent, id))

    def freeze_layer(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE layers SET frozen=1 WHERE id=?", (id,))

    def delete_layer(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM layers WHERE id=?", (id,))

    def collectable_layers(self) -> list[dict]:
        """Frozen layers nothing stands on: no child layer, no snapshot."""
        return [dict(r) for r in self._db().execute(
            "SELECT * FROM layers l WHERE frozen=1 AND NOT EXISTS (SELECT 1 FROM layers c WHERE c.parent=l.id) "
            "AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.layer=l.id)")]

    def layer_users(self, id: str) -> dict:
        db = self._db()
        return {"children": [r[0] for r in db.execute("SELECT id FROM layers WHERE parent=?", (id,))],
                "snapshots": [r[0] for r in db.execute("SELECT name FROM snapshots WHERE layer=?", (id,))]}

    # snapshots
    def add_snapshot(self, id: str, sandbox_id: str, name: str, layer: str, memory_path: str | None,
                     cpu: str, memory: str, metadata: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO snapshots (id, sandbox_id, name, layer, memory_path, cpu, memory, created_at, metadata)"
                       " VALUES (?,?,?,?,?,?,?,?,?)",
                       (id, sandbox_id, name, layer, memory_path, cpu, memory, time.time(), json.dumps(metadata)))

    def get_snapshot(self, ref: str, sandbox_id: str | None = None) -> dict:
        """By id, or by name within ``sandbox_id``. Raises NotFoundError."""
        db = self._db()
        row = db.execute("SELECT * FROM snapshots WHERE id=?", (ref,)).fetchone()
        if row is None and sandbox_id:
            row = db.execute("SELECT * FROM snapshots WHERE sandbox_id=? AND name=?", (sandbox_id, ref)).fetchone()
        if row is None:
            raise NotFoundError(f"no snapshot {ref!r}" + (" in this sandbox" if sandbox_id else "")
                                + " (see `vmsandbox snapshot list NAME`)")
        return _snapshot_row(row)

    def find_snapshot(self, id: str) -> Optional[dict]:
        row = self._db().execute("SELECT * FROM snapshots WHERE id=?", (id,)).fetchone()
        return _snapshot_row(row) if row else None

    def list_snapshots(self, sandbox_id: str | None = None) -> list[dict]:
        q = "SELECT * FROM snapshots" + (" WHERE sandbox_id=?" if sandbox_id else "") + " ORDER BY created_at"
        return [_snapshot_row(r) for r in self._db().execute(q, (sandbox_id,) if sandbox_id else ())]

    def update_snapshot(self, id: str, **fields: Any) -> None:
        if "metadata" in fields:
            fields["metadata"] = json.dumps(fields["metadata"])
        with self.transaction() as db:
            db.execute(f"UPDATE snapshots SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), id))

    def delete_snapshot_record(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM snapshots WHERE id=?", (id,))

    # journal
    def journal_begin(self, id: str, operation: str, sandbox_id: str | None, data: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO journal (id, operation, sandbox_id, step, data, pid, started_at) VALUES (?,?,?,?,?,?,?)",
                       (id, operation, sandbox_id, "begun", json.dumps(data), os.getpid(), time.time()))

    def journal_step(self, id: str, step: str, **data: Any) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT data FROM journal WHERE id=?", (id,)).fetchone()
            merged = {**json.loads(row["data"]), **data} if row else data
            db.execute("UPDATE journal SET step=?, data=? WHERE id=?", (step, json.dumps(merged), id))

    def journal_end(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM journal WHERE id=?", (id,))

    def journal_entries(self) -> list[dict]:
        return [{**dict(r), "data": json.loads(r["data"])}
                for r in self._db().execute("SELECT * FROM journal ORDER BY started_at")]


def _snapshot_row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["metadata"] = json.loads(d["metadata"])
    return d


class Store(TreeStore):
    """SQLite-backed records. ``path`` is the database file (created with its directory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)      # the audit log holds command lines
        os.chmod(self.path, 0o600)
        self._local = threading.local()
        self._db().executescript(SCHEMA)   # idempotent; executescript manages its own commit

    # -- connections -----------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise StateCorruptionError(f"state database {self.path} is unreadable: {exc}") from exc
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; ``immediate`` takes the write lock up front."""
        db = self._db()
        if db.in_transaction:          # nested: join the outer transaction
            yield db
            return
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- sandboxes -------------------------------------------------------------------------
    def reserve_sandbox(self, *, id: str, name: str, box: str, domain: str, cpu: str, memory: str,
                        disk: str, network_mode: str, persistent: bool,
                        port_range: tuple[int, int], extra: dict | None = None) -> SandboxInfo:
        """Insert a CREATING record with a free SSH port, atomically across processes.

        A port is free when no record holds it and nothing on 127.0.0.1 listens on it.
        Raises SandboxError if the name is taken or the range is exhausted.
        """
        now = time.time()
        with self.transaction(immediate=True) as db:
            if db.execute("SELECT 1 FROM sandboxes WHERE name=?", (name,)).fetchone():
                raise SandboxError(f"a sandbox named {name!r} already exists")
            port = _pick_port(port_range, self._used_ports(db), seed=hash(id))
            db.execute(
                f"INSERT INTO sandboxes ({', '.join(_SANDBOX_COLS)}) VALUES ({', '.join('?' * len(_SANDBOX_COLS))})",
                (id, name, SandboxState.CREATING.value, box, domain, port, cpu, memory, disk,
                 network_mode, int(persistent), now, now, "", json.dumps(extra or {})))
        return self.get_sandbox(id)

    @staticmethod
    def _used_ports(db: sqlite3.Connection) -> set[int]:
        return ({r[0] for r in db.execute("SELECT ssh_port FROM sandboxes")}
                | {r[0] for r in db.execute("SELECT port FROM port_holds")})

    def hold_port(self, sandbox_id: str, port_range: tuple[int, int]) -> int:
        """Reserve one more free port for ``sandbox_id`` (released by ``release_port``)."""
        with self.transaction(immediate=True) as db:
            port = _pick_port(port_range, self._used_ports(db), seed=hash((sandbox_id, time.time())))
            db.execute("INSERT INTO port_holds (port, sandbox_id, created_at) VALUES (?,?,?)",
                       (port, sandbox_id, time.time()))
        return port

    def release_port(self, port: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM port_holds WHERE port=?", (port,))

    def get_sandbox(self, ref: str) -> SandboxInfo:
        """By id or by name. Raises NotFoundError."""
        row = self._db().execute("SELECT * FROM sandboxes WHERE id=? OR name=?", (ref, ref)).fetchone()
        if row is None:
            raise NotFoundError(f"no sandbox {ref!r} (see `vmsandbox list`)")
        return _row_to_info(row)

    def find_sandbox(self, ref: str) -> Optional[SandboxInfo]:
        try:
            return self.get_sandbox(ref)
        except NotFoundError:
            return None

    def list_sandboxes(self) -> list[SandboxInfo]:
        return [_row_to_info(r) for r in self._db().execute("SELECT * FROM sandboxes ORDER BY created_at")]

    def update_sandbox(self, id: str, **fields: Any) -> SandboxInfo:
        """Change columns of one record; ``state`` may be a SandboxState, ``extra`` a dict (merged)."""
        if not fields:
            return self.get_sandbox(id)
        with self.transaction(immediate=True) as db:
            if "extra" in fields:
                row = db.execute("SELECT extra FROM sandboxes WHERE id=?", (id,)).fetchone()
                merged = {**json.loads(row["extra"]), **fields["extra"]} if row else fields["extra"]
                fields["extra"] = json.dumps(merged)
            if isinstance(fields.get("state"), SandboxState):
                fields["state"] = fields["state"].value
            if "persistent" in fields:
                fields["persistent"] = int(fields["persistent"])
            bad = set(fields) - set(_SANDBOX_COLS)
            if bad:
                raise ValueError(f"unknown sandbox fields {bad}")
            sets = ", ".join(f"{k}=?" for k in fields)
            cur = db.execute(f"UPDATE sandboxes SET {sets} WHERE id=?", (*fields.values(), id))
            if cur.rowcount == 0:
                raise NotFoundError(f"no sandbox {id!r}")
        return self.get_sandbox(id)

    def touch(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sandboxes SET last_used_at=? WHERE id=?", (time.time(), id))

    def delete_sandbox(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sandboxes WHERE id=?", (id,))
            db.execute("DELETE FROM port_holds WHERE sandbox_id=?", (id,))

    # -- audit -----------------------------------------------------------------------------
    def audit(self, operation: str, outcome: str, sandbox: SandboxInfo | None = None,
              sandbox_id: str | None = None, sandbox_name: str | None = None, **detail: Any) -> None:
        """Append one audit record (and log it to the ``vmsandbox.audit`` logger)."""
        sid = sandbox.id if sandbox else sandbox_id
        sname = sandbox.name if sandbox else sandbox_name
        with self.transaction() as db:
            db.execute("INSERT INTO audit (ts, operation, sandbox_id, sandbox_name, outcome, detail) VALUES (?,?,?,?,?,?)",
                       (time.time(), operation, sid, sname, outcome, json.dumps(detail, default=str)))
        audit_log.info("%s %s sandbox=%s %s", operation, outcome, sname or "-",
                       json.dumps(detail, default=str) if detail else "")

    def read_audit(self, sandbox_name: str | None = None, limit: int = 100,
                   operation: str | None = None) -> list[dict]:
        """Newest last."""
        q, args = "SELECT * FROM audit", []
        where = []
        if sandbox_name:
            where.append("sandbox_name=?"); args.append(sandbox_name)
        if operation:
            where.append("operation=?"); args.append(operation)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        rows = self._db().execute(q, args).fetchall()
        return [{"seq": r["seq"], "ts": r["ts"], "operation": r["operation"], "sandbox_id": r["sandbox_id"],
                 "sandbox": r["sandbox_name"], "outcome": r["outcome"], "detail": json.loads(r["detail"])}
                for r in reversed(rows)]


def _row_to_info(row: sqlite3.Row) -> SandboxInfo:
    return SandboxInfo(id=row["id"], name=row["name"], state=SandboxState(row["state"]), box=row["box"],
                       domain=row["domain"], ssh_port=row["ssh_port"], cpu=row["cpu"], memory=row["memory"],
                       disk=row["disk"], network_mode=row["network_mode"], persistent=bool(row["persistent"]),
                       created_at=row["created_at"], last_used_at=row["last_used_at"], reason=row["reason"],
                       extra=json.loads(row["extra"]))


def _pick_port(port_range: tuple[int, int], used: set[int], seed: int) -> int:
    lo, hi = port_range
    span = hi - lo + 1
    start = seed % span
    for i in range(span):
        port = lo + (start + i) % span
        if port in used:
            continue
        if _port_free(port):
            return port
    raise SandboxError(f"no free SSH port left in sandbox.port_range {lo}-{hi}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def default_db_path(state_directory: Path) -> Path:
    return Path(state_directory) / "state.db"


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory (0700; ``perms.prepare_state_dir`` lets QEMU's user pass through)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
