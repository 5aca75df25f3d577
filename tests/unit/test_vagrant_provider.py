"""The Vagrant provider's pure parts, without Vagrant or a VM: what it makes of Vagrant's output,
the Vagrantfile and domain XML it generates, box export, and the request keys that choose it."""
import json
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmsandbox.boxes import Box, BoxStore
from vmsandbox.config import load_config
from vmsandbox.exceptions import ConfigError, ProviderError
from vmsandbox.layout import Layout
from vmsandbox.providers import MachineSpec
from vmsandbox.providers.vagrant import (NETWORK, VagrantProvider, _parse_ssh_config, current_netns,
                                         vagrant_box_dirname, vagrant_error_lines)

RUBY_CRASH = """/usr/lib/ruby/vendor_ruby/fog/libvirt/models/compute/server.rb:100:in `block in destroy': undefined method `destroy' for nil:NilClass (NoMethodError)

          volumes.each { |vol| vol.destroy } if options[:destroy_volumes]
                                  ^^^^^^^^
\tfrom /usr/lib/ruby/vendor_ruby/fog/libvirt/models/compute/server.rb:100:in `each'
\tfrom /usr/share/rubygems-integration/all/gems/vagrant-2.3.4/lib/vagrant/action/warden.rb:48:in `call'
"""


def test_error_lines_give_the_message_not_the_trace():
    assert vagrant_error_lines(RUBY_CRASH) == (
        "Vagrant failed inside Ruby: undefined method `destroy' for nil:NilClass (NoMethodError)")
    said = vagrant_error_lines("The box 'x' could not be found.\n\tfrom /usr/a.rb:1:in `b'\n")
    assert said == "The box 'x' could not be found."
    assert vagrant_error_lines("", "==> default: one\n==> default: two\n") == "==> default: one\n==> default: two"
    assert vagrant_error_lines("", "") == "no output"


def test_ssh_config_parsing_takes_the_first_host():
    text = ("Host default\n  HostName 192.168.121.7\n  User root\n  Port 22\n"
            '  IdentityFile "/v/boxes/tiny/0/libvirt/ssh_key"\n  IdentitiesOnly yes\nHost other\n  HostName x\n')
    conf = _parse_ssh_config(text)
    assert (conf["hostname"], conf["user"], conf["port"], conf["identityfile"]) == (
        "192.168.121.7", "root", "22", "/v/boxes/tiny/0/libvirt/ssh_key")


def test_box_dirname_and_netns():
    assert vagrant_box_dirname("ubuntu/jammy64") == "ubuntu-VAGRANTSLASH-jammy64"
    assert current_netns() is None              # unit tests run in the host's namespace


@pytest.fixture
def provider(tmp_path):
    cfg = load_config(config={"sandbox": {"state_directory": str(tmp_path / "state"), "accelerator": "tcg",
                                          "vagrant_libvirt_uri": "qemu:///system?socket=/x/sock"}})
    layout = Layout(tmp_path / "state", "vt-")
    layout.create()
    p = VagrantProvider(cfg, layout)
    p._accel = ("tcg", "test")
    return p


def _spec(tmp_path, kernel=True) -> MachineSpec:
    box = Box(name="tiny", path=tmp_path, image=tmp_path / "box.img", virtual_size=1 << 30, format="qcow2",
              kernel=tmp_path / "vmlinuz" if kernel else None, initrd=tmp_path / "initrd.img" if kernel else None,
              cmdline="console=ttyS0 root=/dev/vda rw" if kernel else None, ssh_user="root",
              ssh_key=tmp_path / "ssh_key", host_key=None, created_at=0, source="recipe:tiny")
    return MachineSpec(name="vt-a-123456", uuid="6c6c0d8e-0000-4000-8000-000000000001", sandbox_id="sb-000000123456",
                       hostname="a", vcpus=2, cpu_quota=None, memory_bytes=512 << 20, disk_bytes=2 << 30,
                       layer="/s/layers/L1.qcow2", box=box, ssh_port=20000, mac="52:54:00:01:02:03",
                       network_mode="none", console_log=tmp_path / "console-0.log", owner="/s")


def test_vagrantfile_carries_box_limits_accelerator_and_kernel(provider, tmp_path):
    vf = provider.vagrantfile(_spec(tmp_path), "tiny")
    for line in ('config.vm.box = "tiny"', 'libvirt.uri = "qemu:///system?socket=/x/sock"', 'libvirt.driver = "qemu"',
                 "libvirt.memory = 512", "libvirt.cpus = 2", f'libvirt.kernel = "{tmp_path}/vmlinuz"',
                 'libvirt.cmd_line = "console=ttyS0 root=/dev/vda rw hostname=a net=dhcp"',
                 "libvirt.management_network_autostart = false", "config.ssh.insert_key = false"):
        assert line in vf, line
    assert "libvirt.kernel" not in provider.vagrantfile(_spec(tmp_path, kernel=False), "vagrant:ubuntu/jammy64")


def test_domain_xml_has_the_management_nic_and_no_user_networking(provider, tmp_path):
    root = ET.fromstring(provider.machine_xml(_spec(tmp_path)))
    iface = root.find("devices/interface")
    assert iface.get("type") == "network" and iface.find("source").get("network") == NETWORK
    assert iface.find("mac").get("address") == "52:54:00:01:02:03"
    assert not [e for e in root.iter() if "commandline" in e.tag]      # no -netdev user
    assert root.find("devices/disk/alias").get("name") == "ua-box-volume-0"
    assert root.find("devices/disk/source").get("file") == "/s/layers/L1.qcow2"
    assert root.find("os/cmdline").text.endswith("hostname=a net=dhcp")
    assert "sb-000000123456/vagrant" in root.find("description").text


def test_saved_xml_loses_the_old_guests_tap(provider, tmp_path):
    spec = _spec(tmp_path)
    saved = provider.machine_xml(spec).replace(
        f"<source network=\"{NETWORK}\" />", f"<source network='{NETWORK}' portid='p' bridge='virbr0'/><target dev='vnet3'/>")
    assert "vnet3" in saved
    out = ET.fromstring(provider.adapt_saved_xml(saved, spec))
    iface = out.find("devices/interface")
    assert iface.find("target") is None and "portid" not in iface.find("source").attrib


def test_vagrant_refuses_outside_a_network_namespace(provider):
    with pytest.raises(ProviderError, match="only inside a named network namespace"):
        provider._require_vagrant()


def test_box_export_is_a_vagrant_box(tiny_store_box, tmp_path):
    store, name = tiny_store_box
    out = store.export(name, tmp_path / "x.box")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert {"box.img", "metadata.json", "Vagrantfile", "ssh_key", "vmsandbox.json"} <= names
        assert json.load(tar.extractfile("metadata.json"))["provider"] == "libvirt"
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
    with pytest.raises(ConfigError, match="does not exist"):
        store.export(name, tmp_path / "no" / "x.box")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "x.box"]      # no temp file left


@pytest.fixture
def tiny_store_box(tmp_path):
    d = tmp_path / "store" / "t" / "0" / "libvirt"
    d.mkdir(parents=True)
    (d / "box.img").write_bytes(b"qcow2 stand-in")
    (d / "metadata.json").write_text('{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}')
    (d / "Vagrantfile").write_text("Vagrant.configure('2') {}\n")
    (d / "ssh_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (d / "vmsandbox.json").write_text(json.dumps({"virtual_size": 1 << 30, "ssh_user": "root", "created_at": 0}))
    return BoxStore(tmp_path / "store"), "t"


def test_request_provider_key_and_spec_shorthands(tmp_path):
    from vmsandbox import SandboxCore
    from vmsandbox.testing import FakeBoxStore, FakeSessionPool
    core = SandboxCore(config={"sandbox": {"state_directory": str(tmp_path)}, "isolation_type": "vm",
                               "provider": "fake", "box": "tiny"},
                       boxes=FakeBoxStore(tmp_path / "fakeboxes"), sessions=FakeSessionPool(None), start_watchdog=False)
    try:
        assert core.config.sandbox.provider == "fake" and core.config.sandbox.default_box == "tiny"
        with pytest.raises(ConfigError, match="'nope' is not a provider"):
            core.parse_request({"provider": "nope"})
        with pytest.raises(ConfigError, match="'docker' is not a VM provider"):
            core.parse_request({"provider": "docker"})
        req = core.parse_request({"provider": "vagrant", "box": "ubuntu/jammy64"})
        assert (req.provider, req.box) == ("vagrant", "vagrant:ubuntu/jammy64")
        assert core.parse_request({"provider": "vagrant", "box": "tiny"}).box == "vagrant:tiny"
        assert core.parse_request({"box": "tiny"}).box == "tiny"         # the fake provider: the store's
    finally:
        core.close()


def test_vagrant_refuses_a_libvirtd_of_another_namespace(tmp_path):
    """The host's libvirtd (if one answers here) runs in this namespace; a socket nobody serves fails."""
    cfg = load_config(config={"sandbox": {"state_directory": str(tmp_path / "s"),
                                          "vagrant_libvirt_uri": f"qemu:///system?socket={tmp_path}/none"}})
    p = VagrantProvider(cfg, Layout(tmp_path / "s", "vt-"))
    with pytest.raises(ProviderError, match="cannot reach the libvirtd"):
        p._require_libvirtd_here()
    p.uri = "qemu+ssh://elsewhere/system"
    with pytest.raises(ProviderError, match="needs a local libvirtd"):
        p._require_libvirtd_here()
