"""Client settings and ``vmsandbox ssh-proxy`` with the system OpenSSH client against real dropbear
servers on 127.0.0.1 (a sandbox's guest is replaced by a new server on a new port, as a rollback does).
The VM end of the same path is tested in tests/integration/test_clients.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmsandbox.boxes import BoxStore
from vmsandbox.client_config import ClientSettings, client_settings
from vmsandbox.exceptions import StateError
from vmsandbox.models import SandboxState
from vmsandbox.store import Store, default_db_path

from .test_ssh import REQUIRED, DropbearServer

needs_dropbear = pytest.mark.skipif(
    any(shutil.which(t) is None for t in (*REQUIRED, "ssh", "scp")), reason="needs dropbear and openssh-client")


def _box(root: Path, server: DropbearServer, host_key: str | None) -> None:
    d = root / "tiny" / "0" / "libvirt"
    d.mkdir(parents=True)
    shutil.copy(server.user_key, d / "ssh_key")
    (d / "vmsandbox.json").write_text(json.dumps({"virtual_size": 1, "ssh_user": "root", "host_key": host_key,
                                                  "created_at": 0}))


@pytest.fixture
def world(tmp_path):
    """A state dir with one RUNNING sandbox 'web' whose guest is a dropbear on 127.0.0.1."""
    srv = DropbearServer(tmp_path / "srv1")
    srv.start()
    state = tmp_path / "state dir"           # a blank in the path: quoting is exercised
    store = Store(default_db_path(state))
    _box(state / "boxes", srv, srv.host_key)
    info = store.reserve_sandbox(id="sb-0123456789ab", name="web", box="tiny", domain="d", cpu="1", memory="256M",
                                 disk="1G", network_mode="none", persistent=False, port_range=(20000, 20100))
    store.update_sandbox(info.id, state=SandboxState.RUNNING, ssh_port=srv.port)
    core = SimpleNamespace(store=store, boxes=BoxStore(state / "boxes"), state_dir=state)
    yield SimpleNamespace(core=core, store=store, info=info, server=srv, tmp=tmp_path)
    srv.stop()
    store.close()


def _ssh(cfg: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_config_block_answers_to_both_names_and_never_names_a_port(tmp_path):
    s = ClientSettings(name="web", user="root", identity_file=Path("/k/id 1"), known_hosts=Path("/s/50%/kh"),
                       host_key_alias="vmsandbox-sb-1", proxy_command=("/usr/bin/vmsandbox", "--state-dir",
                                                                      "/a b", "ssh-proxy", "web"))
    block = s.config_block()
    assert block.splitlines()[0] == "Host web vmsandbox-web"
    assert "Port" not in block
    assert '    IdentityFile "/k/id 1"' in block
    assert "    UserKnownHostsFile /s/50%%/kh" in block
    assert "    ProxyCommand /usr/bin/vmsandbox --state-dir '/a b' ssh-proxy web" in block
    assert s.ssh_args()[-1] == "ProxyCommand=/usr/bin/vmsandbox --state-dir '/a b' ssh-proxy web"
    av = s.ansible_vars()
    assert av["ansible_user"] == "root" and av["ansible_ssh_private_key_file"] == "/k/id 1"
    assert "HostKeyAlias=vmsandbox-sb-1" in av["ansible_ssh_common_args"]


def test_no_host_key_yet_is_one_clear_error(world):
    shutil.rmtree(world.core.state_dir / "boxes")
    _box(world.core.state_dir / "boxes", world.server, None)
    with pytest.raises(StateError, match="no host key known yet for 'web'"):
        client_settings(world.core, "web")


@needs_dropbear
def test_saved_config_survives_a_new_guest_on_a_new_port(world):
    settings = client_settings(world.core, "web")
    assert settings.proxy_command[-2:] == ("ssh-proxy", "web")
    assert Path(settings.proxy_command[0]).is_absolute()
    cfg = world.tmp / "ssh config"
    cfg.write_text(settings.config_block())
    first = _ssh(cfg, "web", "echo", "one")
    assert first.returncode == 0 and first.stdout == "one\n", first.stderr
    assert _ssh(cfg, "vmsandbox-web", "true").returncode == 0

    # "Rollback": the record now points at a new guest on another port, coming up a little later.
    world.store.update_sandbox(world.info.id, state=SandboxState.ROLLING_BACK)
    srv2 = DropbearServer(world.tmp / "srv2")
    srv2.host_key_file.unlink()
    shutil.copy(world.server.host_key_file, srv2.host_key_file)     # same pinned key, like a rollback
    shutil.copy(world.server.home / ".ssh" / "authorized_keys", srv2.home / ".ssh" / "authorized_keys")
    world.server.stop()

    def come_up():
        time.sleep(1.5)
        srv2.start()
        world.store.update_sandbox(world.info.id, state=SandboxState.RUNNING, ssh_port=srv2.port)
    t = threading.Thread(target=come_up)
    t.start()
    try:
        again = _ssh(cfg, "web", "echo", "two")          # waits for the rollback, then follows the port
        t.join()
        assert again.returncode == 0 and again.stdout == "two\n", again.stderr
        src = world.tmp / "payload"
        src.write_bytes(b"x" * 300_000)
        scp = subprocess.run(["scp", "-O", "-F", str(cfg), "-o", "BatchMode=yes", str(src), "web:/tmp/payload"],
                             capture_output=True, text=True, timeout=30)
        assert scp.returncode == 0, scp.stderr
        assert _ssh(cfg, "web", "wc -c < /tmp/payload").stdout.strip() == "300000"

        # A guest presenting another key is refused: the pin holds through the proxy.
        srv2.stop()
        srv3 = DropbearServer(world.tmp / "srv3")
        shutil.copy(world.server.home / ".ssh" / "authorized_keys", srv3.home / ".ssh" / "authorized_keys")
        srv3.start()
        world.store.update_sandbox(world.info.id, ssh_port=srv3.port)
        try:
            refused = _ssh(cfg, "web", "echo", "nope")
            assert refused.returncode != 0 and refused.stdout == ""
            assert "host key" in refused.stderr.lower()
        finally:
            srv3.stop()
    finally:
        t.join()
        srv2.stop()
    rows = world.store.read_audit("web")
    assert sum(r["operation"] == "ssh-proxy" for r in rows) >= 3


@needs_dropbear
def test_proxy_names_a_stopped_sandbox(world):
    cfg = world.tmp / "cfg"
    cfg.write_text(client_settings(world.core, "web").config_block())
    world.store.update_sandbox(world.info.id, state=SandboxState.STOPPED)
    done = _ssh(cfg, "web", "true")
    assert done.returncode != 0
    assert "sandbox 'web' is stopped; `vmsandbox start web`" in done.stderr


def test_proxy_for_unknown_sandbox_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vmsandbox", "--state-dir", str(tmp_path), "ssh-proxy", "nope"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and done.stderr.count("\n") == 1 and "no sandbox 'nope'" in done.stderr
