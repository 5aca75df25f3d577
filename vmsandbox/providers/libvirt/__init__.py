"""The libvirt/QEMU provider package: ``provider`` (the Provider), ``domain_xml`` (domain XML
for a MachineSpec), ``savefile`` (the domain XML inside a save image, rewritten for a restore
under a new identity), ``accel`` (the KVM-or-TCG probe) and ``disks`` (qcow2 layers through
qemu-img). Only ``provider`` imports libvirt; the registry names it directly."""
