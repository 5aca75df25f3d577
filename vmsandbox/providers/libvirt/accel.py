"""Accelerator choice: a bounded probe that shows whether KVM really runs guest code.

``/dev/kvm`` existing proves nothing: on some hosts ``qemu -accel kvm`` hangs in the kernel, and
on others (nested KVM without the CPU features Linux wants) a boot sector runs but a Linux
kernel hangs before its first console line. So the probe has two stages, each killed after
``timeout`` seconds and never waited on without bound (a hung KVM process may be unkillable):
a 512-byte boot sector that writes to QEMU's ``isa-debug-exit`` port (only a guest that really
executed exits with status 3), then, when a Linux kernel is at hand, that kernel booted with no
root file system until it panics and QEMU exits (``panic=-1`` with ``-no-reboot``). The verdict belongs to the
machine and its boot, so it is cached per kernel and QEMU binary in ``/run/vmsandbox/accel.json``
(emptied at reboot), or in the state directory where /run is not writable.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"
# mov al,1 ; out 0xf4,al ; hlt ; jmp $-3   + boot signature
_BOOT_SECTOR = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
_BOOT_SECTOR += bytes(510 - len(_BOOT_SECTOR)) + b"\x55\xaa"
_EXPECTED_EXIT = (1 << 1) | 1


#: bump when the probe changes, so verdicts cached by an older probe are not trusted
PROBE_VERSION = 2


def find_kernel() -> Path | None:
    """A Linux kernel for the second stage: the host's cloud kernel (the tiny box's own)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    cloud = [k for k in kernels if "cloud" in k.name]
    for k in cloud + kernels:
        if os.access(k, os.R_OK):
            return k
    return None


def _run_bounded(cmd: list[str], timeout: float) -> tuple[int | None, bytes, bytes, float]:
    """(exit status or None when killed at ``timeout``, stdout, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        # Reap in the background: a process stuck in KVM_RUN may linger in the kernel.
        threading.Thread(target=proc.communicate, daemon=True).start()
        return None, b"", b"", time.monotonic() - start
    return proc.returncode, out, err, time.monotonic() - start


def probe_kernel(accel: str, kernel: Path, timeout: float = 10.0) -> tuple[bool, str]:
    """Boot ``kernel`` under ``accel`` with no root file system; it works when the kernel gets
    as far as its panic and QEMU exits (1.8 s under TCG here; well under a second with KVM)."""
    cmd = [shutil.which(QEMU) or QEMU, "-accel", accel, "-M", "pc", "-m", "128", "-nodefaults",
           "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
           "-append", "console=ttyS0 panic=-1 loglevel=1"]
    rc, out, _err, took = _run_bounded(cmd, timeout)
    if rc is None:
        return False, f"a {accel} Linux guest did not get to its first panic in {timeout:g} s (hung); killed"
    if b"Kernel panic" in out or rc == 0:
        return True, f"a {accel} Linux guest booted in {took:.2f} s"
    return False, f"a {accel} Linux guest exited with status {rc} before booting"


def probe(accel: str, timeout: float = 5.0, kernel: Path | None = None) -> tuple[bool, str]:
    """Run the boot-sector guest, then (when ``kernel`` is given) a Linux kernel, under
    ``accel``; (worked, why)."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        return False, f"{QEMU} is not installed"
    if accel == "kvm":
        if not os.path.exists("/dev/kvm"):
            return False, "/dev/kvm does not exist"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return False, "/dev/kvm is not accessible"
    with tempfile.TemporaryDirectory(prefix="vmsandbox-probe-") as tmp:
        img = Path(tmp) / "probe.img"
        img.write_bytes(_BOOT_SECTOR)
        cmd = [qemu, "-accel", accel, "-M", "pc", "-m", "16", "-nodefaults", "-display", "none",
               "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
               "-drive", f"file={img},format=raw,if=floppy", "-boot", "a"]
        rc, _out, err, took = _run_bounded(cmd, timeout)
    if rc is None:
        return False, f"a {accel} guest did not finish in {timeout:g} s (hung); killed"
    if rc != _EXPECTED_EXIT:
        tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        return False, f"{accel} test guest failed (exit {rc}): {tail[0]}"
    if kernel is None:
        return True, f"a {accel} test guest ran in {took:.2f} s"
    return probe_kernel(accel, kernel, 2 * timeout)


def _cache_key() -> str:
    qemu = shutil.which(QEMU) or ""
    mtime = os.stat(qemu).st_mtime if qemu else 0
    return f"{platform.release()}|{qemu}|{mtime}"


MACHINE_CACHE_DIR = Path("/run/vmsandbox")


def cache_dir(state_dir: Path) -> Path:
    """Where the verdict is cached: machine-wide when possible."""
    try:
        MACHINE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(MACHINE_CACHE_DIR, os.W_OK):
            return MACHINE_CACHE_DIR
    except OSError:
        pass
    return Path(state_dir)


def choose(setting: str, cache_in: Path, timeout: float = 5.0) -> tuple[str, str]:
    """Resolve ``providers.libvirt.accelerator`` ('auto'|'kvm'|'tcg') to ('kvm'|'tcg', why)."""
    if setting == "tcg":
        return "tcg", "configured (providers.libvirt.accelerator: tcg)"
    if setting == "kvm":
        return "kvm", "configured (providers.libvirt.accelerator: kvm)"
    cache = Path(cache_in) / "accel.json"
    key = _cache_key()
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key and data.get("probe") == PROBE_VERSION:
            return data["accel"], data["why"] + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    ok, why = probe("kvm", timeout, find_kernel())
    verdict = ("kvm", why) if ok else ("tcg", f"KVM unusable: {why}; using TCG")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "probe": PROBE_VERSION, "accel": verdict[0], "why": verdict[1], "at": time.time()}))
        tmp.replace(cache)
    except OSError:
        pass
    return verdict
