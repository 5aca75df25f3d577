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
"""

_SANDBOX_COLS = ("id", "name", "state", "box", "domain", "ssh_port", "cpu", "memory", "disk",
                 "network_mode", "persistent", "created_at", "last_used_at", "reason", "extra")


class Store:
    """SQLite-backed records. ``path`` is the database file (created with its directory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            used = {r[0] for r in db.execute("SELECT ssh_port FROM sandboxes")}
            port = _pick_port(port_range, used, seed=hash(id))
            db.execute(
                f"INSERT INTO sandboxes ({', '.join(_SANDBOX_COLS)}) VALUES ({', '.join('?' * len(_SANDBOX_COLS))})",
                (id, name, SandboxState.CREATING.value, box, domain, port, cpu, memory, disk,
                 network_mode, int(persistent), now, now, "", json.dumps(extra or {})))
        return self.get_sandbox(id)

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
    """Create the state directory, traversable by the QEMU user (0711)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711)
    return path
