#!/bin/sh
# Recipe "tiny": build the vmsandbox tiny box into OUTDIR (called by vmsandbox.boxes.BoxStore.build).
#
# Writes: box.img (qcow2 ext4 root), vmlinuz, initrd.img, metadata.json, Vagrantfile,
# ssh_key (+ .pub: root's key), ssh_host_key.pub (the guest's dropbear host key, OpenSSH format)
# and recipe.json, which tells the box store how the box boots and how to log in.
# Environment: BOX_DISK_SIZE (default 1G), KERNEL_VERSION (default: newest installed).
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
. "$(dirname -- "$0")/lib.sh"

CMDLINE="console=ttyS0 root=/dev/vda rw quiet panic=-1"
SIZE=${BOX_DISK_SIZE:-1G}
mkdir -p "$OUT"
WORK="$OUT/.work"
trap 'rm -rf "$WORK"' EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
require_tools dropbearkey ssh-keygen mkfs.ext4 qemu-img cpio gzip ldd awk

kver=$(kernel_version)
step "kernel $kver"
make_user_key "$OUT"
step "root tree (busybox, dropbear, sftp-server, keys)"
make_rootfs "$WORK/root" "$OUT/ssh_key.pub"
step "initramfs"
make_initramfs "$kver" "$OUT/initrd.img"
cp "/boot/vmlinuz-$kver" "$OUT/vmlinuz"
step "ext4 root ($SIZE)"
make_ext4 "$WORK/root" "$WORK/base.raw" "$SIZE"
step "qcow2"
qemu-img convert -O qcow2 "$WORK/base.raw" "$OUT/box.img" || die "qemu-img convert failed"

write_metadata "$(stat -c %s "$WORK/base.raw")" "$OUT/metadata.json"
cp "$TINY_DIR/Vagrantfile" "$OUT/Vagrantfile"
cp "$WORK/ssh_host_key.pub" "$OUT/ssh_host_key.pub"
cat > "$OUT/recipe.json" <<JSON
{"ssh_user": "root", "ssh_key": "ssh_key", "host_key": "$(cat "$WORK/ssh_host_key.pub")",
 "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "$CMDLINE", "kernel_version": "$kver"}
JSON
chmod 644 "$OUT/box.img" "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/metadata.json" "$OUT/Vagrantfile" \
    "$OUT/ssh_key.pub" "$OUT/ssh_host_key.pub" "$OUT/recipe.json"
step "done"
