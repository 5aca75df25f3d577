#!/bin/sh
# Recipe "debian": a Debian 12 (bookworm) box built with debootstrap from the Debian mirror that this
# machine's apt already uses (called by vmsandbox.boxes.BoxStore.build; needs root and debootstrap).
#
# Guest: minbase plus openssh-server, python3, sudo, ca-certificates, sysvinit (or systemd: set
# DEBIAN_INIT=systemd), ifupdown (eth0 static 10.0.2.15, or DHCP with udhcpc when the kernel command line
# says net=dhcp, as the Vagrantfile does), acpid (ACPI power
# button -> poweroff) and Debian's cloud kernel, booted directly with the tiny box's small initramfs
# built from the guest's own kernel modules. Root logs in by key only.
# Writes: box.img (qcow2 ext4 root), vmlinuz, initrd.img, metadata.json, Vagrantfile, ssh_key (+ .pub),
# ssh_host_key.pub, recipe.json.
# Environment: BOX_DISK_SIZE (default 1G; the guest grows its file system to a larger sandbox disk
# at boot), DEBIAN_INIT (sysvinit|systemd), DEBOOTSTRAP_CACHE (downloaded packages, kept between builds;
# default /var/cache/vmsandbox/debootstrap), APT_ETC (where to read the mirror; default /etc/apt).
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
. "$HERE/../tiny/lib.sh"

SUITE=bookworm
SIZE=${BOX_DISK_SIZE:-1G}
INIT=${DEBIAN_INIT:-sysvinit}
CACHE=${DEBOOTSTRAP_CACHE:-/var/cache/vmsandbox/debootstrap}
CMDLINE="console=ttyS0 root=/dev/vda rw quiet panic=-1 net.ifnames=0"
case "$INIT" in
    sysvinit) INIT_PACKAGES=sysvinit-core,initscripts ;;
    systemd) INIT_PACKAGES=systemd-sysv ;;
    *) die "DEBIAN_INIT must be sysvinit or systemd, not '$INIT'" ;;
esac
PACKAGES="openssh-server,python3,sudo,ca-certificates,$INIT_PACKAGES,ifupdown,iproute2,busybox,udhcpc,acpid,kmod,linux-image-cloud-amd64"

mkdir -p "$OUT"
OUT=$(CDPATH= cd -- "$OUT" && pwd)
WORK="$OUT/.work"
ROOT="$WORK/root"
# debootstrap mounts proc and sys inside the tree: never remove the tree with them still mounted.
unmount_tree() {
    awk -v root="$ROOT" 'index($2, root "/") == 1 {print $2}' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
cleanup() { unmount_tree; rm -rf "$WORK"; }
trap cleanup EXIT
cleanup; mkdir -p "$WORK"
[ "$(id -u)" = 0 ] || die "the debian recipe needs root (debootstrap)"
require_tools debootstrap ssh-keygen mkfs.ext4 qemu-img cpio gzip awk python3 chroot

set -- $(python3 "$HERE/apt_source.py" "$SUITE" "${APT_ETC:-/etc/apt}") || die "no Debian mirror for $SUITE in apt's sources"
MIRROR=$1 KEYRING=$2
KEYRING_OPT=
[ "$KEYRING" = - ] || KEYRING_OPT="--keyring=$KEYRING"
mkdir -p "$CACHE"

step "debootstrap $SUITE minbase + $INIT (packages cached in $CACHE)"
# Progress: one line when debootstrap moves to a new phase (retrieving, extracting, configuring...).
{ debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE" $KEYRING_OPT \
        "$SUITE" "$ROOT" "$MIRROR" 2>&1; echo $? > "$WORK/debootstrap.rc"; } | tee "$WORK/debootstrap.log" |
    awk '/^I: [A-Z][a-z]+ / && $2 != "Validating" && $2 != "Found" && $2 != "Chosen" { if (!seen[$2]++) { print "==> debootstrap: " tolower($2) " packages"; fflush() } }'
if [ "$(cat "$WORK/debootstrap.rc")" != 0 ]; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    die "debootstrap failed"
fi
unmount_tree

step "configure (network, sshd, keys, acpid)"
kver=$(ls "$ROOT/lib/modules" | sort -V | tail -n 1)
[ -n "$kver" ] && [ -f "$ROOT/boot/vmlinuz-$kver" ] || die "no kernel installed in the guest tree"
echo vmsandbox > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvmsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
echo "nameserver 10.0.2.3" > "$ROOT/etc/resolv.conf"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 0" > "$ROOT/etc/fstab"
: > "$ROOT/etc/machine-id"
ln -sf ../proc/self/mounts "$ROOT/etc/mtab"
install -m 644 "$HERE/files/interfaces" "$ROOT/etc/network/interfaces"
install -m 755 "$HERE/files/vmsandbox-netmap" "$ROOT/usr/local/sbin/vmsandbox-netmap"
install -m 644 "$HERE/files/sshd.conf" "$ROOT/etc/ssh/sshd_config.d/vmsandbox.conf"
install -m 644 "$HERE/files/acpi-power" "$ROOT/etc/acpi/events/vmsandbox-power"
if [ "$INIT" = sysvinit ]; then
    # No gettys: nobody logs in on a console (root has no password); serial output stays the log.
    sed -i -E 's/^([1-6]):/#\1:/' "$ROOT/etc/inittab"
    # Boot time under TCG: files/sysinit replaces Debian's rcS (see there).
    install -m 755 "$HERE/files/sysinit" "$ROOT/usr/local/sbin/vmsandbox-sysinit"
    sed -i 's|^si::sysinit:.*|si::sysinit:/usr/local/sbin/vmsandbox-sysinit|' "$ROOT/etc/inittab"
    grep -q '^si::sysinit:/usr/local/sbin/vmsandbox-sysinit$' "$ROOT/etc/inittab" || die "inittab has no sysinit line"
else
    # systemd boots the usual way; rc.local grows the file system to the sandbox's disk.
    install -m 755 "$HERE/files/rc.local" "$ROOT/etc/rc.local"
fi
rm -f "$ROOT"/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C vmsandbox-debian -f "$ROOT/etc/ssh/ssh_host_ed25519_key" || die "ssh-keygen failed"
awk '{print $1, $2}' "$ROOT/etc/ssh/ssh_host_ed25519_key.pub" > "$WORK/ssh_host_key.pub"
make_user_key "$OUT"
install -d -m 700 "$ROOT/root/.ssh"
install -m 600 "$OUT/ssh_key.pub" "$ROOT/root/.ssh/authorized_keys"
# Downloaded packages, apt lists and Debian's own initrd (the box boots with the small one) are not needed.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/boot/initrd.img-* \
    "$ROOT"/var/log/*.log "$ROOT/debootstrap"

step "kernel $kver, initramfs"
cp "$ROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz"
MODULES_ROOT=$ROOT make_initramfs "$kver" "$OUT/initrd.img"

step "ext4 root ($SIZE, $(du -sh "$ROOT" | cut -f1) used)"
make_ext4 "$ROOT" "$WORK/base.raw" "$SIZE"
step "qcow2"
qemu-img convert -O qcow2 "$WORK/base.raw" "$OUT/box.img" || die "qemu-img convert failed"

write_metadata "$(stat -c %s "$WORK/base.raw")" "$OUT/metadata.json"
cp "$HERE/Vagrantfile" "$OUT/Vagrantfile"
cp "$WORK/ssh_host_key.pub" "$OUT/ssh_host_key.pub"
cat > "$OUT/recipe.json" <<JSON
{"ssh_user": "root", "ssh_key": "ssh_key", "host_key": "$(cat "$WORK/ssh_host_key.pub")",
 "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "$CMDLINE", "kernel_version": "$kver"}
JSON
chmod 644 "$OUT/box.img" "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/metadata.json" "$OUT/Vagrantfile" \
    "$OUT/ssh_key.pub" "$OUT/ssh_host_key.pub" "$OUT/recipe.json"
step "done"
