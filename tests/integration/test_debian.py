"""The debian box on real guests: boot, ACPI stop, ansible through the dynamic inventory before and
after a rollback, provision + snapshot + two isolated clones, a failing playbook rolled back.

Select with ``-m debian``. The box is built once and kept in the shared box directory; a session
rebuilds it only when it is missing or the recipe's digest changed (``vmsandbox.boxes.recipe_digest``).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmsandbox import ProvisionError
from vmsandbox.boxes import INFO_FILE, BoxStore, recipe_digest
from vmsandbox.exceptions import NotFoundError

from .conftest import BOX_DIR

pytestmark = [pytest.mark.debian, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
LIMITS = {"memory": "512M", "disk": "2G"}
PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: mark the base
      copy: {dest: /etc/provisioned, content: "base\\n"}
    - name: a user for the jobs
      user: {name: builder, shell: /bin/bash}
"""
FAILING = """
- hosts: all
  gather_facts: false
  tasks:
    - name: damage the state
      copy: {dest: /root/state, content: "damaged\\n"}
    - name: this task fails
      command: /bin/false
"""


@pytest.fixture(scope="session")
def debian_box():
    store = BoxStore(Path(BOX_DIR))
    digest = recipe_digest("debian")
    try:
        box = store.get("debian")
        if json.loads((box.path / INFO_FILE).read_text()).get("recipe_digest") == digest:
            return box
    except NotFoundError:
        pass
    return store.build("debian", force=True)


@pytest.fixture(scope="module")
def config_file(env):
    """The env's config as a file, for the CLI, vmsandbox-inventory and the ProxyCommand."""
    path = Path(env.state_dir) / "config.yaml"
    path.write_text(yaml.safe_dump(env.config()))
    return path


def run(argv, config_file, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VMSANDBOX_CONFIG": str(config_file), "ANSIBLE_NOCOLOR": "1"})
    if check:
        assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def ping(config_file, pattern="all"):
    proc = run([str(BIN / "ansible"), "-i", str(BIN / "vmsandbox-inventory"), pattern, "-m", "ping", "-o"],
               config_file, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_boot_python_network_and_acpi_stop(core, debian_box):
    sid = core.create_sandbox("deb-boot", {"box": "debian", "resource_limits": LIMITS})
    r = core.execute(sid, "python3 -c 'import sys; print(sys.version_info[0])'; ip -4 -o addr show dev eth0;"
                     " cat /etc/debian_version; df -B1M --output=size / | tail -1; id -un")
    out = r.stdout.split("\n")
    assert r.exit_code == 0, r
    assert out[0] == "3" and "10.0.2.15/24" in out[1] and out[2].startswith("12.")
    assert int(out[3]) > 1500, "the root file system did not grow to the 2G sandbox disk"
    assert out[4] == "root"
    core.stop(sid, timeout=60)
    log = core.console_log(core.get(sid)).read_text(errors="replace")
    assert "Will now halt" in log and "reboot: Power down" in log, log[-2000:]   # init's clean path, not a hard stop
    core.start(sid)
    assert core.execute(sid, "cat /etc/hostname").exit_code == 0
    core.destroy(sid)


def test_ansible_inventory_before_and_after_rollback(core, debian_box, config_file):
    sid = core.create_sandbox("deb-inv", {"box": "debian", "resource_limits": LIMITS})
    run([str(BIN / "vmsandbox"), "label", "deb-inv", "role=base"], config_file)
    doc = json.loads(run([str(BIN / "vmsandbox-inventory"), "--list"], config_file).stdout)
    assert "deb-inv" in doc["box_debian"]["hosts"] and doc["label_role_base"]["hosts"] == ["deb-inv"]
    host = json.loads(run([str(BIN / "vmsandbox-inventory"), "--host", "deb-inv"], config_file).stdout)
    assert host["ansible_user"] == "root" and "StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"]

    code, out = ping(config_file, "label_role_base")
    assert code == 0 and "deb-inv | SUCCESS" in out, out

    snap = core.create_snapshot(sid, "inv")
    port = core.get(sid).ssh_port
    core.execute(sid, "echo later > /root/later")
    assert core.rollback(sid, snap)
    assert core.get(sid).ssh_port != port               # a new guest on a new forwarded port
    code, out = ping(config_file, "deb-inv")
    assert code == 0 and "deb-inv | SUCCESS" in out, out
    proc = run([str(BIN / "ansible"), "-i", str(BIN / "vmsandbox-inventory"), "deb-inv", "-m", "command",
                "-a", "ls /root"], config_file)
    assert "later" not in proc.stdout
    core.destroy(sid)


def test_provision_snapshot_and_isolated_clones(core, debian_box, tmp_path):
    sid = core.create_sandbox("deb-base", {"box": "debian", "resource_limits": LIMITS})
    playbook = tmp_path / "base.yml"
    playbook.write_text(PLAYBOOK)
    lines = []
    result = core.provision(sid, playbook, snapshot="base", output=lines.append)
    assert result.ok and result.snapshot
    assert any(line.startswith("TASK [a user for the jobs]") for line in lines)
    assert [s.name for s in core.list_snapshots(sid)] == ["base"]

    c1 = core.create_sandbox("deb-c1", {"clone_from": result.snapshot})
    c2 = core.create_sandbox("deb-c2", {"clone_from": result.snapshot})
    for clone in (c1, c2):
        r = core.execute(clone, "cat /etc/provisioned; id -un builder")
        assert r.stdout.split() == ["base", "builder"], r
    core.execute(c1, "echo one > /root/mine")
    core.execute(c2, "echo two > /root/mine")
    assert core.execute(c1, "cat /root/mine").stdout.strip() == "one"
    assert core.execute(c2, "cat /root/mine").stdout.strip() == "two"
    assert core.execute(sid, "test -e /root/mine").exit_code == 1
    for s in (c1, c2, sid):
        core.destroy(s)


def test_failing_playbook_reports_the_task_and_rolls_back(core, debian_box, tmp_path, config_file):
    sid = core.create_sandbox("deb-fail", {"box": "debian", "resource_limits": LIMITS})
    core.execute(sid, "echo before > /root/state")
    playbook = tmp_path / "failing.yml"
    playbook.write_text(FAILING)
    with pytest.raises(ProvisionError) as err:
        core.provision(sid, playbook, snapshot="never")
    assert err.value.result.failed_task == "this task fails"
    assert core.execute(sid, "cat /root/state").stdout.strip() == "before"
    assert core.list_snapshots(sid) == []

    proc = run([str(BIN / "vmsandbox"), "provision", "deb-fail", str(playbook)], config_file, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: playbook failing.yml failed (exit 2) at task 'this task fails'; "
        "sandbox 'deb-fail' was rolled back to its state before provisioning")
    assert "TASK [damage the state]" in proc.stdout
    assert core.execute(sid, "cat /root/state").stdout.strip() == "before"
    core.destroy(sid)
