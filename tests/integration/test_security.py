"""Security on real guests: nothing in the state directory is readable by other users through a
whole lifecycle (QEMU still boots, snapshots, restores and clones); copies are capped, leave nothing
partial (SIGTERM included), go into directories, recurse and keep modes; every sandbox and clone
has its own SSH host key and a wrong pin is refused."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vmsandbox import hostkeys, perms
from vmsandbox.exceptions import ConfigError, ResourceLimitError, SecurityError
from vmsandbox.ssh import SSHSession

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]


def readable_by_others(state_dir: str) -> list[str]:
    """Every path under ``state_dir`` (itself included) that group or others may read, write or
    enter, beyond QEMU's search-only ACL entry on the directories it must pass through."""
    bad = []
    paths = [state_dir] + [os.path.join(d, n) for d, dirs, files in os.walk(state_dir) for n in dirs + files]
    for p in paths:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = st.st_mode & 0o077
        if stat.S_ISDIR(st.st_mode) and perms._acl_users(Path(p)) and set(perms._acl_users(Path(p)).values()) <= {1}:
            mode &= ~0o010                                       # the ACL mask: search for QEMU only
        if mode:
            bad.append(f"{stat.filemode(st.st_mode)} {p}")
    return bad


def test_state_directory_stays_private_through_a_full_lifecycle(env):
    core = env.core(rollback={"compression": True})
    sd = env.state_dir
    seen = []

    def walk(phase):
        bad = readable_by_others(sd)
        assert bad == [], f"after {phase}: {bad}"
        assert perms.check(Path(sd), core.config.sandbox.box_path) == [], phase
        seen.extend(str(p) for p in Path(sd).rglob("*"))

    assert stat.S_IMODE(os.stat(sd).st_mode) & 0o067 in (0, 0o010)
    sid = core.create_sandbox("perm-1")
    walk("create")
    core.execute(sid, "echo secret-in-ram > /tmp/r; echo secret-on-disk > /root/d; sync")
    core.get_file(sid, "/root/d", Path(sd) / "sandboxes" / "copied")      # a copy landing in the state dir
    (Path(sd) / "sandboxes" / "copied").unlink()
    snap = core.create_snapshot(sid, "with-memory")                        # raw .save, compressed later
    walk("memory snapshot")
    core.snapshots.wait_background()
    mem = core.store.get_snapshot(snap).memory_ref
    assert mem.endswith(".save.zst") and stat.S_IMODE(os.stat(mem).st_mode) == 0o600
    walk("compression")
    core.execute(sid, "echo changed > /root/d")
    core.rollback(sid, snap)                                               # via a .restore temp file
    assert core.execute(sid, "cat /root/d /tmp/r").stdout.split() == ["secret-on-disk", "secret-in-ram"]
    walk("rollback")
    clone = core.create_sandbox("perm-2", {"clone_from": snap})
    assert core.execute(clone, "cat /root/d").stdout.strip() == "secret-on-disk"
    walk("clone")
    disk_only = core.create_snapshot(clone, "disk-only", memory=False)
    core.rollback(clone, disk_only)                                        # a cold boot on 0600 layers
    walk("disk-only rollback")
    core.stop(clone)
    core.start(clone)
    walk("stop/start")
    assert any(p.endswith(".save") or p.endswith(".save.zst") for p in seen)
    assert any(p.endswith(".qcow2") for p in seen) and any("console-" in p for p in seen)
    check = next(c for c in core.doctor() if c.name == "state permissions")
    assert check.ok, check.detail
    core.destroy(clone)
    core.destroy(sid)
    walk("destroy")
    # doctor names a violation and the command that fixes it
    leak = Path(sd) / "memory" / "planted.save.zst"
    leak.write_bytes(b"x")
    os.chmod(leak, 0o644)
    check = next(c for c in core.doctor() if c.name == "state permissions")
    assert not check.ok and str(leak) in check.detail and check.fix == f"chmod 600 {leak}"
    subprocess.run(check.fix, shell=True, check=True)
    assert next(c for c in core.doctor() if c.name == "state permissions").ok
    leak.unlink()


@pytest.fixture(scope="module")
def pair(env):
    """Two sandboxes of the tiny box, a memory snapshot of the first and a clone of it."""
    core = env.core()
    a = core.create_sandbox("key-a")
    b = core.create_sandbox("key-b")
    core.execute(a, "echo from-a > /root/who")
    snap = core.create_snapshot(a, "a1")
    c = core.create_sandbox("key-c", {"clone_from": snap})
    yield core, a, b, c, snap
    for x in (c, b, a):
        core.destroy(x)


def _connect(core, sid, key):
    info = core.get(sid)
    box = core.boxes.get(info.box)
    s = SSHSession("127.0.0.1", info.ssh_port, box.ssh_user, box.ssh_key, key, connect_timeout=5)
    try:
        s.wait_ready(10)
        return s.execute("cat /root/who 2>/dev/null; echo .").stdout
    finally:
        s.close()


def test_each_sandbox_and_clone_has_its_own_host_key(pair):
    core, a, b, c, snap = pair
    box_key = core.boxes.get("tiny").host_key
    keys = [core.get(x).host_key for x in (a, b, c)]
    assert len(set(keys)) == 3 and box_key not in keys
    for sid, key in zip((a, b, c), keys):
        _connect(core, sid, key)                                   # the recorded pin works
        for wrong in {box_key, *keys} - {key}:                      # any other pin is refused
            with pytest.raises(SecurityError, match="does not match the pinned key"):
                _connect(core, sid, wrong)
    rows = [r for r in core.audit_log("key-c") if r["operation"] == "host_key"]
    assert rows and rows[-1]["detail"]["fingerprint"] == hostkeys.fingerprint(keys[2])
    # the guest serves the key we recorded (checked with OpenSSH's own fingerprint of it)
    shown = core.execute(c, "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key 2>/dev/null "
                            "|| echo no-dropbearkey").stdout
    assert "no-dropbearkey" in shown or keys[2].split()[1] in shown


def test_rollback_keeps_the_sandbox_key(pair):
    core, a, b, c, snap = pair
    key = core.get(a).host_key
    core.rollback(a, snap)                                          # memory snapshot, taken after rotation
    assert core.get(a).host_key == key and "from-a" in _connect(core, a, key)
    disk = core.create_snapshot(a, "disk", memory=False)
    core.rollback(a, disk)                                          # cold boot from the disk
    assert core.get(a).host_key == key and "from-a" in _connect(core, a, key)
    with pytest.raises(SecurityError):
        _connect(core, a, core.boxes.get("tiny").host_key)


def test_a_listener_that_keeps_its_old_key_is_restarted(pair):
    """The fallback for SSH servers that do not re-read keys per connection: restart the listener
    (busybox init respawns it) and only then connect with the new pin."""
    core, a, b, c, snap = pair
    info = core.get(b)
    key = info.host_key
    s = core.session(info)
    before = s.execute("ps | grep -c '[d]ropbear -F'").stdout
    started = time.monotonic()
    hostkeys._restart_listener(s, key, s.execute(
        "for d in /proc/[0-9]*; do read -r _ c _ p _ < $d/stat; [ $p = 1 ] && [ $c = '(dropbear)' ] && "
        "! grep -q -- '-2' $d/cmdline && echo ${d#/proc/}; done").stdout.split()[0], 30)
    took = time.monotonic() - started
    assert "from" not in _connect(core, b, key) and before
    print(f"listener restart through busybox init: {took:.2f} s")


def test_cp_cap_dir_recursion_modes(pair, tmp_path):
    core, a, b, c, snap = pair
    with pytest.raises(ResourceLimitError, match="copy limit of 8 MiB"):
        core.get_file(b, "/dev/zero", tmp_path, max_size=8 << 20)
    assert list(tmp_path.iterdir()) == []
    core.execute(b, "mkdir -p /srv/t/sub && echo x > /srv/t/sub/f && chmod 750 /srv/t/sub/f && "
                    "ln -s f /srv/t/sub/l && printf '#!/bin/sh\\n' > /srv/run && chmod 700 /srv/run")
    core.get_file(b, "/srv/run", tmp_path)                         # into a directory
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    with pytest.raises(ConfigError, match="-r"):
        core.get_file(b, "/srv/t", tmp_path)
    core.get_file(b, "/srv/t", tmp_path, recursive=True)
    assert (tmp_path / "t" / "sub" / "f").read_text() == "x\n" and os.readlink(tmp_path / "t" / "sub" / "l") == "f"
    assert stat.S_IMODE((tmp_path / "t" / "sub" / "f").stat().st_mode) == 0o750
    core.put_file(b, tmp_path / "t", "/root/back", recursive=True)
    assert core.execute(b, "cat /root/back/sub/f; stat -c %a /root/back/sub/f").stdout.split() == ["x", "750"]
    core.put_file(b, tmp_path / "run", "/root/")                   # into a guest directory
    assert core.execute(b, "stat -c %a /root/run").stdout.strip() == "700"
    rows = [r["outcome"] for r in core.audit_log("key-b") if r["operation"].startswith("copy_")]
    assert rows.count("failed") == 2 and "ok" in rows


def test_cli_cp_sigterm_leaves_no_partial_file(env, pair, tmp_path):
    core, a, b, c, snap = pair
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(env.config()))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "from vmsandbox.cli import main; main()", "--config", str(cfg),
                             "cp", "key-b:/dev/zero", str(out / "zero"), "--max-size", "100G"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".part") and p.stat().st_size > 4 << 20 for p in out.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert list(out.iterdir()) == []
    r = subprocess.run([sys.executable, "-c", "from vmsandbox.cli import main; main()", "--config", str(cfg),
                        "cp", "key-b:/dev/zero", str(out), "--max-size", "1M"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 6 and r.stderr.count("\n") == 1 and "copy limit of 1 MiB" in r.stderr
    assert list(out.iterdir()) == []
    assert core.execute(b, "pgrep -f 'cat /dev/zero' || echo none").stdout.strip() == "none"
