"""Run history of the farm: its own SQLite file ``<state_directory>/farm.db`` (mode 0600).

Owns the farm's records and nothing else: runs (farm, status, times, report paths, the pid that
ran it), the outcome of every job of a run, the base snapshots the farm prepared (keyed by the
digest of their inputs) and the failed states it keeps. The sandbox store (``state.db``) is not
touched: sandboxes, snapshots and layers stay there.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..exceptions import NotFoundError, StateCorruptionError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, farm TEXT NOT NULL, status TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL, pid INTEGER NOT NULL, source TEXT, outdir TEXT, base_digest TEXT,
    base_reused INTEGER, summary TEXT NOT NULL DEFAULT '{}', reports TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, status TEXT NOT NULL,
    sandbox TEXT, outcome TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS bases (
    digest TEXT PRIMARY KEY, farm TEXT NOT NULL, sandbox TEXT NOT NULL, snapshots TEXT NOT NULL,
    created_at REAL NOT NULL, last_used_at REAL NOT NULL, inputs TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS kept (
    snapshot TEXT PRIMARY KEY, sandbox TEXT NOT NULL, run_id TEXT NOT NULL, job TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL);
"""


def history_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "farm.db"


class History:
    """One connection per thread (sqlite3 objects must stay in their thread); WAL; writes are short."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        new = not self.path.exists()
        if new:
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as exc:
                raise StateCorruptionError(f"farm history {self.path} is unreadable: {exc}") from exc
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._lock:
                self._conns.append(db)
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, et, *_: Any) -> None:
            self.db.execute("ROLLBACK" if et else "COMMIT")

    def _tx(self) -> "History._Tx":
        return History._Tx(self._db())

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, run_id: str, farm: str, source: str, outdir: str, jobs: list[str]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO runs (id, farm, status, started_at, pid, source, outdir) VALUES (?,?,?,?,?,?,?)",
                       (run_id, farm, "running", time.time(), os.getpid(), source, outdir))
            db.executemany("INSERT INTO jobs (run_id, name, position, status) VALUES (?,?,?,?)",
                           [(run_id, n, i, "queued") for i, n in enumerate(jobs)])

    def set_base(self, run_id: str, digest: str, reused: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET base_digest=?, base_reused=? WHERE id=?", (digest, int(reused), run_id))

    def job_update(self, run_id: str, name: str, status: str, sandbox: str | None = None,
                   outcome: dict | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status=?, sandbox=COALESCE(?, sandbox), outcome=COALESCE(?, outcome) "
                       "WHERE run_id=? AND name=?",
                       (status, sandbox, json.dumps(outcome) if outcome is not None else None, run_id, name))

    def finish_run(self, run_id: str, status: str, summary: dict, reports: dict) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET status=?, finished_at=?, summary=?, reports=? WHERE id=?",
                       (status, time.time(), json.dumps(summary), json.dumps(reports), run_id))

    def runs(self, farm: str | None = None, limit: int = 50) -> list[dict]:
        q = "SELECT * FROM runs" + (" WHERE farm=?" if farm else "") + " ORDER BY started_at DESC LIMIT ?"
        return [_run(r) for r in self._db().execute(q, ((farm, limit) if farm else (limit,)))]

    def run(self, ref: str) -> dict:
        """A run by id or unique id prefix, with its jobs."""
        rows = list(self._db().execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY started_at DESC",
                                       (ref.replace("%", "").replace("_", r"\_") + "%",)))
        if not rows or len(ref) < 4:
            raise NotFoundError(f"no farm run {ref!r} (see `vmsandbox farm history`)")
        if len(rows) > 1 and rows[0]["id"] != ref:
            raise NotFoundError(f"{ref!r} matches {len(rows)} runs; give more of the id")
        run = _run(rows[0])
        run["jobs"] = [{"name": j["name"], "status": j["status"], "sandbox": j["sandbox"],
                        **json.loads(j["outcome"])}
                       for j in self._db().execute("SELECT * FROM jobs WHERE run_id=? ORDER BY position",
                                                   (run["id"],))]
        return run

    def unfinished_runs(self) -> list[dict]:
        return [_run(r) for r in self._db().execute("SELECT * FROM runs WHERE status='running'")]

    # -- bases -------------------------------------------------------------------------------
    def base(self, digest: str) -> Optional[dict]:
        r = self._db().execute("SELECT * FROM bases WHERE digest=?", (digest,)).fetchone()
        return None if r is None else _base(r)

    def bases(self, farm: str | None = None) -> list[dict]:
        q = "SELECT * FROM bases" + (" WHERE farm=?" if farm else "") + " ORDER BY last_used_at DESC"
        return [_base(r) for r in self._db().execute(q, (farm,) if farm else ())]

    def put_base(self, digest: str, farm: str, sandbox: str, snapshots: list[str], inputs: dict) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO bases VALUES (?,?,?,?,?,?,?)",
                       (digest, farm, sandbox, json.dumps(snapshots), now, now, json.dumps(inputs)))

    def touch_base(self, digest: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE bases SET last_used_at=? WHERE digest=?", (time.time(), digest))

    def drop_base(self, digest: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM bases WHERE digest=?", (digest,))

    # -- kept failed states --------------------------------------------------------------------
    def keep(self, snapshot: str, sandbox: str, run_id: str, job: str, expires_at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO kept VALUES (?,?,?,?,?,?)",
                       (snapshot, sandbox, run_id, job, time.time(), expires_at))

    def kept(self, expired_only: bool = False) -> list[dict]:
        q = "SELECT * FROM kept" + (" WHERE expires_at < ?" if expired_only else "") + " ORDER BY created_at"
        return [dict(r) for r in self._db().execute(q, (time.time(),) if expired_only else ())]

    def drop_kept(self, snapshot: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kept WHERE snapshot=?", (snapshot,))


def _base(r: sqlite3.Row) -> dict:
    return {**dict(r), "snapshots": json.loads(r["snapshots"]), "inputs": json.loads(r["inputs"])}


def _run(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["summary"] = json.loads(d["summary"])
    d["reports"] = json.loads(d["reports"])
    d["base_reused"] = None if d["base_reused"] is None else bool(d["base_reused"])
    return d

