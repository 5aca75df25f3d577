"""qcow2 disk operations through ``qemu-img``: overlays on a backing layer, info, check.
The one place that runs qemu-img; failures become ProviderError with qemu-img's own words."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ...exceptions import ProviderError

QEMU_IMG = "qemu-img"


def _run(args: list[str], timeout: float = 120) -> str:
    try:
        proc = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise ProviderError("qemu-img is not installed (apt-get install qemu-utils)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProviderError(f"qemu-img {args[0]} took longer than {timeout:g} s") from exc
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise ProviderError(f"qemu-img {args[0]} failed: {msg[-1] if msg else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def create_overlay(path: Path, backing: Path, size_bytes: int | None = None) -> None:
    """A new qcow2 ``path`` on read-only ``backing`` (absolute path, qcow2), optionally larger."""
    args = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(Path(backing).resolve()), str(path)]
    if size_bytes:
        args.append(str(size_bytes))
    _run(args)
    os.chmod(path, 0o600)       # the guest's data: libvirt hands it to QEMU's user while it runs


def info(path: Path, chain: bool = False) -> dict | list:
    """``qemu-img info --output=json`` (a list with ``chain``)."""
    args = ["info", "--output=json", "-U", str(path)]
    if chain:
        args.insert(1, "--backing-chain")
    return json.loads(_run(args))


def virtual_size(path: Path) -> int:
    return int(info(path)["virtual-size"])


def check(path: Path) -> tuple[bool, str]:
    """(image is consistent, qemu-img's words)."""
    try:
        proc = subprocess.run([QEMU_IMG, "check", "-U", str(path)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
