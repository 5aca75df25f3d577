import xml.etree.ElementTree as ET
from pathlib import Path

from vmsandbox.testing import machine_spec
from vmsandbox.providers.libvirt.domain_xml import QEMU_NS, domain_xml


def spec(**kw):
    base = dict(name="vmsbx-a-123456", uuid="6f1c1c2e-8f0b-4c4c-9a51-1b2c3d4e5f60", cpu_quota=None,
                memory_bytes=256 << 20, disk_path=Path("/s/disk-0.qcow2"), ssh_port=20022, mac="52:54:00:01:02:03",
                network_mode="none", console_log=Path("/s/console.log"), kernel=Path("/b/vmlinuz"),
                initrd=Path("/b/initrd.img"), cmdline="console=ttyS0 root=/dev/vda rw")
    base.update(kw)
    return machine_spec(**base)


def args(root):
    return [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]


def test_tcg_domain_with_restricted_user_net():
    root = ET.fromstring(domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("os/kernel") == "/b/vmlinuz"
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/vda rw hostname=a"
    assert root.find("devices/disk/source").get("file") == "/s/disk-0.qcow2"
    assert root.find("devices/serial/log").get("file") == "/s/console.log"
    a = args(root)
    assert a[1] == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:20022-:22"
    assert "bus=pci.0,addr=0x10" in a[3] and "mac=52:54:00:01:02:03" in a[3]
    assert root.find("cputune") is None


def test_nat_drops_restrict_and_fraction_sets_quota():
    root = ET.fromstring(domain_xml(spec(network_mode="nat", cpu_quota=0.5), "kvm"))
    assert root.get("type") == "kvm"
    assert "restrict" not in args(root)[1]
    assert root.findtext("cputune/quota") == "50000"


def test_disk_boot_without_kernel_and_escaping():
    root = ET.fromstring(domain_xml(spec(kernel=None, initrd=None, cmdline=None,
                                         disk_path=Path("/odd dir/<x>&.qcow2"))))
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("devices/disk/source").get("file") == "/odd dir/<x>&.qcow2"
