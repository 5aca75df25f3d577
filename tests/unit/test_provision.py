"""Provisioning and the ansible inventory on the fakes: labels, groups, host variables, the
automatic snapshot, rollback and the failed task on failure. A stand-in ansible-playbook script
prints what the real one prints; real guests are in tests/integration/test_debian.py."""
import json
import os
import stat

import pytest

from vmsandbox import ConfigError, ProviderError, ProvisionError
from vmsandbox import provision as provision_mod
from vmsandbox.inventory import build_inventory, labels_of, parse_labels, set_labels
from vmsandbox.provision import printable

OK_OUTPUT = """
PLAY [all] *********************************************************************

TASK [maybe fails] *************************************************************
fatal: [{host}]: FAILED! => {{"changed": false, "msg": "ignored"}}
...ignoring

TASK [write a marker] **********************************************************
changed: [{host}]

PLAY RECAP *********************************************************************
"""

BAD_OUTPUT = """
PLAY [all] *********************************************************************

TASK [write a marker] **********************************************************
changed: [{host}]

TASK [this task fails] *********************************************************
fatal: [{host}]: FAILED! => {{"msg": "non-zero return code \x1b[31mred\x1b[0m"}}

PLAY RECAP *********************************************************************
"""


def fake_ansible(tmp_path, output: str, code: int):
    """An ansible-playbook stand-in: prints ``output`` (host filled in from --limit), records its argv."""
    script = tmp_path / "ansible-playbook"
    (tmp_path / "out.txt").write_text(output)
    script.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > {tmp_path}/argv
for a in "$@"; do case "$prev" in --limit) host=$a ;; -i) cp "$a" {tmp_path}/inventory.json ;; esac; prev=$a; done
sed "s/{{host}}/$host/g" {tmp_path}/out.txt
exit {code}
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.fixture
def playbook(tmp_path):
    p = tmp_path / "site.yml"
    p.write_text("- hosts: all\n  tasks: []\n")
    return p


def test_parse_labels():
    assert parse_labels(["role=base", "team=ci-1", "old-"]) == ({"role": "base", "team": "ci-1"}, ["old"])
    for bad in ("novalue", "Bad=x", "k=has space", "=v"):
        with pytest.raises(ConfigError):
            parse_labels([bad])


def test_inventory_groups_and_host_vars(core):
    a = core.create_sandbox("web-1")
    core.create_sandbox("db-1")
    assert set_labels(core, "web-1", {"role": "web", "env": "ci"}) == {"role": "web", "env": "ci"}
    assert set_labels(core, a, remove=["env"]) == {"role": "web"}
    assert labels_of(core.get(a)) == {"role": "web"}

    doc = build_inventory(core)
    assert doc["box_tiny"]["hosts"] == ["db-1", "web-1"]
    assert doc["label_role_web"]["hosts"] == ["web-1"]
    assert doc["state_running"]["hosts"] == ["db-1", "web-1"]
    assert "label_env_ci" not in doc
    assert set(doc["all"]["children"]) >= {"box_tiny", "label_role_web", "state_running"}
    hv = doc["_meta"]["hostvars"]["web-1"]
    info = core.get(a)
    assert hv["ansible_host"] == f"vmsandbox-{info.id}" and hv["ansible_user"] == "root"   # never dialled: the ProxyCommand is
    assert hv["ansible_port"] == info.ssh_port
    assert hv["vmsandbox_id"] == a and hv["vmsandbox_box"] == "tiny" and hv["vmsandbox_labels"] == {"role": "web"}
    args = hv["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in args and f"HostKeyAlias=vmsandbox-{a}" in args
    assert "ssh-proxy --box-dir" in hv["ansible_ssh_common_args"] and "web-1" in args
    # The ProxyCommand runs vmsandbox with a config file that names this core's state directory.
    config_file = args.split("--config ")[1].split()[0]
    assert json.loads(open(config_file).read())["sandbox"]["state_directory"] == str(core.state_dir)
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o600
    known = core.state_dir / "sandboxes" / a / "known_hosts"
    assert known.read_text().startswith(f"vmsandbox-{a} ssh-ed25519 ")


def test_provision_success_snapshots_and_drops_the_automatic_snapshot(core, tmp_path, playbook, monkeypatch):
    monkeypatch.setattr(provision_mod, "ansible_playbook_command", lambda: fake_ansible(tmp_path, OK_OUTPUT, 0))
    sid = core.create_sandbox("box-1")
    lines = []
    result = core.provision(sid, playbook, snapshot="base", output=lines.append, extra_vars={"x": "1"})
    assert result.ok and result.failed_task is None and result.snapshot
    assert "TASK [write a marker] " + "*" * 58 in lines
    assert [s.name for s in core.list_snapshots(sid)] == ["base"]       # the automatic one is gone
    argv = (tmp_path / "argv").read_text().split("\n")
    assert argv[argv.index("--limit") + 1] == "box-1"
    assert json.loads(argv[argv.index("--extra-vars") + 1]) == {"x": "1"}
    inv = json.loads((tmp_path / "inventory.json").read_text())
    assert list(inv["all"]["hosts"]) == ["box-1"]
    assert ("provision", "ok") in [(r["operation"], r["outcome"]) for r in core.store.read_audit("box-1")]


def test_provision_failure_rolls_back_and_names_the_task(core, tmp_path, playbook, monkeypatch):
    monkeypatch.setattr(provision_mod, "ansible_playbook_command", lambda: fake_ansible(tmp_path, BAD_OUTPUT, 2))
    sid = core.create_sandbox("box-2")
    rolled = []
    real_rollback = core.rollback
    monkeypatch.setattr(core, "rollback", lambda s, snap, *a, **k: rolled.append(snap) or real_rollback(s, snap, *a, **k))
    lines = []
    with pytest.raises(ProvisionError) as err:
        core.provision(sid, playbook, snapshot="base", output=lines.append)
    assert err.value.result.failed_task == "this task fails"
    assert "this task fails" in str(err.value) and "rolled back" in str(err.value)
    assert len(rolled) == 1 and rolled[0].startswith("sn-")
    assert core.list_snapshots(sid) == []                    # neither "base" nor the automatic one
    assert core.get(sid).state.value == "running"
    assert not any("\x1b" in line for line in lines)          # the guest's escapes never reach a terminal
    assert any("\\x1b[31mred" in line for line in lines)
    assert ("provision", "failed") in [(r["operation"], r["outcome"]) for r in core.store.read_audit("box-2")]


def test_provision_checks_before_running(core, tmp_path, playbook, monkeypatch):
    monkeypatch.setattr(provision_mod, "ansible_playbook_command", lambda: fake_ansible(tmp_path, OK_OUTPUT, 0))
    sid = core.create_sandbox("box-3")
    with pytest.raises(ConfigError, match="does not exist"):
        core.provision(sid, tmp_path / "missing.yml")
    core.create_snapshot(sid, "base")
    with pytest.raises(ConfigError, match="already has a snapshot named 'base'"):
        core.provision(sid, playbook, snapshot="base")
    assert not (tmp_path / "argv").exists()                 # ansible never ran
    assert [s.name for s in core.list_snapshots(sid)] == ["base"]


def test_printable():
    assert printable("ok \x1b]0;title\x07 \x9b") == "ok \\x1b]0;title\\x07 \\x9b"
    assert printable("tab\tstays") == "tab\tstays"


def test_provision_that_cannot_start_ansible_leaves_no_snapshot(core, tmp_path, playbook, monkeypatch):
    not_executable = tmp_path / "ansible-playbook"
    not_executable.write_text("")
    monkeypatch.setattr(provision_mod, "ansible_playbook_command", lambda: str(not_executable))
    sid = core.create_sandbox("box-4")
    with pytest.raises(ProviderError, match="cannot run"):
        core.provision(sid, playbook)
    assert core.list_snapshots(sid) == []
    assert core.get(sid).state.value == "running"
