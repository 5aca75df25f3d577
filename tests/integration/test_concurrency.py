"""Two operations on one sandbox, many commands at once, a stalled SSH server, libvirtd gone:
on real guests. After each case nothing is left that the state does not account for (domains
match records, no stray layer or memory file, the layer tree verified)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from vmsandbox.exceptions import SandboxError, StateError
from vmsandbox.models import SandboxState

from .conftest import assert_clean, virsh_domains

pytestmark = pytest.mark.timeout(600)


def run_both(*fns):
    """Run the callables in threads at once; return what each returned or raised."""
    results: list = [None] * len(fns)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:        # noqa: BLE001 - the test inspects it
            results[i] = exc
    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(300)
    return results


def consistent(env, core):
    core.snapshots.wait_background()
    assert_clean(env, core)
    records = {i.domain for i in core.store.list_sandboxes()}
    assert set(virsh_domains(env.prefix)) == records


def test_destroy_while_rollback_runs(env, core):
    sid = core.create_sandbox("cc-destroy")
    snap = core.create_snapshot(sid, "s")
    other = env.core()
    res = run_both(lambda: core.rollback(sid, snap), lambda: other.destroy(sid))
    assert res[1] is True, res
    assert res[0] is True or isinstance(res[0], SandboxError), res
    assert "cc-destroy" not in [i.name for i in core.list_sandboxes()]
    # A committed rollback retires the old guest in the background of the rolling-back core; the
    # destroy may finish first (a loaded host made that destroy take seconds: the flake).
    core.snapshots.wait_background()
    assert virsh_domains(env.prefix + "cc-destroy") == []
    consistent(env, core)


def test_exec_while_rollback_runs(env, core):
    sid = core.create_sandbox("cc-exec")
    core.execute(sid, "echo one > /root/f")
    snap = core.create_snapshot(sid, "s")
    core.execute(sid, "echo two > /root/f")
    other = env.core()
    res = run_both(lambda: core.rollback(sid, snap), lambda: other.execute(sid, "sleep 2; cat /root/f", timeout=30))
    assert res[0] is True, res
    assert not isinstance(res[1], BaseException) or isinstance(res[1], SandboxError), res
    info = other.get(sid)
    assert info.state is SandboxState.RUNNING, info
    assert other.execute(sid, "cat /root/f").stdout == "one\n"
    core.destroy(sid)
    consistent(env, core)


def test_two_rollbacks_and_snapshot_while_destroy(env, core):
    sid = core.create_sandbox("cc-rr")
    snap = core.create_snapshot(sid, "s")
    other = env.core()
    res = run_both(lambda: core.rollback(sid, snap), lambda: other.rollback(sid, snap))
    assert res == [True, True], res                   # the second waits for the first, then runs
    assert core.get(sid).generation == 2
    res = run_both(lambda: core.create_snapshot(sid, "t"), lambda: other.destroy(sid))
    assert res[1] is True and (isinstance(res[0], str) or isinstance(res[0], SandboxError)), res
    assert core.store.find_sandbox(sid) is None
    consistent(env, core)


def test_a_failed_rollback_leaves_the_sandbox_as_it_was(env, core):
    from vmsandbox.exceptions import RollbackError
    sid = core.create_sandbox("cc-fail")
    snap = core.create_snapshot(sid, "s")
    layer = core.store.get_layer(core.store.get_snapshot(snap).layer)
    os.rename(layer.ref, layer.ref + ".away")
    events = []
    core.on_rollback(events.append)
    try:
        with pytest.raises(RollbackError) as e:
            core.rollback(sid, snap)
    finally:
        os.rename(layer.ref + ".away", layer.ref)
    assert e.value.__cause__ is not None
    assert core.get(sid).state is SandboxState.RUNNING
    assert [(ev.ok, ev.snapshot_id) for ev in events] == [(False, snap)]
    assert core.audit_log("cc-fail")[-1]["operation"] == "rollback"
    assert core.audit_log("cc-fail")[-1]["outcome"] == "failed"
    core.destroy(sid)
    consistent(env, core)


def test_32_concurrent_cli_execs(env, core, tmp_path):
    import json
    sid = core.create_sandbox("cc-many")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(env.config()))
    procs = [subprocess.Popen([sys.executable, "-m", "vmsandbox.cli", "--config", str(cfg), "exec", "cc-many", "--",
                               f"echo n{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(32)]
    outs = [p.communicate(timeout=300) for p in procs]
    failed = [(p.returncode, err[-300:]) for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    assert failed == []
    assert sorted(o for o, _ in outs) == sorted(f"n{i}\n" for i in range(32))
    res = run_both(*[lambda i=i: core.execute(sid, f"echo t{i}").stdout for i in range(32)])
    assert sorted(res) == sorted(f"t{i}\n" for i in range(32)), res
    core.destroy(sid)


def test_timeout_holds_when_the_ssh_server_stalls(env, tmp_path):
    import json
    core = env.core(safety={"validation": {"enabled": False}})      # stopping sshd is CRITICAL by policy
    sid = core.create_sandbox("cc-stall")
    # stop every dropbear in the guest for 40 s (a helper outside the stopped processes resumes them)
    core.execute(sid, "setsid sh -c 'sleep 1; kill -STOP $(pidof dropbear); sleep 40; "
                      "kill -CONT $(pidof dropbear)' >/dev/null 2>&1 < /dev/null &")
    time.sleep(2)
    t = time.monotonic()
    r = core.execute(sid, "echo hi", timeout=5)
    assert r.timed_out and time.monotonic() - t < 5 + 5, (r, time.monotonic() - t)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(env.config(safety={"validation": {"enabled": False}})))
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vmsandbox.cli", "--config", str(cfg), "exec", "--timeout", "5",
                        "cc-stall", "--", "true"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 124 and time.monotonic() - t < 5 + 5 + 3, (p.returncode, p.stderr[-500:])
    assert core.get(sid).state is SandboxState.RUNNING          # unhealthy at most, never broken
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:                         # works again once the server answers
        r = core.execute(sid, "echo back", timeout=10)
        if not r.timed_out:
            break
    assert r.stdout == "back\n"
    core.destroy(sid)


def _libvirtd_pids():
    out = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_libvirtd_down_changes_nothing_and_recovers(env, core):
    sid = core.create_sandbox("cc-daemon")
    before = core.store.get_sandbox(sid)
    pids = _libvirtd_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGTERM)
    try:
        for _ in range(100):
            if not _libvirtd_pids():
                break
            time.sleep(0.1)
        fresh = env.core()
        from vmsandbox.exceptions import ProviderUnavailableError
        with pytest.raises(ProviderUnavailableError, match="libvirtd"):
            fresh.destroy(sid)
        with pytest.raises(ProviderUnavailableError, match="libvirtd"):
            fresh.create_snapshot(sid, "s", memory=True)
        assert fresh.store.get_sandbox(sid) == before          # no record changed
        assert fresh.execute(sid, "echo ok").stdout == "ok\n"  # the guest itself is fine
    finally:
        if not _libvirtd_pids():
            subprocess.run(["libvirtd", "-d"], check=True)
        for _ in range(100):
            if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
    assert core.get(sid).state is SandboxState.RUNNING
    assert core.destroy(sid) is True
    consistent(env, core)
