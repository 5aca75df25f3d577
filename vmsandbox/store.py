"""The state store: one SQLite database (WAL) under ``sandbox.state_directory``.

Owns the records that are the truth about sandboxes, their layer tree and snapshots, the
journal of operations in flight, and the audit log of every operation; returns them as the
typed records of ``models``. The schema is versioned (``PRAGMA user_version``) and older state
directories are upgraded in place when opened. Safe across threads (one connection per
thread) and processes (SQLite locking; ``BEGIN IMMEDIATE`` for read-modify-write such as
port reservation). Nothing else in vmsandbox issues SQL.
"""
from __future__ import annotations

import dataclasses
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
from .models import Layer, SandboxInfo, SandboxState, Snapshot

audit_log = logging.getLogger("vmsandbox.audit")

#: the schema version this code writes (``PRAGMA user_version``); ``MIGRATIONS`` bring older ones here
SCHEMA_VERSION = 2

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
    provider TEXT NOT NULL DEFAULT 'libvirt',
    host TEXT NOT NULL DEFAULT '',
    uuid TEXT NOT NULL DEFAULT '',
    mac TEXT NOT NULL DEFAULT '',
    active_layer TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL DEFAULT 0,
    ttl_seconds REAL NOT NULL DEFAULT 3600,
    host_key TEXT NOT NULL DEFAULT '',
    throttled REAL,
    throttle_reason TEXT NOT NULL DEFAULT '',
    cloned_from TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}'
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
-- The layer tree. parent NULL: the layer stands on its box image. A frozen layer never changes.
-- ref: the provider's own reference to the layer (a qcow2 path for libvirt).
CREATE TABLE IF NOT EXISTS layers (
    id TEXT PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
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
    memory_ref TEXT,                  -- the provider's saved memory state; NULL: disk only
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

_V1_COLUMNS = (("provider", "TEXT NOT NULL DEFAULT 'libvirt'", "'libvirt'"),
               ("host", "TEXT NOT NULL DEFAULT ''", "''"),
               ("uuid", "TEXT NOT NULL DEFAULT ''", "json_extract(extra, '$.uuid')"),
               ("mac", "TEXT NOT NULL DEFAULT ''", "json_extract(extra, '$.mac')"),
               ("active_layer", "TEXT NOT NULL DEFAULT ''", "json_extract(extra, '$.active_layer')"),
               ("generation", "INTEGER NOT NULL DEFAULT 0", "json_extract(extra, '$.generation')"),
               ("ttl_seconds", "REAL NOT NULL DEFAULT 3600", "json_extract(extra, '$.ttl_seconds')"),
               ("host_key", "TEXT NOT NULL DEFAULT ''", "json_extract(extra, '$.host_key')"),
               ("throttled", "REAL", "json_extract(extra, '$.throttled')"),
               ("throttle_reason", "TEXT NOT NULL DEFAULT ''", "json_extract(extra, '$.throttle_reason')"),
               ("cloned_from", "TEXT NOT NULL DEFAULT ''", "json_extract(extra, '$.cloned_from')"),
               ("labels", "TEXT NOT NULL DEFAULT '{}'", "'{}'"))


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    """Version 0 (the first release) kept per-sandbox fields in an ``extra`` JSON column and
    called layer and memory references paths: columns of their own, provider-neutral names."""
    for col, decl, value in _V1_COLUMNS:
        db.execute(f"ALTER TABLE sandboxes ADD COLUMN {col} {decl}")
        db.execute(f"UPDATE sandboxes SET {col} = COALESCE({value}, {col})")
    db.execute("ALTER TABLE sandboxes DROP COLUMN extra")
    db.execute("ALTER TABLE layers RENAME COLUMN path TO ref")
    db.execute("ALTER TABLE snapshots RENAME COLUMN memory_path TO memory_ref")


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Version 2 records why a sandbox is throttled (``throttle_reason``). Databases that went
    from version 0 straight to this code already have the column from the first step."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(sandboxes)")}
    if "throttle_reason" not in columns:
        db.execute("ALTER TABLE sandboxes ADD COLUMN throttle_reason TEXT NOT NULL DEFAULT ''")


#: version -> the step that upgrades a database of that version by one
MIGRATIONS = {0: _migrate_0_to_1, 1: _migrate_1_to_2}

_SANDBOX_COLS = tuple(f.name for f in dataclasses.fields(SandboxInfo))


class TreeStore:
    """Mixin: the layer tree, snapshots and the operation journal."""

    # layers
    def add_layer(self, id: str, ref: str, parent: str | None, box: str, owner: str, frozen: bool = False) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO layers (id, ref, parent, box, owner, frozen, created_at) VALUES (?,?,?,?,?,?,?)",
                       (id, ref, parent, box, owner, int(frozen), time.time()))

    def get_layer(self, id: str) -> Layer:
        row = self.find_layer(id)
        if row is None:
            raise StateCorruptionError(f"layer {id} is referenced but has no record")
        return row

    def find_layer(self, id: str) -> Optional[Layer]:
        row = self._db().execute("SELECT * FROM layers WHERE id=?", (id,)).fetchone()
        return _layer(row) if row else None

    def list_layers(self) -> list[Layer]:
        return [_layer(r) for r in self._db().execute("SELECT * FROM layers ORDER BY created_at")]

    def update_layer(self, id: str, **fields: Any) -> None:
        """Change ``parent``, ``ref`` or ``frozen`` of one layer."""
        bad = set(fields) - {"parent", "ref", "frozen"}
        if bad:
            raise ValueError(f"unknown layer fields {bad}")
        if "frozen" in fields:
            fields["frozen"] = int(fields["frozen"])
        with self.transaction() as db:
            db.execute(f"UPDATE layers SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), id))

    def freeze_layer(self, id: str) -> None:
        self.update_layer(id, frozen=True)

    def delete_layer(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM layers WHERE id=?", (id,))

    def collectable_layers(self) -> list[Layer]:
        """Frozen layers nothing stands on: no child layer, no snapshot."""
        return [_layer(r) for r in self._db().execute(
            "SELECT * FROM layers l WHERE frozen=1 AND NOT EXISTS (SELECT 1 FROM layers c WHERE c.parent=l.id) "
            "AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.layer=l.id)")]

    def layer_users(self, id: str) -> dict:
        db = self._db()
        return {"children": [r[0] for r in db.execute("SELECT id FROM layers WHERE parent=?", (id,))],
                "snapshots": [r[0] for r in db.execute("SELECT name FROM snapshots WHERE layer=?", (id,))]}

    # snapshots
    def add_snapshot(self, id: str, sandbox_id: str, name: str, layer: str, memory_ref: str | None,
                     cpu: str, memory: str, metadata: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO snapshots (id, sandbox_id, name, layer, memory_ref, cpu, memory, created_at, metadata)"
                       " VALUES (?,?,?,?,?,?,?,?,?)",
                       (id, sandbox_id, name, layer, memory_ref, cpu, memory, time.time(), json.dumps(metadata)))

    def get_snapshot(self, ref: str, sandbox_id: str | None = None) -> Snapshot:
        """By id, or by name within ``sandbox_id``. Raises NotFoundError."""
        db = self._db()
        row = db.execute("SELECT * FROM snapshots WHERE id=?", (ref,)).fetchone()
        if row is None and sandbox_id:
            row = db.execute("SELECT * FROM snapshots WHERE sandbox_id=? AND name=?", (sandbox_id, ref)).fetchone()
        if row is None:
            raise NotFoundError(f"no snapshot {ref!r}" + (" in this sandbox" if sandbox_id else "")
                                + " (see `vmsandbox snapshot list NAME`)")
        return _snapshot(row)

    def find_snapshot(self, id: str) -> Optional[Snapshot]:
        row = self._db().execute("SELECT * FROM snapshots WHERE id=?", (id,)).fetchone()
        return _snapshot(row) if row else None

    def list_snapshots(self, sandbox_id: str | None = None) -> list[Snapshot]:
        q = "SELECT * FROM snapshots" + (" WHERE sandbox_id=?" if sandbox_id else "") + " ORDER BY created_at"
        return [_snapshot(r) for r in self._db().execute(q, (sandbox_id,) if sandbox_id else ())]

    def update_snapshot(self, id: str, **fields: Any) -> None:
        bad = set(fields) - {"memory_ref", "metadata", "created_at"}
        if bad:
            raise ValueError(f"unknown snapshot fields {bad}")
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
        # read-then-write: a deferred transaction gets SQLITE_BUSY at once (no busy wait) when
        # another thread commits in between (a rollback's step beside the previous retirement)
        with self.transaction(immediate=True) as db:
            row = db.execute("SELECT data FROM journal WHERE id=?", (id,)).fetchone()
            merged = {**json.loads(row["data"]), **data} if row else data
            db.execute("UPDATE journal SET step=?, data=? WHERE id=?", (step, json.dumps(merged), id))

    def journal_end(self, id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM journal WHERE id=?", (id,))

    def journal_entries(self) -> list[dict]:
        return [{**dict(r), "data": json.loads(r["data"])}
                for r in self._db().execute("SELECT * FROM journal ORDER BY started_at")]


def _snapshot(row: sqlite3.Row) -> Snapshot:
    d = dict(row)
    d["metadata"] = json.loads(d["metadata"])
    return Snapshot(**d)


def _layer(row: sqlite3.Row) -> Layer:
    d = dict(row)
    d["frozen"] = bool(d["frozen"])
    return Layer(**d)


class Store(TreeStore):
    """SQLite-backed records. ``path`` is the database file (created with its directory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)      # the audit log holds command lines
        os.chmod(self.path, 0o600)
        self._local = threading.local()
        self._upgrade()

    def _upgrade(self) -> None:
        """Create the schema in a new database, or upgrade an older one in place, one version at a
        time, each step in one transaction under the write lock (safe against a second process)."""
        db = self._db()
        with self.transaction(immediate=True):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            fresh = db.execute("SELECT 1 FROM sqlite_master WHERE name='sandboxes'").fetchone() is None
            if version > SCHEMA_VERSION:
                raise StateCorruptionError(f"state database {self.path} is version {version}, newer than this "
                                           f"vmsandbox understands ({SCHEMA_VERSION}); upgrade vmsandbox")
            if not fresh:
                while version < SCHEMA_VERSION:
                    MIGRATIONS[version](db)
                    version += 1
            for stmt in _statements(SCHEMA):
                db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
    def reserve_sandbox(self, record: SandboxInfo, port_range: tuple[int, int]) -> SandboxInfo:
        """Insert ``record`` (state CREATING) with a free SSH port, atomically across processes.

        A port is free when no record holds it and nothing on 127.0.0.1 listens on it.
        Raises SandboxError if the name is taken or the range is exhausted.
        """
        now = time.time()
        with self.transaction(immediate=True) as db:
            if db.execute("SELECT 1 FROM sandboxes WHERE name=?", (record.name,)).fetchone():
                raise SandboxError(f"a sandbox named {record.name!r} already exists")
            port = _pick_port(port_range, self._used_ports(db), seed=hash(record.id))
            row = _to_row(dataclasses.replace(record, ssh_port=port, state=SandboxState.CREATING,
                                              created_at=now, last_used_at=now))
            db.execute(f"INSERT INTO sandboxes ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
        return self.get_sandbox(record.id)

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
        """Change columns of one record (any ``SandboxInfo`` field but ``id``)."""
        if not fields:
            return self.get_sandbox(id)
        bad = set(fields) - set(_SANDBOX_COLS) | ({"id"} & set(fields))
        if bad:
            raise ValueError(f"unknown sandbox fields {bad}")
        row = _to_row(fields)
        with self.transaction(immediate=True) as db:
            cur = db.execute(f"UPDATE sandboxes SET {', '.join(f'{k}=?' for k in row)} WHERE id=?", (*row.values(), id))
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


def _statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (``executescript`` would commit mid-transaction)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


def _row_to_info(row: sqlite3.Row) -> SandboxInfo:
    d = dict(row)
    d["state"] = SandboxState(d["state"])
    d["persistent"] = bool(d["persistent"])
    d["labels"] = json.loads(d["labels"])
    return SandboxInfo(**d)


def _to_row(fields: Any) -> dict:
    """A record (or some of its fields) as column values."""
    d = dataclasses.asdict(fields) if isinstance(fields, SandboxInfo) else dict(fields)
    if isinstance(d.get("state"), SandboxState):
        d["state"] = d["state"].value
    if "persistent" in d:
        d["persistent"] = int(d["persistent"])
    if "labels" in d:
        d["labels"] = json.dumps(d["labels"])
    return d


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
