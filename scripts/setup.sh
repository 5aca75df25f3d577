#!/usr/bin/env bash
# Set up vmsandbox on a fresh Debian 12 machine (as root) and run the main job or the tests.
#   bash scripts/setup.sh demo    install everything, then create/exec/snapshot/rollback/destroy a sandbox
#   bash scripts/setup.sh test    install everything, then run the whole test suite (real VMs included)
#   bash scripts/setup.sh         install only
# Idempotent: packages, daemons, the virtualenv and the tiny box are only installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

APT_PACKAGES=(
  redis-server                                    # the broker of distributed farm runs (tests start their own)
  qemu-system-x86 qemu-utils                      # the hypervisor (TCG or KVM) and qemu-img
  libvirt-daemon-system libvirt-clients           # libvirtd, virtlogd, virsh
  libvirt-dev pkg-config gcc python3-dev          # to build libvirt-python
  linux-image-cloud-amd64 busybox-static dropbear-bin openssh-client e2fsprogs cpio   # the tiny box
  openssh-sftp-server rsync                       # scp/sftp/rsync into the tiny box
  syslinux syslinux-common mtools dosfstools fdisk                                    # the bootable test box
  debootstrap                                     # the debian box (built by the tests, or `vmsandbox box build debian`)
  iproute2 util-linux procps
  vagrant vagrant-libvirt dnsmasq-base              # the vagrant provider (its tests run in a private network namespace)
  docker.io                                       # container sandboxes (dockerd, containerd, runc, docker-init)
  acl                                             # setfacl, in the fixes `vmsandbox doctor` prints
)

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "error: run as root (it installs Debian packages and starts libvirtd)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

step "libvirt daemons"
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 60); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.5
done
virsh -c qemu:///system version >/dev/null || { echo "error: libvirtd did not come up" >&2; exit 1; }

step "docker daemon"
# An operator's daemon (DOCKER_HOST, or Docker's default socket) is used as it is. Otherwise start
# a private one that changes nothing on the host's network: no bridge, no iptables rules, its own
# data root, exec root, socket and pid file (the Docker provider finds that socket by itself).
DOCKER_SOCK=/run/vmsandbox-docker.sock
if docker version >/dev/null 2>&1; then
  echo "using the Docker daemon at ${DOCKER_HOST:-the default socket}"
elif DOCKER_HOST=unix://$DOCKER_SOCK docker version >/dev/null 2>&1; then
  echo "using the private Docker daemon at $DOCKER_SOCK"
else
  mkdir -p /var/lib/vmsandbox-docker /run/vmsandbox-docker
  setsid dockerd --data-root /var/lib/vmsandbox-docker --exec-root /run/vmsandbox-docker \
    -H "unix://$DOCKER_SOCK" --pidfile /run/vmsandbox-docker.pid \
    --bridge=none --iptables=false --ip6tables=false \
    >/var/log/vmsandbox-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do
    DOCKER_HOST=unix://$DOCKER_SOCK docker version >/dev/null 2>&1 && break
    sleep 0.5
  done
  DOCKER_HOST=unix://$DOCKER_SOCK docker version >/dev/null 2>&1 \
    || { echo "error: dockerd did not come up (see /var/log/vmsandbox-dockerd.log)" >&2; exit 1; }
fi

step "virtualenv .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"

step "tiny box"
if .venv/bin/python -c "import sys; from vmsandbox.boxes import BoxStore; from vmsandbox.config import load_config
sys.exit(0 if BoxStore(load_config().sandbox.box_path).stale('tiny') else 1)"; then
  .venv/bin/vmsandbox box build tiny --force      # missing or from an older recipe; also the image vmsandbox/tiny
elif ! .venv/bin/python -c "from vmsandbox.providers.docker import connect; connect().api.inspect_image('vmsandbox/tiny')" 2>/dev/null; then
  step "container image vmsandbox/tiny"
  .venv/bin/python -c "
from vmsandbox.boxes import BoxStore; from vmsandbox.config import load_config
from vmsandbox.providers.docker import import_box
print(import_box(BoxStore(load_config().sandbox.box_path).get('tiny')))"
fi
.venv/bin/vmsandbox doctor || true

case "${1:-}" in
  demo) step "demo"; exec .venv/bin/vmsandbox demo ;;
  test) step "tests"; exec .venv/bin/python -m pytest -v -p no:cacheprovider tests ;;
  "") ;;
  *) echo "error: unknown action '$1' (demo or test)" >&2; exit 2 ;;
esac
