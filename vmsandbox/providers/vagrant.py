"""The Vagrant provider: sandboxes kept as Vagrant machines (vagrant-libvirt), driven with
python-vagrant, on the same layer tree, snapshots, memory states and metrics as the libvirt
provider (it is a ``LibvirtProvider`` pointed at ``providers.vagrant.uri``).

Each sandbox has a Vagrant project, ``<sandbox dir>/vagrant``, with a generated Vagrantfile
(box, limits, accelerator, kernel/initrd/cmdline of direct-boot boxes); ``VAGRANT_HOME`` is
``<state>/vagrant`` and ``VAGRANT_CHECKPOINT_DISABLE=1``. A box of the box store is added to
Vagrant on first use; a box Vagrant already has (``vagrant box list``) is used as it is.

Who owns what. vmsandbox defines the libvirt domain (the libvirt provider's XML, with its NIC on
vagrant-libvirt's management network), on the sandbox's own qcow2 layer, and writes its uuid into
the project as Vagrant's machine id; ``vagrant up`` then finds the machine created and boots it:
it applies the Vagrantfile's settings to the definition, starts the management network, waits
for the guest's DHCP lease and for SSH. Letting vagrant-libvirt make the domain instead would give
it a disk of its own (``<pool>/<domain>.img`` on a copy of the box uploaded to a storage pool),
outside the layer tree: the layer records would name a file the tree did not make, on a parent it
does not know. This way the tree is the libvirt provider's, unchanged, and every snapshot,
rollback, clone, gc and doctor path is that code. Vagrant's own snapshot commands are not used.

A rollback starts the guest under a new domain name and uuid; the project's machine id follows
it (so ``vagrant status``, ``ssh`` and ``destroy`` in the project act on the current guest). The
guest keeps its MAC, hence its address: the previous guest is paused before the new one resumes
and stopped once it runs, so two guests never answer for one address. A clone boots the
snapshot's disk (its memory is not resumed: it would carry the origin's address).

Commands reach the guest through the project's SSH layer at the host, port, user and key of
``vagrant ssh-config`` (cached per guest), with the host key pinned as for libvirt.

Network rule: vagrant-libvirt needs a libvirt NAT network. This provider refuses to run in the
host's root network namespace; it runs only inside a namespace of its own with a private
libvirtd (docs/vagrant.md). It defines that network itself, never autostarted.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional
from xml.sax.saxutils import escape

import libvirt

from ..exceptions import ConfigError, NotFoundError, ProviderError
from .base import Capability, Endpoint, MachineSpec, ProviderCheck
from .libvirt import savefile
from .libvirt.domain_xml import QEMU_NS
from .libvirt.provider import LibvirtProvider, LibvirtSettings, _map

log = logging.getLogger("vmsandbox.vagrant")

MACHINE = "default"                           # the one machine of each sandbox's project
NETWORK = "vagrant-libvirt"                   # vagrant-libvirt's management network (its defaults)
NETWORK_ADDRESS = "192.168.121.0/24"
NETWORK_XML = f"""<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>
  <name>{NETWORK}</name>
  <forward mode='nat'/>
  <ip address='192.168.121.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.121.2' end='192.168.121.254'/></dhcp>
  </ip>
  <dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options>
</network>"""                                 # no-ping: dnsmasq's ping before an offer costs ~3 s a boot
INSTALL_HINT = "apt-get install --no-install-recommends vagrant vagrant-libvirt"
_CRASH = re.compile(r"^\S+\.rb:\d+:in [`'][^']*': (.+)$")
_TRACE = re.compile(r"^\s*(\d+:\s+)?from\s|^\s*/\S+\.rb:\d+")
_ERROR_LINES = 12


def current_netns() -> Optional[str]:
    """The name of the named network namespace (``ip netns add``) this process is in, or None
    (the host's own namespace, or an unnamed one); as ``ip netns identify`` finds it."""
    try:
        me = os.stat("/proc/self/ns/net")
        for entry in os.scandir("/run/netns"):
            st = os.stat(entry.path)
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return entry.name
    except OSError:
        pass
    return None


def vagrant_error_lines(stderr: str, stdout: str = "") -> str:
    """What a failed Vagrant command says, without a Ruby backtrace: the message of a crash (the
    first ``FILE.rb:N:in `x': MESSAGE`` line), else its stderr's lines, else the last lines of
    its output."""
    for line in stderr.splitlines():
        m = _CRASH.match(line)
        if m:
            return f"Vagrant failed inside Ruby: {m.group(1).strip()}"
    lines = [l.rstrip() for l in stderr.splitlines() if l.strip() and not _TRACE.match(l)]
    if not lines:
        lines = [l.rstrip() for l in stdout.splitlines() if l.strip()][-_ERROR_LINES:]
    return "\n".join(lines[:_ERROR_LINES]) or "no output"


def vagrant_box_dirname(name: str) -> str:
    """How Vagrant names a box's directory under ``$VAGRANT_HOME/boxes``."""
    return name.replace("/", "-VAGRANTSLASH-")


class VagrantSettings(LibvirtSettings):
    """``providers.vagrant`` (``sandbox.vagrant_libvirt_uri`` is an alias of ``uri``): the libvirtd
    Vagrant's guests run on (a private one in a network namespace); empty: ``providers.libvirt.uri``."""
    uri: str = ""


class VagrantProvider(LibvirtProvider):
    name = "vagrant"
    capabilities = LibvirtProvider.capabilities - {Capability.STANDBYS}     # its guests are reached by lease, not a port
    resolves_boxes = True       # "vagrant:NAME": a box of the store, else one Vagrant already has
    Settings = VagrantSettings

    def __init__(self, config: Any, layout: Any) -> None:
        super().__init__(config, layout)
        self.uri = self.settings.uri or config.provider_settings("libvirt").uri
        self.home = Path(layout.state_dir) / "vagrant"
        self._endpoints: dict[str, Endpoint] = {}
        self._checked: Optional[str] = None       # the vagrant executable, once found with its plugin
        self._lock = threading.Lock()
        self._net_lock = threading.Lock()

    # -- preconditions -------------------------------------------------------------------
    @staticmethod
    def _require_namespace() -> None:
        """Refuse unless this process is inside a named network namespace: Vagrant's guests have
        private addresses that, asked from the host's namespace, would be routed out of the machine."""
        if current_netns() is None:
            raise ProviderError("the vagrant provider runs only inside a named network namespace (`ip netns exec NS ...`) "
                                "with a private libvirtd (vagrant-libvirt needs a libvirt NAT network, which must never exist in the host's "
                                "namespace); see docs/vagrant.md")

    def _require_vagrant(self) -> str:
        """The vagrant executable, with the vagrant-libvirt plugin, inside a network namespace."""
        self._require_namespace()
        if self._checked:
            return self._checked
        exe = shutil.which("vagrant")
        if not exe:
            raise ProviderError(f"Vagrant is not installed ({INSTALL_HINT})")
        out = self._run([exe, "plugin", "list", "--machine-readable"], cwd=None, timeout=120)
        if "vagrant-libvirt" not in out.stdout:
            raise ProviderError(f"Vagrant has no vagrant-libvirt plugin ({INSTALL_HINT})")
        self._checked = exe
        return exe

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(VAGRANT_HOME=str(self.home), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1",
                   VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_LIBVIRT_URI=self.uri)
        env.pop("VAGRANT_CWD", None)
        env.pop("VAGRANT_VAGRANTFILE", None)
        return env

    def _run(self, argv: list[str], cwd: Optional[Path], timeout: float) -> subprocess.CompletedProcess:
        """A vagrant command outside python-vagrant (plugin and box commands before any project exists)."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o711)                # QEMU reads kernels of Vagrant's boxes in it
        try:
            return subprocess.run(argv, cwd=cwd, env=self._env(), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ProviderError(f"`vagrant {' '.join(argv[1:3])}` took longer than {timeout:g} s") from exc

    def _vagrant(self, project: Path, command: str, *args: str) -> str:
        """Run ``vagrant COMMAND`` in ``project`` through python-vagrant; ProviderError carries the
        relevant lines of its output (never a Ruby backtrace). Returns its standard output."""
        import vagrant as python_vagrant            # python-vagrant, loaded only when Vagrant is used
        self._require_vagrant()
        out_log, err_log = project / "vagrant.out", project / "vagrant.err"
        for f in (out_log, err_log):
            f.write_text("")
        v = _BoundedVagrant(root=str(project), env=self._env(), out_cm=python_vagrant.make_file_cm(out_log),
                            err_cm=python_vagrant.make_file_cm(err_log))
        v.timeout = 2 * float(self.config.sandbox.boot_timeout_seconds) + 60   # vagrant-libvirt's IP wait has no bound
        try:
            if command == "up":
                v.up(provision=False)
            elif command == "ssh-config":
                return v.ssh_config()
            else:
                v._call_vagrant_command([command, *args])
        except subprocess.CalledProcessError as exc:
            out, err = out_log.read_text(errors="replace"), err_log.read_text(errors="replace")
            kept = self.layout.logs / f"{project.parent.name}-vagrant-{command}.log"   # outlives the project
            kept.write_text(f"$ vagrant {command}\n{out}\n--- stderr ---\n{err}")
            raise ProviderError(f"`vagrant {command}` failed (full output: {kept}):\n"
                                f"{vagrant_error_lines(err, out)}") from exc
        except subprocess.TimeoutExpired as exc:
            raise ProviderError(f"`vagrant {command}` did not finish in {v.timeout:g} s and was stopped "
                                f"(its output: {out_log})") from exc
        except (OSError, RuntimeError) as exc:
            raise ProviderError(f"cannot run vagrant: {exc}") from exc
        return out_log.read_text(errors="replace")

    # -- boxes ---------------------------------------------------------------------------
    def vagrant_boxes(self) -> list[tuple[str, str]]:
        """(name, provider) of every box Vagrant has in this provider's ``VAGRANT_HOME``."""
        exe = self._require_vagrant()
        out = self._run([exe, "box", "list", "--machine-readable"], cwd=None, timeout=120)
        names, providers = [], []
        for line in out.stdout.splitlines():
            parts = line.split(",")
            if len(parts) >= 4 and parts[2] == "box-name":
                names.append(parts[3])
            elif len(parts) >= 4 and parts[2] == "box-provider":
                providers.append(parts[3])
        return list(zip(names, providers))

    def _box_registered(self, name: str) -> bool:
        return any((self.home / "boxes" / vagrant_box_dirname(name)).glob("*/libvirt/metadata.json"))

    def _vagrant_homes(self) -> list[Path]:
        """This provider's ``VAGRANT_HOME``, then the user's (``$VAGRANT_HOME`` or ~/.vagrant.d)."""
        user = Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")
        return [self.home] + ([user] if user.resolve() != self.home.resolve() else [])

    def _vagrant_box_dir(self, name: str) -> Optional[Path]:
        """The newest libvirt version of Vagrant box ``name`` in one of the Vagrant homes."""
        for home in self._vagrant_homes():
            found = sorted((home / "boxes" / vagrant_box_dirname(name)).glob("*/libvirt/metadata.json"),
                           key=lambda p: _version_key(p.parent.parent.name))
            if found:
                return found[-1].parent
        return None

    def box(self, source: str) -> Any:
        """``vagrant:NAME``: box NAME of the box store, else the box Vagrant already has under that
        name (``vagrant box list``, here or in the user's Vagrant home); NotFoundError saying how
        to add it otherwise (boxes are never downloaded)."""
        from ..boxes import BOX_NAME_RE, Box, BoxStore, find_vagrant_insecure_key, read_box
        name = source.partition(":")[2]
        store = BoxStore(self.config.sandbox.box_path)
        if BOX_NAME_RE.fullmatch(name):
            try:
                return store.get(name)
            except NotFoundError:
                pass
        d = self._vagrant_box_dir(name) if name else None
        if d is None:
            raise NotFoundError(
                f"box {name!r} is neither in the box store ({store.root}) nor known to Vagrant (`vagrant box list`); "
                f"boxes are not downloaded: add it from a file with `vagrant box add --name {name} FILE.box`, "
                f"or `vmsandbox box import FILE.box --name NAME`")
        if (d / "vmsandbox.json").is_file():      # a box vmsandbox exported: it says how it boots
            return read_box(d, source)
        try:
            meta = json.loads((d / "metadata.json").read_text())
            size = int(float(meta.get("virtual_size", 0)) * (1 << 30))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"Vagrant box {name!r}: unreadable {d / 'metadata.json'}: {exc}", "box") from exc
        return Box(name=source, path=d, image=d / "box.img", virtual_size=size, format="qcow2", kernel=None,
                   initrd=None, cmdline=None, ssh_user="vagrant", ssh_key=find_vagrant_insecure_key() or d / "Vagrantfile",
                   host_key=None, created_at=(d / "metadata.json").stat().st_mtime, source=source)

    def ensure_box(self, box: Any) -> str:
        """The Vagrant box name of ``box``: a box of the store is added to Vagrant on first use; a
        box of the user's Vagrant home is linked into this provider's. ConfigError when Vagrant
        rejects it."""
        name = box.name
        if name.startswith(f"{self.name}:"):
            name = name.partition(":")[2]
            if not self._box_registered(name):
                link = self.home / "boxes" / vagrant_box_dirname(name)
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(box.path.parent.parent)
            return name
        if self._box_registered(name):
            return name
        from ..boxes import BoxStore
        exe = self._require_vagrant()
        with self.layout.lock(f"vagrant-box-{name}", f"add box {name!r} to Vagrant"):
            if self._box_registered(name):
                return name
            with tempfile.TemporaryDirectory(prefix="box-", dir=self.home) as tmp:
                file = BoxStore(box.path.parent.parent.parent).export(name, Path(tmp) / f"{name}.box")
                r = self._run([exe, "box", "add", "--name", name, str(file)], cwd=None, timeout=600)
            if r.returncode != 0:
                raise ConfigError(f"Vagrant rejected box {name!r}: {vagrant_error_lines(r.stderr, r.stdout)}", "box")
        log.info("added box %s to Vagrant in %s", name, self.home)
        return name

    # -- the management network ----------------------------------------------------------
    def _require_libvirtd_here(self) -> None:
        """Refuse unless the libvirtd at ``self.uri`` runs in this process's network namespace: a
        network is made where the daemon runs, and the host's libvirtd would make it in the host's."""
        m = re.fullmatch(r"qemu:///system(?:\?socket=([^&]+))?", self.uri)
        if not m:
            raise ProviderError(f"the vagrant provider needs a local libvirtd (qemu:///system?socket=PATH), "
                                f"not {self.uri!r} (providers.vagrant.uri)")
        path = m.group(1) or "/run/libvirt/libvirt-sock"
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            theirs, mine = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
        except OSError as exc:
            raise ProviderError(f"cannot reach the libvirtd at {path} to check its network namespace: {exc}") from exc
        if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
            raise ProviderError(f"the libvirtd at {path} runs in another network namespace than this process; the "
                                "vagrant provider needs a private libvirtd inside this namespace (see docs/vagrant.md)")

    def _ensure_network(self) -> None:
        """vagrant-libvirt's management network on this provider's libvirtd (which must run in this
        namespace): defined with dnsmasq's no-ping, started, never autostarted."""
        with self._net_lock:
            self._require_libvirtd_here()
            conn = self.conn()
            try:
                net = conn.networkLookupByName(NETWORK)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise _map(exc, f"looking up network {NETWORK}", self.uri) from exc
                try:
                    net = conn.networkDefineXML(NETWORK_XML)
                except libvirt.libvirtError as exc2:
                    if exc2.get_error_code() != libvirt.VIR_ERR_OPERATION_FAILED:
                        raise _map(exc2, f"defining network {NETWORK}", self.uri) from exc2
                    net = conn.networkLookupByName(NETWORK)      # defined meanwhile by another process
            try:
                if net.autostart():
                    net.setAutostart(False)
                if not net.isActive():
                    net.create()
            except libvirt.libvirtError as exc:
                if not net.isActive():
                    raise _map(exc, f"starting network {NETWORK}", self.uri) from exc

    # -- the layers as a storage pool ----------------------------------------------------
    def _pool_name(self) -> str:
        return f"{self.prefix}layers"

    def _refresh_pool(self) -> None:
        """Keep ``<state>/layers`` a (refreshed) directory pool of this libvirtd: `vagrant destroy`
        in a project deletes its machine's disk as a pool volume and fails on a disk no pool has.
        Never autostarted."""
        conn = self.conn()
        try:
            try:
                pool = conn.storagePoolLookupByName(self._pool_name())
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = conn.storagePoolDefineXML(
                    f"<pool type='dir'><name>{escape(self._pool_name())}</name>"
                    f"<target><path>{escape(str(self.layout.layers))}</path></target></pool>")
            if not pool.isActive():
                pool.create()
            pool.refresh()
        except libvirt.libvirtError as exc:
            log.warning("could not refresh storage pool %s: %s", self._pool_name(), exc)

    def snapshot_machine(self, name: str, plan: Any) -> None:
        super().snapshot_machine(name, plan)
        self._refresh_pool()

    # -- projects ------------------------------------------------------------------------
    def project_dir(self, sandbox_id: str) -> Path:
        return self.layout.sandbox_dir(sandbox_id) / "vagrant"

    def _id_file(self, project: Path) -> Path:
        return project / ".vagrant" / "machines" / MACHINE / "libvirt" / "id"

    def machine_id(self, project: Path) -> Optional[str]:
        """Vagrant's machine id in ``project`` (the libvirt domain's uuid), or None."""
        try:
            return self._id_file(project).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _set_machine_id(self, project: Path, uuid: Optional[str]) -> None:
        f = self._id_file(project)
        if uuid is None:
            f.unlink(missing_ok=True)
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name("id.tmp")
        tmp.write_text(uuid)
        os.replace(tmp, f)

    def vagrantfile(self, spec: MachineSpec, box_name: str) -> str:
        """The project's Vagrantfile: box, limits, accelerator, kernel of direct-boot boxes."""
        kind, _ = self.accelerator()
        lines = [
            f"# Generated by vmsandbox for sandbox {spec.hostname} ({spec.sandbox_id}). vmsandbox defines the",
            "# libvirt domain on the sandbox's own disk layer; `vagrant up` boots it. Do not edit.",
            'Vagrant.configure("2") do |config|',
            f"  config.vm.box = {_rb(box_name)}",
            "  config.vm.box_check_update = false",
            "  config.ssh.insert_key = false              # clones and rollbacks keep the box's key",
            f"  config.vm.boot_timeout = {int(self.config.sandbox.boot_timeout_seconds)}",
            '  config.vm.synced_folder ".", "/vagrant", disabled: true',
            f"  config.vm.define {_rb(MACHINE)}",
            "  config.vm.provider :libvirt do |libvirt|",
            f"    libvirt.uri = {_rb(self.uri)}",
            f"    libvirt.driver = {_rb('kvm' if kind == 'kvm' else 'qemu')}",
            f"    libvirt.memory = {spec.memory_bytes >> 20}",
            f"    libvirt.cpus = {spec.vcpus}",
            '    libvirt.graphics_type = "none"',
            '    libvirt.video_type = "none"',
            f"    libvirt.management_network_name = {_rb(NETWORK)}",
            f"    libvirt.management_network_address = {_rb(NETWORK_ADDRESS)}",
            "    libvirt.management_network_autostart = false",
        ]
        if spec.box.kernel:
            lines.append(f"    libvirt.kernel = {_rb(str(spec.box.kernel))}")
            if spec.box.initrd:
                lines.append(f"    libvirt.initrd = {_rb(str(spec.box.initrd))}")
            lines.append(f"    libvirt.cmd_line = {_rb(self._cmdline(spec))}")
        lines += ["  end", "end", ""]
        return "\n".join(lines)

    @staticmethod
    def _cmdline(spec: MachineSpec) -> str:
        return f"{spec.box.cmdline or ''} hostname={spec.hostname} net=dhcp".strip()

    def _project(self, spec: MachineSpec) -> Path:
        """The sandbox's project, its Vagrantfile written, its box known to Vagrant, its network up."""
        self._require_vagrant()
        box_name = self.ensure_box(spec.box)
        project = self.project_dir(spec.sandbox_id)
        project.mkdir(mode=0o700, parents=True, exist_ok=True)
        (project / "Vagrantfile").write_text(self.vagrantfile(spec, box_name))
        self._ensure_network()
        return project

    # -- domain XML ----------------------------------------------------------------------
    def machine_xml(self, spec: MachineSpec) -> str:
        """The libvirt provider's domain, with its NIC on the management network (no user-mode
        networking), ``net=dhcp`` for direct-boot guests, and the project in its description."""
        root = ET.fromstring(super().machine_xml(spec))
        for cmd in root.findall(f"{{{QEMU_NS}}}commandline"):
            root.remove(cmd)
        cmdline = root.find("os/cmdline")
        if cmdline is not None:
            cmdline.text = self._cmdline(spec)
        desc = ET.Element("description")
        desc.text = f"vmsandbox: Vagrant project {self.project_dir(spec.sandbox_id)}"
        root.insert(2, desc)
        iface = ET.fromstring(f"<interface type='network'><mac address='{escape(spec.mac)}'/>"
                              f"<source network='{NETWORK}'/><model type='virtio'/></interface>")
        root.find("devices").append(iface)
        disk = root.find("devices/disk")          # vagrant-libvirt finds its machine's disk by this alias
        disk.append(ET.fromstring("<alias name='ua-box-volume-0'/>"))
        return ET.tostring(root, encoding="unicode")

    def adapt_saved_xml(self, saved_xml: str, spec: MachineSpec) -> str:
        """As for libvirt, and the NIC loses its live bindings (tap name, port), which belong to
        the guest it was saved from."""
        root = ET.fromstring(savefile.adapt_xml(saved_xml, spec))
        for iface in root.iter("interface"):
            for target in iface.findall("target"):
                iface.remove(target)
            source = iface.find("source")
            if source is not None:
                for attr in ("portid", "bridge"):
                    source.attrib.pop(attr, None)
        return ET.tostring(root, encoding="unicode")

    @staticmethod
    def _project_of(dom: "libvirt.virDomain") -> Optional[Path]:
        try:
            m = re.search(r"<description>vmsandbox: Vagrant project ([^<]+)</description>", dom.XMLDesc())
        except libvirt.libvirtError:
            return None
        return Path(m.group(1)) if m else None

    # -- lifecycle -----------------------------------------------------------------------
    def new_root_layer(self, box: Any, size_bytes: int) -> str:
        self._require_vagrant()                   # say so before anything is made
        return super().new_root_layer(box, size_bytes)

    def start_machine(self, spec: MachineSpec) -> None:
        """Define the domain, make it the project's machine, and ``vagrant up`` (which boots it
        and waits for its address and SSH). A guest the project held before (a rollback that
        boots) is stopped first: the new one takes its MAC and address."""
        self._own(spec.name)
        project = self._project(spec)
        previous = self.machine_id(project)
        try:
            dom = self.conn().defineXML(self.machine_xml(spec))
        except libvirt.libvirtError as exc:
            raise _map(exc, f"defining {spec.name}", self.uri) from exc
        if previous and previous != spec.uuid:
            self._stop_uuid(previous)
        self._set_machine_id(project, spec.uuid)
        self._refresh_pool()
        try:
            self._vagrant(project, "up")
        except BaseException:
            self._set_machine_id(project, previous)
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            self._undefine(dom)
            raise
        self._endpoints.pop(spec.name, None)

    def restore_machine(self, memory_ref: str, spec: MachineSpec) -> None:
        """A rollback: pause the project's current guest, resume the saved one under ``spec``'s
        identity, make it the project's machine, stop the old one. A clone (a project with no
        machine yet) boots the snapshot's disk instead (see the module's docstring)."""
        self._own(spec.name)
        project = self._project(spec)
        previous = self.machine_id(project)
        if previous is None or previous == spec.uuid:
            self.start_machine(spec)
            return
        old = self._lookup_uuid(previous)
        paused = False
        if old is not None:
            try:
                if old.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    old.suspend()
                    paused = True
            except libvirt.libvirtError as exc:
                raise _map(exc, f"pausing {old.name()}", self.uri) from exc
        try:
            super().restore_machine(memory_ref, spec)
        except BaseException:
            if paused:
                try:
                    old.resume()
                except libvirt.libvirtError as exc:
                    log.error("could not resume %s after a failed restore: %s", old.name(), exc)
            raise
        self._set_machine_id(project, spec.uuid)
        self._refresh_pool()
        if old is not None:
            known = self._endpoints.get(old.name())
            self._stop_uuid(previous)
            if known is not None:     # the resumed guest has its predecessor's MAC and address in memory
                self._remember_endpoint(project, spec.name, known)
                return
        self._endpoints.pop(spec.name, None)

    def _lookup_uuid(self, uuid: str) -> Optional["libvirt.virDomain"]:
        try:
            dom = self.conn().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _map(exc, f"looking up {uuid}", self.uri) from exc
        return dom if dom.name().startswith(self.prefix) else None

    def _stop_uuid(self, uuid: str) -> None:
        """Stop (keep defined) the domain ``uuid``: it no longer answers for the sandbox's address."""
        dom = self._lookup_uuid(uuid)
        try:
            if dom is not None and dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                raise _map(exc, f"stopping {dom.name()}", self.uri) from exc

    def destroy_machine(self, name: str) -> None:
        """Stop and undefine through libvirt (as for libvirt: fast, and it leaves the layer files
        to the layer tree); the project forgets the machine if it was its current one."""
        dom = self._find(name)
        if dom is None:
            return
        project, uuid = self._project_of(dom), dom.UUIDString()
        super().destroy_machine(name)
        if project is not None and self.machine_id(project) == uuid:
            self._set_machine_id(project, None)
        self._endpoints.pop(name, None)

    # -- endpoints -----------------------------------------------------------------------
    def endpoint(self, info: Any, box: Any) -> Endpoint:
        """SSH at the host, port, user and key of ``vagrant ssh-config`` (read once per guest:
        kept in memory and in the project; a guest a rollback resumed from memory keeps its
        predecessor's), the host key pinned as for libvirt."""
        self._require_namespace()                 # also for an address read before, in another process
        host_key = info.host_key or box.host_key
        cached = self._endpoints.get(info.domain)
        if cached is None:
            cached = self._read_endpoint(info)
            self._endpoints[info.domain] = cached
        return Endpoint(cached.host, cached.port, cached.user, cached.key_path, host_key)

    def _read_endpoint(self, info: Any) -> Endpoint:
        project = self.project_dir(info.id)
        saved = project / "endpoint.json"
        try:
            d = json.loads(saved.read_text())
            if d.get("domain") == info.domain:
                return Endpoint(d["host"], int(d["port"]), d["user"], Path(d["key"]), None)
        except (OSError, ValueError, KeyError):
            pass
        if not project.is_dir():
            raise NotFoundError(f"sandbox {info.name!r} has no Vagrant project ({project})")
        conf = _parse_ssh_config(self._vagrant(project, "ssh-config"))
        try:
            ep = Endpoint(conf["hostname"], int(conf.get("port", 22)), conf["user"], Path(conf["identityfile"]), None)
        except (KeyError, ValueError) as exc:
            raise ProviderError(f"`vagrant ssh-config` in {project} gave no usable address ({exc})") from exc
        self._remember_endpoint(project, info.domain, ep)
        return ep

    def _remember_endpoint(self, project: Path, domain: str, ep: Endpoint) -> None:
        self._endpoints[domain] = ep
        saved = project / "endpoint.json"
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps({"domain": domain, "host": ep.host, "port": ep.port, "user": ep.user,
                                   "key": str(ep.key_path)}))
        os.replace(tmp, saved)

    # -- health --------------------------------------------------------------------------
    def checks(self) -> list[ProviderCheck]:
        out = super().checks()
        exe = shutil.which("vagrant")
        out.append(ProviderCheck("vagrant", bool(exe), exe or "vagrant not found", "" if exe else INSTALL_HINT))
        if exe:
            try:
                self._require_vagrant()
                out.append(ProviderCheck("vagrant-libvirt", True, f"plugin present; VAGRANT_HOME {self.home}"))
            except ProviderError as exc:
                out.append(ProviderCheck("vagrant-libvirt", False, str(exc), INSTALL_HINT))
        return out


def _bounded_vagrant_class():
    import vagrant as python_vagrant

    class BoundedVagrant(python_vagrant.Vagrant):
        """python-vagrant, with a time bound: a command that outlives ``timeout`` is stopped with
        its whole process group (python-vagrant waits for ever)."""
        timeout: Optional[float] = None

        def _call_vagrant_command(self, args):
            command = self._make_vagrant_command(args)
            with self.out_cm() as out_fh, self.err_cm() as err_fh:
                proc = subprocess.Popen(command, cwd=self.root, stdout=out_fh, stderr=err_fh, env=self.env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    code = proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
            if code != 0:
                raise subprocess.CalledProcessError(code, command)

    return BoundedVagrant


def _BoundedVagrant(**kwargs):
    return _bounded_vagrant_class()(**kwargs)


def _parse_ssh_config(text: str) -> dict:
    """``vagrant ssh-config`` output -> lower-cased keys (first host only)."""
    out: dict = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            key = parts[0].lower()
            if key == "host" and out:
                break
            out.setdefault(key, parts[1].strip('"'))
    return out


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.-]", version))


def _rb(value: str) -> str:
    """A Ruby string literal."""
    return json.dumps(value)
