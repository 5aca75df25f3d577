"""The real box recipes: build the tiny box and the bootable .box, then boot them under raw QEMU (TCG).

No libvirt here: each guest runs as a plain ``qemu-system-x86_64`` on a throwaway qcow2 overlay with
user-mode networking (``restrict=on``, SSH forwarded on 127.0.0.1), and is reached with paramiko,
pinning the host key. QEMU is killed and the overlay deleted afterwards, whatever happens.
"""
from __future__ import annotations

import base64
import json
import shutil
import socket
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paramiko
import pytest
from click.testing import CliRunner

from vmsandbox.boxes import Box, BoxStore, recipe_dir
from vmsandbox.cli import cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BOOT_TIMEOUT = 120
BUILD_LIMIT = 30.0
GUEST_TOOLS = ("sh", "df", "mkdir", "cat", "kill", "setsid", "timeout", "date", "sync", "poweroff",
               "uname", "ls", "rm", "cp", "mv", "tar", "grep", "sed", "awk")

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BoxStore, Box, float]]:
    workdir = tmp_path_factory.mktemp("boxes")
    store = BoxStore(workdir / "store")
    started = time.monotonic()
    box = store.build("tiny")
    yield store, box, time.monotonic() - started
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied afterwards: box images are large."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_tiny_box_builds_fast_with_the_expected_files(built: tuple[BoxStore, Box, float]) -> None:
    store, box, seconds = built
    print(f"tiny box build: {seconds:.1f} s")
    assert seconds < BUILD_LIMIT
    assert box.source == "recipe:tiny" and box.ssh_user == "root"
    assert box.cmdline == "console=ttyS0 root=/dev/vda rw quiet panic=-1"
    assert box.virtual_size == 1 << 30
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(box.image)],
                                     capture_output=True, check=True, text=True).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert info["actual-size"] < 32 << 20
    assert box.kernel is not None and box.kernel.stat().st_size > 1 << 20
    assert box.initrd is not None and box.initrd.stat().st_size < 4 << 20
    metadata = json.loads((box.path / "metadata.json").read_text())
    assert metadata == {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    assert "libvirt.kernel" in (box.path / "Vagrantfile").read_text()
    assert box.host_key is not None and box.host_key.startswith("ssh-ed25519 AAAA")
    assert len(box.host_key.split()) == 2
    assert stat.S_IMODE(box.ssh_key.stat().st_mode) == 0o600
    paramiko.Ed25519Key.from_private_key_file(str(box.ssh_key))
    for path in (box.image, box.kernel, box.initrd):     # libvirt hands them to QEMU's user while in use
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [b.name for b in store.list()] == ["tiny"]
    assert [p.name for p in store.root.iterdir()] == ["tiny"]


def test_every_build_has_its_own_keys(built: tuple[BoxStore, Box, float]) -> None:
    store, box, _ = built
    other = store.build("tiny", name="tiny2")
    try:
        assert other.host_key != box.host_key
        assert other.ssh_key.read_bytes() != box.ssh_key.read_bytes()
    finally:
        store.remove("tiny2")


# -- booting under raw QEMU ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    def __init__(self, proc: subprocess.Popen, port: int, console: Path, qmp: Path) -> None:
        self.proc, self.port, self.console, self.qmp = proc, port, console, qmp

    def console_tail(self) -> str:
        return self.console.read_text(errors="replace")[-3000:] if self.console.exists() else ""

    def powerdown(self) -> None:
        """ACPI power button through QMP, as libvirt's shutdown does."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.qmp))
            reader = sock.makefile("r")
            reader.readline()                                   # greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while "return" not in json.loads(reader.readline()):
                    pass


@contextmanager
def raw_qemu(image: Path, workdir: Path, box: Box | None = None) -> Iterator[Guest]:
    """Boot ``image`` (through a new overlay) with QEMU; ``box`` supplies kernel/initrd/cmdline."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay, console, qmp = workdir / "overlay.qcow2", workdir / "console.log", workdir / "qmp.sock"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
                   check=True)
    port = _free_port()
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "256", "-no-reboot",
           "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
           "-qmp", f"unix:{qmp},server=on,wait=off",
           "-drive", f"file={overlay},if=virtio",
           "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
           "-device", "virtio-net-pci,netdev=n0,romfile=",
           "-device", "virtio-balloon-pci", "-device", "virtio-rng-pci"]
    if box is not None and box.kernel is not None:
        cmd += ["-kernel", str(box.kernel), "-initrd", str(box.initrd), "-append", box.cmdline]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield Guest(proc, port, console, qmp)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
        for path in (overlay, console, qmp):
            path.unlink(missing_ok=True)


def _pinned_client(port: int, host_key: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    key_type, key_b64 = host_key.split()[:2]
    assert key_type == "ssh-ed25519"
    client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type, paramiko.Ed25519Key(data=base64.b64decode(key_b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _wait_for_ssh(guest: Guest, user: str, key: Path, host_key: str) -> tuple[paramiko.SSHClient, float]:
    """Connect as soon as the guest's SSH answers; returns the client and seconds since QEMU started."""
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    started = time.monotonic()
    while True:
        if guest.proc.poll() is not None:
            pytest.fail(f"QEMU exited ({guest.proc.returncode}): {guest.proc.stderr.read().decode()[-2000:]}\n"
                        f"console:\n{guest.console_tail()}")
        client = _pinned_client(guest.port, host_key)
        try:
            client.connect("127.0.0.1", guest.port, username=user, pkey=pkey, timeout=3, banner_timeout=1,
                           auth_timeout=10, look_for_keys=False, allow_agent=False)
            return client, time.monotonic() - started
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            if isinstance(exc, paramiko.BadHostKeyException):
                raise
            if time.monotonic() - started > BOOT_TIMEOUT:
                pytest.fail(f"no SSH after {BOOT_TIMEOUT} s ({exc}); console:\n{guest.console_tail()}")
            time.sleep(0.3)


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


@needs_qemu
def test_tiny_box_boots_answers_ssh_and_powers_off(built: tuple[BoxStore, Box, float], scratch: Path) -> None:
    _, box, _ = built
    assert box.host_key is not None
    with raw_qemu(box.image, scratch / "vm", box) as guest:
        client, boot_seconds = _wait_for_ssh(guest, box.ssh_user, box.ssh_key, box.host_key)
        print(f"tiny box: boot to SSH {boot_seconds:.1f} s")
        with client:
            code, out, err = _run(client, "uname -a; df /; cat /proc/net/dev")
            assert code == 0, err
            kernel_version = json.loads((box.path / "vmsandbox.json").read_text())["kernel_version"]
            assert f"Linux vmsandbox {kernel_version}" in out
            assert "/dev/vda" in out and "eth0:" in out
            code, out, _ = _run(client, "lsmod; ls /dev/input; pidof acpid; ip -4 addr show eth0; ip route")
            for needed in ("virtio_balloon", "virtio_rng", "virtio_net", "button", "evdev", "event0",
                           "10.0.2.15/24", "default via 10.0.2.2"):
                assert needed in out
            code, out, err = _run(client, " && ".join(f"command -v {tool} >/dev/null" for tool in GUEST_TOOLS)
                                  + " && mkdir -p /tmp/x && date +%Y && sync && echo tools-ok")
            assert code == 0 and "tools-ok" in out, err
            code, out, _ = _run(client, "mount; stat -c %a /root/.ssh/authorized_keys")
            for mount in ("/dev/pts type devpts", "/tmp type tmpfs", "/run type tmpfs", "/proc type proc"):
                assert mount in out
            assert out.strip().endswith("600")
            code, _, _ = _run(client, "exit 7")
            assert code == 7
        # A wrong pinned host key is refused.
        wrong = "ssh-ed25519 " + base64.b64encode(paramiko.Ed25519Key.from_private_key_file(
            str(box.ssh_key)).asbytes()).decode()
        with pytest.raises(paramiko.BadHostKeyException):
            _pinned_client(guest.port, wrong).connect(
                "127.0.0.1", guest.port, username="root", key_filename=str(box.ssh_key), timeout=10,
                banner_timeout=10, look_for_keys=False, allow_agent=False)
        # ACPI power button (libvirt shutdown) makes acpid power the guest off cleanly.
        guest.powerdown()
        assert guest.proc.wait(timeout=60) == 0
        assert "Power down" in guest.console_tail() or "going down" in guest.console_tail()


@needs_qemu
def test_bootable_box_imports_through_the_cli_and_boots_from_its_own_disk(scratch: Path) -> None:
    out = scratch / "recipe-out"
    subprocess.run(["sh", str(recipe_dir() / "bootable" / "build.sh"), str(out)], check=True,
                   capture_output=True, timeout=120)
    recipe = json.loads((out / "recipe.json").read_text())
    box_file = out / recipe["vagrant_box"]
    result = CliRunner().invoke(cli, ["--state-dir", str(scratch / "state"), "box", "import", str(box_file),
                                      "--name", "bootable-test", "--ssh-user", "root",
                                      "--ssh-key", str(out / "ssh_key"), "--json"])
    assert result.exit_code == 0, result.output
    imported = json.loads(result.output)
    assert imported["kernel"] is None and imported["host_key"] is None
    box = BoxStore(scratch / "state" / "boxes").get("bootable-test")
    assert box.source == f"import:{box_file}"
    host_key = (out / "ssh_host_key.pub").read_text().strip()
    with raw_qemu(box.image, scratch / "vm") as guest:
        client, boot_seconds = _wait_for_ssh(guest, box.ssh_user, box.ssh_key, host_key)
        print(f"bootable box: boot to SSH {boot_seconds:.1f} s")
        with client:
            code, out_text, err = _run(client, "uname -a; df /; cat /proc/net/dev; cat /proc/cmdline")
            assert code == 0, err
            assert "/dev/vda2" in out_text and "eth0:" in out_text
            assert "root=/dev/vda2" in out_text
        assert "SYSLINUX" in guest.console.read_text(errors="replace")
    assert not list((scratch / "vm").iterdir())
