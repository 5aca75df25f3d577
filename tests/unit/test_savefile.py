"""The libvirt save-image header rewrite, on a synthetic image of the real layout."""
from pathlib import Path

import pytest

from vmsandbox.exceptions import ProviderError, StateCorruptionError
from vmsandbox.testing import machine_spec
from vmsandbox.providers.libvirt.savefile import HEADER, MAGIC, adapt_xml, read_xml, write_xml
from vmsandbox.providers.libvirt.domain_xml import domain_xml

STREAM = b"QEVM" + bytes(range(256)) * 64


def spec(**kw):
    base = dict(name="vmsbx-a-000001", uuid="11111111-2222-3333-4444-555555555555", cpu_quota=None,
                memory_bytes=256 << 20, disk_path=Path("/s/layers/Lold.qcow2"), ssh_port=20001,
                mac="52:54:00:00:00:01", network_mode="none", console_log=Path("/s/sb/console-0.log"),
                owner="/s", kernel=Path("/b/vmlinuz"), initrd=Path("/b/initrd.img"), cmdline="console=ttyS0")
    base.update(kw)
    return machine_spec(**base)


def make_image(path: Path, xml: str, cookie: bytes = b"<qemu-migration/>", pad: int = 4096) -> None:
    body = xml.encode() + b"\0" + cookie + b"\0"
    data_len = len(body) + pad
    header = HEADER.pack(MAGIC, 2, data_len, 1, 0, len(xml) + 1, *([0] * 14))
    path.write_bytes(header + body + bytes(pad) + STREAM)


def test_rewrite_keeps_cookie_and_stream(tmp_path):
    img = tmp_path / "m.save"
    make_image(img, domain_xml(spec()))
    new = adapt_xml(read_xml(img), spec(name="vmsbx-a-000001-g1", uuid="99999999-2222-3333-4444-555555555555",
                                         disk_path=Path("/s/layers/Lnew-with-a-longer-name.qcow2"), ssh_port=29999,
                                         mac="52:54:00:00:00:02", console_log=Path("/s/sb/console-1.log")))
    write_xml(img, new)
    xml = read_xml(img)
    assert "<name>vmsbx-a-000001-g1</name>" in xml and "99999999-2222" in xml
    assert "Lnew-with-a-longer-name.qcow2" in xml and "console-1.log" in xml
    assert "hostfwd=tcp:127.0.0.1:29999-:22" in xml and "mac=52:54:00:00:00:02" in xml
    raw = img.read_bytes()
    fields = HEADER.unpack(raw[:HEADER.size])
    data_len, cookie_off = fields[2], fields[5]
    data = raw[HEADER.size:HEADER.size + data_len]
    assert data[cookie_off:].split(b"\0")[0] == b"<qemu-migration/>"
    assert raw[HEADER.size + data_len:] == STREAM              # the migration stream never moved


def test_too_long_xml_and_bad_magic(tmp_path):
    img = tmp_path / "m.save"
    make_image(img, domain_xml(spec()), pad=0)
    with pytest.raises(ProviderError, match="does not fit"):
        write_xml(img, domain_xml(spec()) + "<!--" + "x" * 100 + "-->")
    img.write_bytes(b"LibvirtQemudPart" + bytes(200))
    with pytest.raises(StateCorruptionError, match="not a complete libvirt save image"):
        read_xml(img)
