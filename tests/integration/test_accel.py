"""The accelerator probe on the real QEMU: its Linux stage runs, and a verdict is bounded in time."""
import time

from vmsandbox.providers.libvirt import accel


def test_linux_stage_boots_under_tcg():
    kernel = accel.find_kernel()
    assert kernel is not None, "the set-up installs Debian's cloud kernel"
    ok, why = accel.probe("tcg", 5.0, kernel)
    assert ok, why
    assert "Linux guest booted" in why


def test_auto_verdict_is_bounded_and_cached(tmp_path):
    started = time.monotonic()
    first = accel.choose("auto", tmp_path)
    assert time.monotonic() - started < 5.0 + 2 * 5.0 + 5, "two bounded stages at most"
    assert first[0] in ("kvm", "tcg")
    assert accel.choose("auto", tmp_path) == (first[0], first[1] + " (cached)")


def test_hung_guest_is_killed_at_the_bound():
    rc, _out, _err, took = accel._run_bounded(["sleep", "30"], 0.5)
    assert rc is None and took < 5
