import json
import multiprocessing

import pytest

from vmsandbox.exceptions import NotFoundError, SandboxError
from vmsandbox.models import SandboxInfo, SandboxState
from vmsandbox.store import Store


def _reserve(store, id, name, port_range=(30000, 30100)):
    record = SandboxInfo(id=id, name=name, state=SandboxState.CREATING, box="tiny", domain=f"vmsbx-{name}",
                         ssh_port=0, cpu="1", memory="256M", disk="1G", network_mode="none", persistent=False,
                         created_at=0.0, last_used_at=0.0, uuid="u")
    return store.reserve_sandbox(record, port_range)


def test_reserve_get_update_delete(tmp_path):
    s = Store(tmp_path / "state.db")
    info = _reserve(s, "sb-1", "a")
    assert info.state is SandboxState.CREATING
    assert 30000 <= info.ssh_port <= 30100
    assert s.get_sandbox("a").id == "sb-1"
    s.update_sandbox("sb-1", state=SandboxState.RUNNING, host_key="k")
    got = s.get_sandbox("sb-1")
    assert got.state is SandboxState.RUNNING and (got.uuid, got.host_key) == ("u", "k")
    assert SandboxInfo.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    with pytest.raises(SandboxError, match="already exists"):
        _reserve(s, "sb-2", "a")
    s.delete_sandbox("sb-1")
    with pytest.raises(NotFoundError):
        s.get_sandbox("a")


def test_ports_are_unique_and_range_exhaustion_is_clear(tmp_path):
    s = Store(tmp_path / "state.db")
    ports = {_reserve(s, f"sb-{i}", f"n{i}", (31000, 31004)).ssh_port for i in range(5)}
    assert len(ports) == 5
    with pytest.raises(SandboxError, match="no free SSH port"):
        _reserve(s, "sb-x", "nx", (31000, 31004))


def _worker(path, i, q):
    s = Store(path)
    q.put(_reserve(s, f"sb-{i}", f"p{i}", (32000, 32010)).ssh_port)


def test_concurrent_processes_never_share_a_port(tmp_path):
    path = tmp_path / "state.db"
    Store(path)
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_worker, args=(path, i, q)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    ports = [q.get(timeout=5) for _ in procs]
    assert len(set(ports)) == 8


def test_audit_roundtrip(tmp_path):
    s = Store(tmp_path / "state.db")
    s.audit("create", "ok", sandbox_id="sb-1", sandbox_name="a", seconds=1.5)
    s.audit("execute", "ok", sandbox_id="sb-1", sandbox_name="a", command="ls")
    s.audit("create", "ok", sandbox_id="sb-2", sandbox_name="b")
    rows = s.read_audit("a")
    assert [r["operation"] for r in rows] == ["create", "execute"]
    assert rows[1]["detail"]["command"] == "ls"
    assert len(s.read_audit()) == 3


def test_journal_step_waits_for_a_writer_in_another_thread(tmp_path):
    """A step recorded while another thread writes (a rollback beside the previous guest's
    retirement) waits for it instead of failing with 'database is locked'."""
    import threading
    import time
    s = Store(tmp_path / "state.db")
    s.journal_begin("op-1", "rollback", None, {"a": 1})
    holding, done = threading.Event(), threading.Event()

    def writer():
        with s.transaction(immediate=True):
            s.journal_begin("op-2", "collect", None, {})
            holding.set()
            time.sleep(0.3)
        done.set()
    t = threading.Thread(target=writer)
    t.start()
    holding.wait(5)
    s.journal_step("op-1", "layer", new_ref="/x")
    t.join()
    assert done.is_set()
    entry = next(e for e in s.journal_entries() if e["id"] == "op-1")
    assert entry["step"] == "layer" and entry["data"] == {"a": 1, "new_ref": "/x"}
