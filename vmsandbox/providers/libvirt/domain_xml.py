"""libvirt domain XML for one sandbox guest (a pure function of ``MachineSpec``).

The shape is the one measured to work on libvirt 9.0 / QEMU 7.2 (see docs/architecture.md):
i440fx machine, virtio disk, QEMU user-mode networking passed through ``<qemu:commandline>``
(``restrict=on`` unless network_mode is ``nat``; SSH forwarded on 127.0.0.1 only; explicit PCI
address, else QEMU finds the slot taken), serial console logged to a file, balloon with stats.
"""
from __future__ import annotations

from .xmltext import escape, quoteattr   # not xml.sax.saxutils: see xmltext

from ..base import MachineSpec

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NIC_PCI_SLOT = "0x10"
CPU_PERIOD_US = 100_000
METADATA_NS = "https://vmsandbox.invalid/owner/1"


def netdev_arg(spec: MachineSpec) -> str:
    """QEMU ``-netdev`` value: user-mode, SSH forwarded on loopback only."""
    restrict = "" if spec.network_mode == "nat" else ",restrict=on"
    return f"user,id=n0{restrict},hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"


def domain_xml(spec: MachineSpec, domain_type: str = "qemu") -> str:
    """Domain XML; ``domain_type`` is 'qemu' (TCG) or 'kvm'."""
    boot = ["<boot dev='hd'/>"]
    box = spec.box
    if box.kernel:
        boot = [f"<kernel>{escape(str(box.kernel))}</kernel>"]
        if box.initrd:
            boot.append(f"<initrd>{escape(str(box.initrd))}</initrd>")
        if box.cmdline:
            boot.append(f"<cmdline>{escape(box.cmdline)} hostname={escape(spec.hostname)}</cmdline>")
    cputune = ""
    if spec.cpu_quota is not None:
        quota = max(1000, int(CPU_PERIOD_US * spec.cpu_quota))
        cputune = f"<cputune><period>{CPU_PERIOD_US}</period><quota>{quota}</quota></cputune>"
    cpu = "<cpu mode='host-passthrough'/>" if domain_type == "kvm" else ""
    device = f"virtio-net-pci,netdev=n0,romfile=,mac={spec.mac},bus=pci.0,addr={NIC_PCI_SLOT}"
    return f"""<domain type={quoteattr(domain_type)} xmlns:qemu='{QEMU_NS}'>
  <name>{escape(spec.name)}</name>
  <uuid>{spec.uuid}</uuid>
  <metadata><vmsandbox:owner xmlns:vmsandbox={quoteattr(METADATA_NS)} state={quoteattr(spec.owner)}/></metadata>
  <memory unit='b'>{spec.memory_bytes}</memory>
  <currentMemory unit='b'>{spec.memory_bytes}</currentMemory>
  <vcpu placement='static'>{spec.vcpus}</vcpu>
  {cputune}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    {''.join(boot)}
  </os>
  <features><acpi/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file={quoteattr(spec.layer)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'>
      <log file={quoteattr(str(spec.console_log))} append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='virtio'><stats period='2'/></memballoon>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value={quoteattr(netdev_arg(spec))}/>
    <qemu:arg value='-device'/>
    <qemu:arg value={quoteattr(device)}/>
  </qemu:commandline>
</domain>
"""
