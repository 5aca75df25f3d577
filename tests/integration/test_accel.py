"""The accelerator probe's Linux stage on the real QEMU (the boot-sector stage alone passed on a
host where KVM ran a boot sector but hung every Linux kernel)."""
from vmsandbox.providers.libvirt import accel


def test_linux_stage_boots_under_tcg():
    kernel = accel.find_kernel()
    assert kernel is not None, "the set-up installs Debian's cloud kernel"
    ok, why = accel.probe("tcg", 15.0, kernel)          # generous: a loaded host boots TCG slowly
    assert ok and "Linux guest booted" in why, why


def test_hung_guest_is_killed_at_the_bound():
    rc, _out, _err, took = accel._run_bounded(["sleep", "30"], 0.5)
    assert rc is None and took < 5
