"""The seams of issue "one provider seam": a state directory of the first release opens and works
(schema migration), records round-trip through JSON, a provider registers with one line, a missing
capability is one clear error, and the package has no import cycle."""
import ast
import json
import sqlite3
from pathlib import Path

import pytest

from vmsandbox.exceptions import SandboxError
from vmsandbox.models import ExecutionResult, SandboxState
from vmsandbox.providers import PROVIDERS
from vmsandbox.providers.fake import FakeProvider
from vmsandbox.store import SCHEMA_VERSION, Store
from vmsandbox.testing import fake_core

from .conftest import NO_POLICY

DATA = Path(__file__).parent.parent / "data"


def test_a_version_0_state_directory_is_upgraded_in_place(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript((DATA / "state_v0.sql").read_text())
    extra = {"uuid": "u-1", "mac": "52:54:00:aa:bb:cc", "active_layer": "Lactive", "generation": 2,
             "ttl_seconds": 99.0, "host_key": "ssh-ed25519 AAAAkey", "throttled": 0.25, "cloned_from": "sn-x"}
    db.execute("INSERT INTO sandboxes VALUES ('sb-1','old','running','tiny','vmsbx-old-1',20001,'1','256M','1G',"
               "'none',0,1.0,2.0,'',?)", (json.dumps(extra),))
    db.execute("INSERT INTO layers VALUES ('Lfrozen','/s/layers/Lfrozen.qcow2',NULL,'tiny','sb-1',1,1.0)")
    db.execute("INSERT INTO layers VALUES ('Lactive','/s/layers/Lactive.qcow2','Lfrozen','tiny','sb-1',0,1.0)")
    db.execute("INSERT INTO snapshots VALUES ('sn-1','sb-1','base','Lfrozen','/s/memory/sn-1.save','1','256M',1.0,'{}')")
    db.commit()
    db.close()
    s = Store(tmp_path / "state.db")
    info = s.get_sandbox("old")
    assert (info.uuid, info.mac, info.active_layer, info.generation, info.ttl_seconds, info.host_key,
            info.throttled, info.cloned_from, info.provider) == (
        "u-1", "52:54:00:aa:bb:cc", "Lactive", 2, 99.0, "ssh-ed25519 AAAAkey", 0.25, "sn-x", "libvirt")
    assert s.get_layer("Lactive").ref == "/s/layers/Lactive.qcow2" and s.get_layer("Lfrozen").frozen
    assert s.get_snapshot("sn-1").memory_ref == "/s/memory/sn-1.save"
    assert s._db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    s.update_sandbox(info.id, state=SandboxState.STOPPED)
    s.close()
    assert Store(tmp_path / "state.db").get_sandbox("old").state is SandboxState.STOPPED   # reopening is a no-op


def test_a_version_1_database_gains_throttle_reason(tmp_path):
    s = Store(tmp_path / "state.db")
    db = s._db()
    db.execute("ALTER TABLE sandboxes DROP COLUMN throttle_reason")      # what version 1 looked like
    db.execute("PRAGMA user_version = 1")
    s.close()
    s = Store(tmp_path / "state.db")
    assert "throttle_reason" in {r[1] for r in s._db().execute("PRAGMA table_info(sandboxes)")}
    assert s._db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_2_database_gains_pinned_snapshots(tmp_path):
    s = Store(tmp_path / "state.db")
    db = s._db()
    db.execute("INSERT INTO layers VALUES ('L1','/s/layers/L1.qcow2',NULL,'tiny','sb-1',1,1.0)")
    db.execute("ALTER TABLE snapshots DROP COLUMN pinned")               # what version 2 looked like
    db.execute("INSERT INTO snapshots VALUES ('sn-1','sb-1','base','L1',NULL,'1','256M',1.0,'{}')")
    db.execute("PRAGMA user_version = 2")
    s.close()
    s = Store(tmp_path / "state.db")
    assert s._db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert s.get_snapshot("sn-1").pinned is False                       # existing snapshots: not pinned
    s.update_snapshot("sn-1", pinned=True)
    s.close()
    assert Store(tmp_path / "state.db").get_snapshot("sn-1").pinned is True


def test_a_newer_database_is_refused(tmp_path):
    Store(tmp_path / "state.db").close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    from vmsandbox.exceptions import StateCorruptionError
    with pytest.raises(StateCorruptionError, match="newer"):
        Store(tmp_path / "state.db")


def test_records_round_trip_through_json(core):
    sid = core.create_sandbox("rt")
    r = core.execute(sid, "true")
    assert (r.command, r.sandbox) == ("true", "rt") and r.started_at > 0
    assert ExecutionResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    snap = core.store.get_snapshot(core.create_snapshot(sid, "s"))
    assert type(snap).from_dict(json.loads(json.dumps(snap.to_dict()))) == snap
    info = core.get(sid)
    assert type(info).from_dict(json.loads(json.dumps(info.to_dict()))) == info and info.ref.endswith("/rt")


class _OneShotProvider(FakeProvider):
    """A provider without snapshots, registered at test time like any new provider."""
    name = "oneshot"
    capabilities = frozenset({"disk_snapshots"})


def test_a_new_provider_is_a_module_and_a_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(PROVIDERS, "oneshot", f"{__name__}._OneShotProvider")
    core = fake_core(tmp_path, {**NO_POLICY, "sandbox": {"provider": "oneshot"}})
    assert core.provider.name == "oneshot"
    sid = core.create_sandbox("plain")
    assert core.get(sid).provider == "oneshot"
    with pytest.raises(SandboxError, match="the oneshot provider cannot take a snapshot with memory"):
        core.create_snapshot(sid, "s", memory=True)
    with pytest.raises(SandboxError, match="the oneshot provider cannot pause a sandbox"):
        core.pause(sid)
    assert core.get(sid).state is SandboxState.RUNNING
    core.destroy(sid)


def test_the_package_has_no_import_cycle():
    root = Path(__file__).parent.parent.parent / "vmsandbox"
    mods = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    graph = {}
    for name, f in mods.items():
        pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                deps |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[name] = deps - {name}
    state: dict = {}

    def visit(n, path):
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[n] = 2
    for n in graph:
        if n not in state:
            visit(n, [n])
