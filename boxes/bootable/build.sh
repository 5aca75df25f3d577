#!/bin/sh
# Recipe "bootable" (tests only): the tiny box's root fs on a partitioned disk that boots by itself
# (syslinux MBR -> FAT boot partition with kernel + initramfs -> ext4 root on /dev/vda2), packed as a
# standard Vagrant libvirt box file. Built without mounting anything (mtools, syslinux on a file).
#
# Writes to OUTDIR: bootable.box (tar.gz: box.img, metadata.json, Vagrantfile), ssh_key (+ .pub,
# root's key), ssh_host_key.pub and recipe.json (which names the .box file to import).
# Needs the apt packages syslinux, syslinux-common, mtools, dosfstools, fdisk.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
. "$HERE/../tiny/lib.sh"

MBR=${SYSLINUX_MBR:-/usr/lib/syslinux/mbr/mbr.bin}
DISK_MIB=1024
BOOT_START=2048           # sectors: partition 1 at 1 MiB
BOOT_MIB=32
ROOT_START=$((BOOT_START + BOOT_MIB * 2048))
ROOT_MIB=$((DISK_MIB - 1 - BOOT_MIB))
mkdir -p "$OUT"
WORK="$OUT/.work"
trap 'rm -rf "$WORK"' EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
require_tools dropbearkey ssh-keygen mkfs.ext4 mkfs.fat mcopy syslinux sfdisk qemu-img cpio gzip tar ldd awk
[ -f "$MBR" ] || die "$MBR not found (install syslinux-common)"

kver=$(kernel_version)
step "kernel $kver"
make_user_key "$OUT"
step "root tree"
make_rootfs "$WORK/root" "$OUT/ssh_key.pub"
step "initramfs"
make_initramfs "$kver" "$WORK/initrd.img"

step "boot partition (FAT, syslinux)"
mkfs.fat -C -n VMSBXBOOT "$WORK/boot.fat" $((BOOT_MIB * 1024)) >/dev/null || die "mkfs.fat failed"
mcopy -i "$WORK/boot.fat" "/boot/vmlinuz-$kver" ::vmlinuz || die "mcopy failed"
mcopy -i "$WORK/boot.fat" "$WORK/initrd.img" ::initrd.img
mcopy -i "$WORK/boot.fat" "$HERE/syslinux.cfg" ::syslinux.cfg
syslinux --install "$WORK/boot.fat" || die "syslinux --install failed"

step "root partition (ext4)"
make_ext4 "$WORK/root" "$WORK/root.ext4" "${ROOT_MIB}M"

step "disk (MBR)"
truncate -s "${DISK_MIB}M" "$WORK/disk.raw"
printf 'label: dos\nstart=%s, size=%sMiB, type=c, bootable\nstart=%s, type=83\n' \
    "$BOOT_START" "$BOOT_MIB" "$ROOT_START" | sfdisk -q "$WORK/disk.raw" || die "sfdisk failed"
dd if="$MBR" of="$WORK/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/boot.fat" of="$WORK/disk.raw" bs=512 seek="$BOOT_START" conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$WORK/disk.raw" bs=512 seek="$ROOT_START" conv=notrunc,sparse status=none

step "box file"
mkdir -p "$WORK/box"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/box/box.img" || die "qemu-img convert failed"
write_metadata "$(stat -c %s "$WORK/disk.raw")" "$WORK/box/metadata.json"
cp "$HERE/Vagrantfile" "$WORK/box/Vagrantfile"
tar -C "$WORK/box" -czf "$OUT/bootable.box" box.img metadata.json Vagrantfile
cp "$WORK/ssh_host_key.pub" "$OUT/ssh_host_key.pub"
cat > "$OUT/recipe.json" <<JSON
{"vagrant_box": "bootable.box", "ssh_user": "root", "ssh_key": "ssh_key",
 "host_key": "$(cat "$WORK/ssh_host_key.pub")", "kernel_version": "$kver"}
JSON
step "done"
