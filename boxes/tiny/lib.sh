# Shared steps of the vmsandbox box recipes (sourced by boxes/*/build.sh; POSIX sh).
# Everything is built offline as plain files from packages installed on this machine:
# linux-image-cloud-amd64 (kernel + modules), busybox-static, dropbear-bin, openssh-client
# (ssh-keygen, scp), openssh-sftp-server, rsync (optional), e2fsprogs (mkfs.ext4 -d), cpio, gzip. No loop mounts, no root-only tricks.

TINY_DIR=$(CDPATH= cd -- "$(dirname -- "$0")/../tiny" && pwd)
FILES="$TINY_DIR/files"
BUSYBOX=${BUSYBOX:-/bin/busybox}
DROPBEAR=${DROPBEAR:-/usr/sbin/dropbear}
SFTP_SERVER=${SFTP_SERVER:-/usr/lib/openssh/sftp-server}
# Applets Debian's busybox-static lacks, copied from the host (coreutils, util-linux) when present.
HOST_TOOLS="nohup nice flock install split comm join cksum script"
# Loaded in dependency order (resolved from modules.dep) by the initramfs.
# Modules come from MODULES_ROOT/lib/modules (default: this machine's; the debian recipe points it at its tree).
MODULES_ROOT=${MODULES_ROOT:-}
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
failover net_failover virtio_net virtio_balloon virtio-rng button evdev"

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*"; }

require_tools() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install the package that provides it)"
    done
}

# The newest installed kernel that has its modules, or $KERNEL_VERSION.
kernel_version() {
    if [ -n "${KERNEL_VERSION:-}" ]; then echo "$KERNEL_VERSION"; return; fi
    for image in $(ls /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        version=${image#/boot/vmlinuz-}
        [ -f "/lib/modules/$version/modules.dep" ] && { echo "$version"; return; }
    done
    die "no kernel in /boot with modules in /lib/modules (install linux-image-cloud-amd64)"
}

# Module files (relative to /lib/modules/VERSION) in load order, dependencies first.
resolve_modules() {
    awk -v want="$MODULES" -v builtin_file="$MODULES_ROOT/lib/modules/$1/modules.builtin" '
        function key(p,  k) { k = p; sub(/.*\//, "", k); sub(/\.ko(\.[a-z]+)?$/, "", k); gsub(/-/, "_", k); return k }
        function visit(p,  n, i, d) {
            if (p in seen) return
            seen[p] = 1
            n = split(deps[p], d, " ")
            for (i = 1; i <= n; i++) visit(d[i])
            print p
        }
        { m = $1; sub(/:$/, "", m); $1 = ""; deps[m] = $0; path[key(m)] = m }
        END {
            while ((getline line < builtin_file) > 0) builtin[key(line)] = 1
            n = split(want, w, /[ \n]+/)
            for (i = 1; i <= n; i++) {
                k = key(w[i])
                if (k == "" || k in builtin) continue
                if (!(k in path)) { print "error: kernel module " w[i] " not found" > "/dev/stderr"; exit 1 }
                visit(path[k])
            }
        }' "$MODULES_ROOT/lib/modules/$1/modules.dep"
}

# Copy a module, decompressed, to $2.
copy_module() {
    case "$1" in
        *.ko.xz) xz -dc "$1" > "$2" ;;
        *.ko.zst) zstd -qdc "$1" > "$2" ;;
        *.ko.gz) gzip -dc "$1" > "$2" ;;
        *) cp "$1" "$2" ;;
    esac
}

# Static busybox at TREE/bin/busybox with every applet as a symlink next to it.
install_busybox() {
    mkdir -p "$1/bin"
    cp "$BUSYBOX" "$1/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$1/bin/$applet"
    done
}

# install_binary TREE SRC DEST: copy the host's SRC to TREE/DEST with its shared libraries at the
# paths its loader expects.
install_binary() {
    [ -x "$2" ] || die "$2 not found (install the package that provides it; see scripts/setup.sh)"
    mkdir -p "$1$(dirname "$3")"
    cp -L "$2" "$1$3"
    ldd "$2" > "$WORK/binary.ldd" || die "ldd $2 failed"
    for lib in $(awk '/=> \// {print $3} /^[ \t]*\// {print $1}' "$WORK/binary.ldd"); do
        [ -e "$1$lib" ] && continue
        mkdir -p "$1$(dirname "$lib")"
        cp -L "$lib" "$1$lib"
    done
}

# make_initramfs KERNEL_VERSION OUTPUT: gzip'd newc cpio with busybox, the modules and /init.
make_initramfs() {
    tree="$WORK/initramfs"
    rm -rf "$tree"
    mkdir -p "$tree/dev" "$tree/proc" "$tree/sys" "$tree/newroot" "$tree/lib/modules"
    install_busybox "$tree"
    resolve_modules "$1" > "$WORK/modules" || die "cannot resolve the kernel modules of $1"
    : > "$tree/modules.list"
    for module in $(cat "$WORK/modules"); do
        name=$(basename "$module"); name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
        copy_module "$MODULES_ROOT/lib/modules/$1/$module" "$tree/lib/modules/$name"
        echo "$name" >> "$tree/modules.list"
    done
    [ -s "$tree/modules.list" ] || die "no kernel modules resolved for $1"
    cp "$FILES/init" "$tree/init"
    chmod 755 "$tree/init"
    (cd "$tree" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 > "$2"
}

# make_rootfs TREE AUTHORIZED_PUBKEY_FILE: the guest's root tree; writes the host key inside
# TREE and its public half (OpenSSH format) to $WORK/ssh_host_key.pub.
make_rootfs() {
    tree=$1
    rm -rf "$tree"
    install_busybox "$tree"
    # One bin for all: dropbear's default PATH (/usr/bin:/bin) then finds every applet.
    mkdir -p "$tree/usr"
    ln -s bin "$tree/sbin"
    ln -s ../bin "$tree/usr/bin"
    ln -s ../bin "$tree/usr/sbin"
    install_binary "$tree" "$DROPBEAR" /bin/dropbear
    # What scp, sftp and rsync clients run on the server side: dropbear's compiled-in sftp-server
    # path, and scp/rsync on its PATH.
    install_binary "$tree" "$SFTP_SERVER" /usr/lib/sftp-server
    install_binary "$tree" "$(command -v scp)" /bin/scp
    if command -v rsync >/dev/null 2>&1; then install_binary "$tree" "$(command -v rsync)" /bin/rsync; fi
    # Debian's busybox-static leaves out applets that coreutils/util-linux provide; add those.
    for tool in $HOST_TOOLS; do
        if [ ! -e "$tree/bin/$tool" ] && command -v "$tool" >/dev/null 2>&1; then
            install_binary "$tree" "$(command -v "$tool")" "/bin/$tool"
        fi
    done
    mkdir -p "$tree/dev" "$tree/proc" "$tree/sys" "$tree/tmp" "$tree/run" "$tree/mnt" \
        "$tree/home" "$tree/var/log" "$tree/etc/dropbear" "$tree/etc/acpi/PWRF" "$tree/etc/udhcpc"
    ln -s ../run "$tree/var/run"
    chmod 1777 "$tree/tmp"

    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$tree/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > "$tree/etc/group"
    printf 'root:*:19000:0:99999:7:::\n' > "$tree/etc/shadow"
    chmod 600 "$tree/etc/shadow"
    printf '/bin/sh\n/bin/ash\n' > "$tree/etc/shells"
    echo vmsandbox > "$tree/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$tree/etc/hosts"
    echo "nameserver 10.0.2.3" > "$tree/etc/resolv.conf"
    cp "$FILES/inittab" "$tree/etc/inittab"
    cp "$FILES/rc" "$tree/etc/rc"
    cp "$FILES/profile" "$tree/etc/profile"
    cp "$FILES/udhcpc.script" "$tree/etc/udhcpc/default.script"
    cp "$FILES/poweroff-button" "$tree/etc/acpi/PWRF/00000080"
    chmod 755 "$tree/etc/rc" "$tree/etc/udhcpc/default.script" "$tree/etc/acpi/PWRF/00000080"

    mkdir -p "$tree/root/.ssh"
    chmod 700 "$tree/root" "$tree/root/.ssh"
    cp "$2" "$tree/root/.ssh/authorized_keys"
    chmod 600 "$tree/root/.ssh/authorized_keys"

    hostkey="$tree/etc/dropbear/dropbear_ed25519_host_key"
    dropbearkey -t ed25519 -f "$hostkey" >/dev/null 2>&1 || die "dropbearkey could not make a host key"
    chmod 600 "$hostkey"
    dropbearkey -y -f "$hostkey" | awk '/^ssh-ed25519 / {print $1, $2}' > "$WORK/ssh_host_key.pub"
    [ -s "$WORK/ssh_host_key.pub" ] || die "could not read the host key's public half"
}

# make_user_key DIR: DIR/ssh_key (OpenSSH ed25519, 0600) and DIR/ssh_key.pub.
make_user_key() {
    rm -f "$1/ssh_key" "$1/ssh_key.pub"
    ssh-keygen -q -t ed25519 -N '' -C "vmsandbox-box" -f "$1/ssh_key" || die "ssh-keygen failed"
    chmod 600 "$1/ssh_key"
}

# make_ext4 TREE IMAGE SIZE [extra mkfs options]: ext4 filled from TREE, no mount needed.
make_ext4() {
    tree=$1 image=$2 size=$3
    shift 3
    rm -f "$image"
    mkfs.ext4 -q -F -L vmsandbox-root -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
        "$@" -d "$tree" "$image" "$size" >/dev/null || die "mkfs.ext4 failed"
}

# Vagrant libvirt metadata.json for a qcow2 image of $1 bytes (virtual_size in GiB, rounded up).
write_metadata() {
    gib=$(( ($1 + 1073741823) / 1073741824 ))
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$gib" > "$2"
}
