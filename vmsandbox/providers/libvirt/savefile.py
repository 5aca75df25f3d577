"""libvirt's QEMU save image (``virDomainSave`` / external memory snapshot files): read and
rewrite the domain XML in its header, so that a saved guest can be restored under a new name,
uuid, disk, port and MAC while the original still runs.

libvirt refuses ``restoreFlags(dxml=...)`` when dxml changes the name or uuid (ABI check), so we
rewrite the XML stored in the file itself. The header is 92 bytes (magic, version, data_len,
was_running, compressed, cookieOffset, 14 unused words) followed by ``data_len`` bytes holding the
XML, a NUL, the migration cookie, a NUL and zero padding; QEMU's stream starts after them. libvirt
pads ``data_len`` generously, so a new XML fits in place and the stream is never moved or copied.
"""
from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

from ...exceptions import ProviderError, StateCorruptionError
from ..base import MachineSpec
from .domain_xml import QEMU_NS, netdev_arg, NIC_PCI_SLOT

MAGIC = b"LibvirtQemudSave"
HEADER = struct.Struct("<16s5I14I")

ET.register_namespace("qemu", QEMU_NS)


def read_xml(path: Path) -> str:
    """The domain XML stored in a save image."""
    with open(path, "rb") as f:
        magic, _ver, data_len, _run, _comp, _cookie, *_ = HEADER.unpack(f.read(HEADER.size))
        if magic != MAGIC:
            raise StateCorruptionError(f"{path} is not a complete libvirt save image (magic {magic!r})")
        return f.read(data_len).split(b"\0", 1)[0].decode()


def write_xml(path: Path, xml: str) -> None:
    """Replace the domain XML in a save image, in place."""
    with open(path, "r+b") as f:
        fields = list(HEADER.unpack(f.read(HEADER.size)))
        magic, _ver, data_len, _run, _comp, cookie_off = fields[:6]
        if magic != MAGIC:
            raise StateCorruptionError(f"{path} is not a complete libvirt save image (magic {magic!r})")
        data = f.read(data_len)
        cookie = data[cookie_off:].split(b"\0", 1)[0] if cookie_off else b""
        body = xml.encode()
        new = body + b"\0" + (cookie + b"\0" if cookie_off else b"")
        if len(new) > data_len:
            raise ProviderError(f"new domain XML ({len(new)} bytes) does not fit the save image header ({data_len})")
        fields[5] = len(body) + 1 if cookie_off else 0
        f.seek(0)
        f.write(HEADER.pack(*fields))
        f.write(new + bytes(data_len - len(new)))


def adapt_xml(saved_xml: str, spec: MachineSpec) -> str:
    """The saved guest's XML with the identity and files of ``spec`` (devices otherwise unchanged)."""
    root = ET.fromstring(saved_xml)
    root.find("name").text = spec.name
    root.find("uuid").text = spec.uuid
    disk = next((d for d in root.iter("disk") if d.find("target") is not None
                 and d.find("target").get("dev") == "vda"), None)
    if disk is None:
        raise ProviderError("saved guest has no vda disk")
    disk.find("source").set("file", spec.layer)
    for bs in disk.findall("backingStore"):       # libvirt re-reads the chain from the new overlay
        disk.remove(bs)
    for log in root.iter("log"):
        log.set("file", str(spec.console_log))
    args = root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    for i, a in enumerate(args):
        v = a.get("value", "")
        if v.startswith("user,id=n0"):
            a.set("value", netdev_arg(spec))
        elif v.startswith("virtio-net-pci,netdev=n0"):
            a.set("value", f"virtio-net-pci,netdev=n0,romfile=,mac={spec.mac},bus=pci.0,addr={NIC_PCI_SLOT}")
    return ET.tostring(root, encoding="unicode")


def is_complete(path: Path) -> bool:
    """Whether a save image was written through (its header's magic is set last by libvirt)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
