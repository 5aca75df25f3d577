"""Sandboxes end to end on real libvirt + QEMU + SSH: exec semantics, copy, concurrency,
restart, power states, bad input, and that nothing leaks."""
import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmsandbox import SandboxCore
from vmsandbox.boxes import BoxStore
from vmsandbox.cli import cli
from vmsandbox.exceptions import (ConfigError, GuestUnreachableError, NotFoundError, ProviderError,
                                  SecurityError, StateError)
from vmsandbox.models import SandboxState
from vmsandbox.providers.libvirt import accel

from .conftest import BOX_DIR, assert_clean, virsh_domains

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sid(core):
    s = core.create_sandbox("exec-1", {"box": "tiny", "resource_limits": {"cpu": "1", "memory": "256M", "disk": "1G"}})
    yield s
    core.destroy(s)


def test_exec_streams_exit_codes_and_stdin(core, sid):
    r = core.execute(sid, "echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out, r.truncated) == ("out\n", "err\n", 7, False, False)
    assert r.duration > 0
    r = core.execute(sid, "wc -c; cat /proc/version", stdin=b"x" * 100000)
    assert r.stdout.startswith("100000") and "Linux" in r.stdout


def test_exec_working_dir_and_env(core, sid):
    core.execute(sid, "mkdir -p '/src/with space'")
    r = core.execute(sid, "pwd; echo \"$GREETING\"", working_dir="/src/with space", env={"GREETING": "it's \"quoted\" $x"})
    assert r.stdout == "/src/with space\nit's \"quoted\" $x\n"
    r = core.execute(sid, "pwd", working_dir="/nonexistent")
    assert r.exit_code != 0 and "nonexistent" in r.stderr


def test_exec_timeout_kills_the_command(core, sid):
    r = core.execute(sid, "sleep 300 & echo started; wait", timeout=2)
    assert r.timed_out and r.exit_code is None and "started" in r.stdout
    assert 2 <= r.duration < 10
    left = core.execute(sid, "ps | grep -c '[s]leep 300'")
    assert left.stdout.strip() == "0", left


def test_large_output_is_truncated(env, tiny_box):
    core = env.core(ssh={"max_output": "1M"})
    s = core.create_sandbox("trunc")
    try:
        r = core.execute(s, "head -c 5000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2")
        assert r.truncated and len(r.stdout) == 1 << 20 and len(r.stderr) == 1 << 20 and r.exit_code == 0
    finally:
        core.destroy(s)


def test_put_and_get_files(core, sid, tmp_path):
    data = os.urandom(3 << 20)
    src = tmp_path / "blob"
    src.write_bytes(data)
    core.put_file(sid, src, "/root/blob")
    assert core.execute(sid, "md5sum /root/blob").stdout.split()[0] == hashlib.md5(data).hexdigest()
    core.get_file(sid, "/root/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    with pytest.raises(NotFoundError):
        core.get_file(sid, "/root/missing", tmp_path / "x")


def test_policy_blocks_before_anything_runs(core, sid):
    core.execute(sid, "echo keep > /root/canary")
    with pytest.raises(SecurityError, match="blocked"):
        core.execute(sid, "rm -rf /")
    with pytest.raises(SecurityError, match="needs approval"):
        core.execute(sid, "cat /etc/shadow")
    assert core.execute(sid, "cat /etc/shadow >/dev/null; echo $?", approve=True).stdout == "0\n"
    assert core.execute(sid, "cat /root/canary").stdout == "keep\n"
    levels = [(r["outcome"], r["detail"]["level"]) for r in core.audit_log("exec-1") if r["operation"] == "policy"]
    assert ("block", "CRITICAL") in levels and ("needs_approval", "HIGH") in levels and ("approved", "HIGH") in levels


def test_two_sandboxes_at_once(core):
    ids, errors = {}, []

    def make(name):
        try:
            ids[name] = core.create_sandbox(name)
        except Exception as exc:       # surfaced below
            errors.append(exc)
    threads = [threading.Thread(target=make, args=(n,)) for n in ("twin-a", "twin-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        a, b = (core.get(ids[n]) for n in ("twin-a", "twin-b"))
        assert a.ssh_port != b.ssh_port and a.domain != b.domain
        core.execute(a.id, "echo a > /root/who")
        assert core.execute(b.id, "cat /root/who 2>&1 || true").stdout.strip().endswith("No such file or directory")
    finally:
        for i in ids.values():
            core.destroy(i)


def test_new_core_sees_and_uses_earlier_sandboxes(env, core, sid):
    later = env.core()
    assert later.get("exec-1").id == sid
    assert later.execute("exec-1", "echo again").stdout == "again\n"
    assert "exec-1" in [i.name for i in later.list_sandboxes()]


def test_stop_start_pause_resume_and_restart_of_host(core):
    s = core.create_sandbox("power", {"persistent": True})
    try:
        core.execute(s, "echo kept > /root/f; sync")
        core.pause(s)
        with pytest.raises(StateError):
            core.execute(s, "true")
        core.resume(s)
        core.stop(s)
        assert core.get(s).state is SandboxState.STOPPED
        info = core.get(s)
        subprocess.run(["virsh", "-c", "qemu:///system", "undefine", info.domain], check=True, capture_output=True)
        core.start(s)                                   # as after a host restart: definition gone, disk kept
        assert core.execute(s, "cat /root/f").stdout == "kept\n"
    finally:
        core.destroy(s)


def test_fractional_cpu_quota_applies(core):
    s = core.create_sandbox("quota", {"resource_limits": {"cpu": "0.5"}})
    try:
        out = subprocess.run(["virsh", "-c", "qemu:///system", "schedinfo", core.get(s).domain],
                             capture_output=True, text=True).stdout
        assert "vcpu_quota     : 50000" in out
    finally:
        core.destroy(s)


@pytest.mark.parametrize("name,cfg,exc,words", [
    ("tiny-bad", {"box": "no-such-box"}, NotFoundError, "no-such-box"),
    ("Bad_Name", {}, ConfigError, "not a valid sandbox name"),
    ("size", {"resource_limits": {"memory": "4Q"}}, ConfigError, "'4Q' is not a size"),
    ("zero", {"resource_limits": {"cpu": "0"}}, ConfigError, "resource_limits.cpu"),
    ("keys", {"colour": "blue"}, ConfigError, "colour"),
])
def test_bad_input_leaves_nothing(env, core, name, cfg, exc, words):
    before = env.leftovers()
    with pytest.raises(exc, match=words):
        core.create_sandbox(name, cfg)
    assert env.leftovers() == before


def test_duplicate_name(core, sid):
    with pytest.raises(ConfigError, match="already exists"):
        core.create_sandbox("exec-1")


def test_destroyed_sandbox_is_gone(env, core):
    s = core.create_sandbox("short-lived")
    core.destroy(s)
    with pytest.raises(NotFoundError):
        core.execute(s, "true")
    assert_clean(env, core)


def test_libvirtd_unreachable_is_one_clear_error(env, tiny_box):
    cfg = env.config(sandbox={"libvirt_uri": "qemu:///system?socket=/nonexistent/sock"})
    core = SandboxCore(config=cfg)
    try:
        with pytest.raises(ProviderError, match="libvirtd is not reachable"):
            core.create_sandbox("nolibvirt")
        assert "nolibvirt" not in [i.name for i in core.store.list_sandboxes()]
    finally:
        core.close()


def test_guest_that_never_answers_points_to_console_log(env, tmp_path):
    boxes = Path(env.state_dir) / "broken-boxes"
    # copy contents only: copy2 would carry libvirt's ownership xattrs ("already in use")
    shutil.copytree(Path(BOX_DIR) / "tiny", boxes / "broken", copy_function=shutil.copyfile)
    meta = boxes / "broken" / "0" / "libvirt" / "vmsandbox.json"
    meta.write_text(meta.read_text().replace("root=/dev/vda", "root=/dev/vdz rootwait=3"))
    os.chmod(boxes, 0o755)
    core = SandboxCore(config=env.config(sandbox={"box_directory": str(boxes), "boot_timeout_seconds": 20}))
    try:
        with pytest.raises(GuestUnreachableError) as e:
            core.create_sandbox("silent", {"box": "broken"})
        assert e.value.console_log and os.path.exists(e.value.console_log) and e.value.console_log in str(e.value)
        assert "silent" not in [i.name for i in core.store.list_sandboxes()]
        assert virsh_domains(env.prefix + "silent") == []
    finally:
        core.close()
        shutil.rmtree(boxes)


def test_imported_box_with_its_own_boot_loader(env, tmp_path):
    """A Vagrant libvirt box that boots from its own disk (syslinux), imported then run."""
    recipes = Path(__file__).resolve().parents[2] / "boxes" / "bootable"
    out = tmp_path / "out"
    subprocess.run(["sh", str(recipes / "build.sh"), str(out)], check=True, capture_output=True, timeout=300)
    boxes = Path(env.state_dir) / "imported-boxes"
    store = BoxStore(boxes)
    key = next(out.glob("**/ssh_key"))
    box = store.import_box(next(out.glob("*.box")), "legacy", ssh_user="root", ssh_key=key)
    assert box.kernel is None
    core = SandboxCore(config=env.config(sandbox={"box_directory": str(boxes)}))
    try:
        s = core.create_sandbox("legacy-1", {"box": "legacy"})
        assert "root=/dev/vda2" in core.execute(s, "cat /proc/cmdline").stdout   # syslinux's APPEND line
        assert core.execute(s, "mount | grep ' / '").stdout.startswith("/dev/vda2")
        core.destroy(s)
    finally:
        core.close()


def test_accelerator_probe_is_bounded(tmp_path):
    t = time.monotonic()
    kind, why = accel.choose("auto", tmp_path, timeout=5)
    assert time.monotonic() - t < 5 + 2 * 5 + 3          # the boot-sector stage, then the Linux stage
    assert kind in ("kvm", "tcg") and why
    ok, _ = accel.probe("tcg")
    assert ok
    if kind == "tcg":
        assert "KVM unusable" in why
    assert accel.choose("auto", tmp_path)[1].endswith("(cached)")


def test_cli_create_exec_list_destroy(env, tiny_box):
    runner = CliRunner()
    base = ["--state-dir", env.state_dir]
    os.environ["VMSANDBOX_CONFIG"] = ""
    cfg = Path(env.state_dir) / "cli.yaml"
    cfg.write_text(f"sandbox:\n  box_directory: {BOX_DIR}\n  domain_prefix: {env.prefix}\nmonitoring:\n  enabled: false\n")
    base = ["--config", str(cfg)] + base
    r = runner.invoke(cli, base + ["create", "cli-1", "--box", "tiny", "--json"])
    assert r.exit_code == 0, r.output
    try:
        r = runner.invoke(cli, base + ["exec", "cli-1", "--", "uname", "-a"])
        assert r.exit_code == 0 and "Linux" in r.output
        r = runner.invoke(cli, base + ["exec", "cli-1", "--", "exit 3"])
        assert r.exit_code == 3
        r = runner.invoke(cli, base + ["exec", "cli-1", "--", "rm -rf /"])
        assert r.exit_code == 5 and r.output.startswith("error: blocked") and "Traceback" not in r.output
        r = runner.invoke(cli, base + ["list", "--json"])
        assert '"name": "cli-1"' in r.output
    finally:
        r = runner.invoke(cli, base + ["destroy", "cli-1"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(cli, base + ["exec", "cli-1", "--", "true"])
    assert r.exit_code == 3 and "no sandbox 'cli-1'" in r.output


def test_network_none_keeps_the_guest_in_nat_lets_it_out(core):
    """restrict=on: a guest connection to a host listener (slirp's 10.0.2.2 is the host's loopback)
    never arrives; network_mode nat drops restrict and it does. Only 127.0.0.1 is ever reached."""
    import socket
    results = {}
    for mode in ("none", "nat"):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(6)
        port = srv.getsockname()[1]
        s = core.create_sandbox(f"net-{mode}", {"network_mode": mode})
        try:
            assert core.execute(s, "command -v nc").exit_code == 0
            core.execute(s, f"(echo hello | nc -w 3 10.0.2.2 {port}) >/dev/null 2>&1 &")
            try:
                conn, _ = srv.accept()
                results[mode] = conn.recv(16)
                conn.close()
            except socket.timeout:
                results[mode] = None
        finally:
            srv.close()
            core.destroy(s)
    assert results == {"none": None, "nat": b"hello\n"}


def test_domains_carry_their_state_directory(env, core, sid):
    domain = core.get(sid).domain
    assert domain in core.provider.list_machines(env.prefix, owner=str(core.state_dir))
    assert domain not in core.provider.list_machines(env.prefix, owner="/somewhere/else")
