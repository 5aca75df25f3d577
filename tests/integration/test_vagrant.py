"""The Vagrant provider on real Vagrant (vagrant-libvirt), real libvirt, real QEMU and real SSH:
create, exec, snapshots and rollback (with and without memory), a clone, destroy and nothing left
behind; Vagrant's own view of the project after rollbacks (status, ssh, destroy); a box exported
with ``vmsandbox box export`` and added with plain ``vagrant box add``; one clear error, and
nothing left behind, for a missing Vagrant, a failing ``vagrant up``, a box Vagrant rejects and a
box nobody has.

vagrant-libvirt needs a libvirt NAT network, which may only exist inside a network namespace
that the tests make, against a private libvirtd (DESIGN.md). So this module runs twice:
- outside (the normal run): ``test_vagrant_suite_in_private_namespace`` makes the namespace and
  the private libvirtd (``privnet``), runs this module again under ``ip netns exec NS unshare -m``,
  tears everything down and checks that the root namespace's links and routes did not change;
- inside (``$VMSANDBOX_TEST_NETNS`` set): the real tests, which refuse to start unless this
  process is in that namespace and the namespace has no default route.
Written over a ``provider`` fixture, like tests/integration/test_provider_contract.py; the inner
run also runs that contract suite, over ``vagrant`` (its PROVIDERS inside the namespace).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmsandbox import SandboxCore
from vmsandbox.exceptions import ConfigError, NotFoundError, ProviderError
from vmsandbox.providers.vagrant import current_netns

from .conftest import BOX_DIR, Env, assert_clean
from .privnet import ENV_NS, ENV_URI, PrivateLibvirt, root_network

INSIDE = bool(os.environ.get(ENV_NS))
inner = pytest.mark.skipif(not INSIDE, reason="runs inside the private namespace "
                                              "(test_vagrant_suite_in_private_namespace starts it)")
pytestmark = pytest.mark.timeout(900)

PROVIDERS = {"vagrant": {"provider": "vagrant"}}


# -- outside: the harness -----------------------------------------------------------------
@pytest.mark.skipif(INSIDE, reason="this is the inner run")
def test_vagrant_suite_in_private_namespace(tiny_box):
    assert shutil.which("vagrant"), "vagrant is not installed (bash scripts/setup.sh installs it)"
    before = root_network()
    p = PrivateLibvirt().start()
    try:
        argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o", "addopts=",
                "--rootdir", str(Path(__file__).parents[2]), __file__,
                str(Path(__file__).with_name("test_provider_contract.py"))]     # the contract, over vagrant
        r = subprocess.run(p.command_inside(argv), env={**os.environ, **p.env()}, capture_output=True, text=True,
                           timeout=900, cwd=Path(__file__).parents[2])
    finally:
        removed = p.stop()
    print(r.stdout[-20000:], r.stderr[-5000:])
    assert r.returncode == 0, f"the Vagrant tests failed inside {p.ns}:\n{r.stdout[-8000:]}\n{r.stderr[-3000:]}"
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-3000:]
    assert not [x for x in removed if x.startswith("domain")], f"domains left in the private libvirtd: {removed}"
    assert root_network() == before, "the root namespace's links or routes changed"


# -- inside: the real tests ---------------------------------------------------------------
def _require_namespace() -> str:
    """Refuse to run anything unless this process is in the namespace the harness made, and it
    has no default route."""
    ns = os.environ.get(ENV_NS)
    if not ns or current_netns() != ns:
        pytest.fail(f"refusing to start: not inside network namespace {ns!r} (in {current_netns()!r})")
    routes = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True).stdout
    if routes.strip():
        pytest.fail(f"refusing to start: namespace {ns} has a default route ({routes.strip()})")
    return ns


class VagrantEnv(Env):
    def config(self, **sections) -> dict:
        cfg = super().config(**sections)
        cfg["sandbox"]["vagrant_libvirt_uri"] = os.environ[ENV_URI]
        cfg["sandbox"]["libvirt_uri"] = os.environ[ENV_URI]     # nothing of these tests reaches the host's libvirtd
        return cfg


class Kit:
    def __init__(self, kind, env, core, create_cfg):
        self.kind, self.env, self.core, self.create_cfg = kind, env, core, create_cfg

    def create(self, name, **extra):
        return self.core.create_sandbox(name, {**self.create_cfg, **extra})

    def vagrant(self, sid, *args):
        """Plain ``vagrant ARGS`` in the sandbox's project, as a person would run it."""
        project = self.core.providers["vagrant"].project_dir(sid)
        env = {**os.environ, "VAGRANT_HOME": str(Path(self.env.state_dir) / "vagrant"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
        return subprocess.run(["vagrant", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=list(PROVIDERS))
def provider(request, tiny_box):
    _require_namespace()
    env = VagrantEnv()
    core = env.core()
    kit = Kit(request.param, env, core, PROVIDERS[request.param])
    yield kit
    left = env.teardown()
    assert left == {"domains": [], "layers": [], "memory": []}, f"leaked: {left}"


@inner
def test_create_exec_snapshot_rollback(provider):
    core = provider.core
    started = time.monotonic()
    sid = provider.create("legacy-1", box="tiny")
    info = core.get(sid)
    assert info.provider == "vagrant"
    print(f"create: {time.monotonic() - started:.1f} s")
    r = core.execute(sid, "uname -a; echo precious > /root/state.txt; sync")
    assert r.exit_code == 0 and "Linux legacy-1" in r.stdout, r

    ep = core.sessions.endpoint(info)                   # from `vagrant ssh-config`, the sandbox's own key pinned
    assert ep.host.startswith("192.168.121.") and ep.port == 22 and ep.user == "root"
    assert ep.host_key == core.get(sid).host_key != provider.core.boxes.get("tiny").host_key

    snap = core.create_snapshot(sid, "s")              # memory + disk
    disk_only = core.create_snapshot(sid, "d", memory=False)
    core.execute(sid, "echo damaged > /root/state.txt")
    started = time.monotonic()
    assert core.rollback(sid, snap)
    print(f"rollback (memory): {time.monotonic() - started:.1f} s")
    assert core.execute(sid, "cat /root/state.txt").stdout == "precious\n"
    new = core.get(sid)
    assert new.domain != info.domain and new.uuid != info.uuid

    # Vagrant follows the guest: its machine id is the new domain, and its commands act on it
    assert core.providers["vagrant"].machine_id(core.providers["vagrant"].project_dir(sid)) == new.uuid
    status = provider.vagrant(sid, "status", "--machine-readable")
    assert ",state,running" in status.stdout, status
    out = provider.vagrant(sid, "ssh", "-c", "cat /root/state.txt")
    assert out.returncode == 0 and out.stdout.strip() == "precious", out

    core.execute(sid, "echo damaged again > /root/state.txt")
    started = time.monotonic()
    assert core.rollback(sid, disk_only)               # boots the disk
    print(f"rollback (disk only, boots): {time.monotonic() - started:.1f} s")
    assert core.execute(sid, "cat /root/state.txt").stdout == "precious\n"
    assert ",state,running" in provider.vagrant(sid, "status", "--machine-readable").stdout
    health = core.get_health_status(sid)                # host-side metrics of the domain Vagrant runs
    assert health.metrics.state == "running" and health.metrics.memory_total, health
    assert_clean(provider.env, core)


@inner
def test_clone_is_independent(provider):
    core = provider.core
    sid = core.get("legacy-1").id
    snap = core.list_snapshots(sid)[0].id
    clone = provider.create("legacy-clone", clone_from=snap)
    assert core.get(clone).provider == "vagrant"
    assert core.execute(clone, "cat /root/state.txt").stdout == "precious\n"
    core.execute(clone, "echo clone > /root/state.txt")
    assert core.execute(sid, "cat /root/state.txt").stdout == "precious\n"
    ep_a, ep_b = core.sessions.endpoint(core.get(sid)), core.sessions.endpoint(core.get(clone))
    assert ep_a.host != ep_b.host                       # its own MAC, its own lease
    assert ",state,running" in provider.vagrant(clone, "status", "--machine-readable").stdout
    core.destroy(clone)
    assert_clean(provider.env, core)


@inner
def test_vagrant_destroy_in_the_project_then_destroy(provider):
    """A person may run `vagrant destroy` in the project: the sandbox then says its machine is gone,
    and `destroy` removes the rest."""
    core = provider.core
    sid = core.get("legacy-1").id
    r = provider.vagrant(sid, "destroy", "-f")
    assert r.returncode == 0, r
    assert provider.vagrant(sid, "status", "--machine-readable").stdout.count(",state,not_created") == 1
    assert core.get(sid).state.value == "broken"
    core.destroy(sid)
    assert core.list_sandboxes() == []
    assert_clean(provider.env, core)


@inner
def test_exported_box_added_by_plain_vagrant_is_used(provider, tmp_path):
    """`vmsandbox box export` writes a .box that plain `vagrant box add` accepts; a box Vagrant
    already has (here in the user's Vagrant home) is used by name, as in the specification."""
    out = tmp_path / "tiny.box"
    conf = tmp_path / "config.yaml"
    conf.write_text(json.dumps(provider.env.config()))          # JSON is YAML
    res = subprocess.run([sys.executable, "-m", "vmsandbox.cli", "--config", str(conf), "box", "export", "tiny",
                          "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and out.is_file(), res
    user_home = Path(provider.env.state_dir) / "user-vagrant-home"
    add = subprocess.run(["vagrant", "box", "add", "--name", "vmsandbox/tiny-exported", str(out)],
                         env={**os.environ, "VAGRANT_HOME": str(user_home), "VAGRANT_CHECKPOINT_DISABLE": "1"},
                         capture_output=True, text=True, timeout=300)
    assert add.returncode == 0, add

    # the repository's top-level Vagrantfile, with plain `vagrant up`, on that box
    plain = Path(provider.env.state_dir) / "plain"
    plain.mkdir()
    shutil.copy(Path(__file__).parents[2] / "Vagrantfile", plain / "Vagrantfile")
    venv = {**os.environ, "VAGRANT_HOME": str(user_home), "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_CWD": str(plain), "VMSANDBOX_BOX": "vmsandbox/tiny-exported"}
    try:
        up = subprocess.run(["vagrant", "up"], env=venv, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up
        ssh = subprocess.run(["vagrant", "ssh", "-c", "cat /proc/version"], env=venv, capture_output=True, text=True,
                             timeout=120)
        assert ssh.returncode == 0 and "Linux version" in ssh.stdout, ssh
    finally:
        gone = subprocess.run(["vagrant", "destroy", "-f"], env=venv, capture_output=True, text=True, timeout=300)
    assert gone.returncode == 0, gone

    os.environ["VAGRANT_HOME"] = str(user_home)         # this process's user's Vagrant
    try:
        cfg = provider.env.config()
        core = SandboxCore(config={**cfg, "isolation_type": "vm", "provider": "vagrant",
                                   "box": "vmsandbox/tiny-exported"})
        provider.env.cores.append(core)
        sid = core.create_sandbox("from-vagrant-box")
        info = core.get(sid)
        assert info.box == "vagrant:vmsandbox/tiny-exported" and info.provider == "vagrant"
        assert core.execute(sid, "uname -r").exit_code == 0
        core.destroy(sid)
    finally:
        del os.environ["VAGRANT_HOME"]


@inner
def test_box_nobody_has_is_one_clear_error(provider):
    cfg = provider.env.config()
    core = SandboxCore(config={**cfg, "isolation_type": "vm", "provider": "vagrant", "box": "ubuntu/jammy64"})
    provider.env.cores.append(core)
    with pytest.raises(NotFoundError, match=r"vagrant box add --name ubuntu/jammy64"):
        core.create_sandbox("jammy")
    assert "jammy" not in [i.name for i in core.list_sandboxes()]


@inner
def test_failing_vagrant_up_is_one_clear_error_and_leaves_nothing(provider):
    """A box whose kernel is gone: libvirt refuses to start the guest inside `vagrant up`, which
    dies with a Ruby backtrace; the error is Vagrant's one message line."""
    boxes = Path(provider.env.state_dir) / "boxes-nokernel"
    shutil.copytree(Path(BOX_DIR) / "tiny", boxes / "nokernel")
    (boxes / "nokernel" / "0" / "libvirt" / "vmlinuz").unlink()
    core = provider.env.core(sandbox={"box_directory": str(boxes)})
    with pytest.raises(ProviderError) as err:
        core.create_sandbox("no-kernel", {**PROVIDERS[provider.kind], "box": "nokernel"})
    msg = str(err.value)
    assert "`vagrant up` failed" in msg and "vmlinuz: No such file or directory" in msg, msg
    assert ".rb:" not in msg and "from /" not in msg, msg          # Vagrant's words, not a Ruby trace
    assert "no-kernel" not in [i.name for i in core.list_sandboxes()]
    assert_clean(provider.env, core)


@inner
def test_box_vagrant_rejects_is_one_clear_error(provider, tmp_path):
    boxes = tmp_path / "boxes"
    shutil.copytree(Path(BOX_DIR) / "tiny", boxes / "broken")
    (boxes / "broken" / "0" / "libvirt" / "metadata.json").write_text("{not json")
    core = provider.env.core(sandbox={"box_directory": str(boxes)})
    with pytest.raises(ConfigError, match=r"Vagrant rejected box 'broken'"):
        core.create_sandbox("broken-box", {**PROVIDERS[provider.kind], "box": "broken"})
    assert "broken-box" not in [i.name for i in core.list_sandboxes()]
    assert_clean(provider.env, core)


@inner
def test_missing_vagrant_is_one_clear_error(provider, monkeypatch, tmp_path):
    conf = tmp_path / "config.yaml"
    conf.write_text(json.dumps(provider.env.config()))
    cli = subprocess.run([sys.executable, "-m", "vmsandbox.cli", "--config", str(conf), "create", "no-vagrant-cli",
                          "--provider", "vagrant", "--box", "tiny"], env={**os.environ, "PATH": "/nonexistent"},
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and cli.stderr.strip().count("\n") == 0, cli          # one line, no traceback
    assert "Vagrant is not installed" in cli.stderr, cli
    monkeypatch.setenv("PATH", "/nonexistent")
    core = provider.env.core()
    with pytest.raises(ProviderError, match=r"Vagrant is not installed \(apt-get install"):
        core.create_sandbox("no-vagrant", PROVIDERS[provider.kind])
    monkeypatch.undo()
    assert "no-vagrant" not in [i.name for i in core.list_sandboxes()]
    assert_clean(provider.env, core)
