"""The box store: guest images that sandboxes boot from (build from recipes, import, list, remove).

A box is the read-only root layer of every sandbox made from it. Each box is stored in the
Vagrant libvirt layout, so Vagrant could use it as it is::

    <root>/<name>/0/libvirt/
        box.img          qcow2, read-only root layer            0644
        metadata.json    {"provider": "libvirt", "format": "qcow2", "virtual_size": GiB}
        Vagrantfile
        vmlinuz, initrd.img                                     0644 (kernel-booted boxes only)
        ssh_key          private key for ``ssh_user``            0600
        vmsandbox.json   how the box boots and how to log in (read into ``Box``)

QEMU runs as ``libvirt-qemu``, so directories are 0755 and images and kernels 0644.
Recipes live in ``boxes/<recipe>/build.sh`` (see ``recipe_dir``), run as ``sh build.sh OUTDIR``;
lines they print as ``==> step`` are progress. A recipe writes into OUTDIR either the files above
(box.img, metadata.json, Vagrantfile, a private key) or a Vagrant ``.box`` file, plus
``recipe.json``: ``{"ssh_user", "ssh_key", "host_key", "kernel", "initrd", "cmdline",
"kernel_version"}`` for the former, ``{"vagrant_box", "ssh_user", "ssh_key", "host_key"}`` for the latter.
Build and import are atomic: they work in a hidden temp directory inside the store and rename it
into place at the end, so a failure leaves nothing behind.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator

from .perms import FILE_MODE, grant_search, private_dir, qemu_user
from .exceptions import ConfigError, NotFoundError, ProviderError

if TYPE_CHECKING:
    import tarfile                        # imported where boxes are packed or unpacked: not on every command

BOX_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
LAYOUT = Path("0") / "libvirt"
INFO_FILE = "vmsandbox.json"
RECIPE_FILE = "recipe.json"
IMAGE_FILE = "box.img"
KEY_FILE = "ssh_key"
BUILD_TIMEOUT = 600
# Where Debian's vagrant package keeps Vagrant's well-known insecure key.
VAGRANT_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant",
    "/usr/share/vagrant/keys/vagrant",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant",
    "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant",
)
_TEMP_PREFIX = ".tmp-"
_TAIL_CHARS = 2000

_DEFAULT_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
  end
end
"""


@dataclass(frozen=True)
class Box:
    """A stored box: its root image, how it boots and how to log in."""
    name: str
    path: Path                      # the box directory (<root>/<name>/0/libvirt)
    image: Path                     # box.img
    virtual_size: int               # bytes
    format: str                     # "qcow2"
    kernel: Path | None             # None: boots from its own disk
    initrd: Path | None
    cmdline: str | None
    ssh_user: str
    ssh_key: Path
    host_key: str | None            # "ssh-ed25519 AAAA..." to pin; None = trust on first use
    created_at: float
    source: str                     # "recipe:tiny" / "import:/path/x.box"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "path": str(self.path), "image": str(self.image),
            "virtual_size": self.virtual_size, "format": self.format,
            "kernel": str(self.kernel) if self.kernel else None,
            "initrd": str(self.initrd) if self.initrd else None,
            "cmdline": self.cmdline, "ssh_user": self.ssh_user, "ssh_key": str(self.ssh_key),
            "host_key": self.host_key, "created_at": self.created_at, "source": self.source,
        }


def recipe_dir() -> Path:
    """The directory of box recipes: ``$VMSANDBOX_BOXES`` or ``<repo>/boxes``."""
    override = os.environ.get("VMSANDBOX_BOXES")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "boxes"


def available_recipes() -> list[str]:
    root = recipe_dir()
    return sorted(p.parent.name for p in root.glob("*/build.sh")) if root.is_dir() else []


def recipe_digest(recipe: str) -> str:
    """sha256 of a recipe's files and of the shared steps in boxes/tiny that every recipe sources;
    stored with a built box, so a cache can tell a box built from an older recipe."""
    h = hashlib.sha256()
    for folder in sorted({recipe_dir() / recipe, recipe_dir() / "tiny"}):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(recipe_dir())).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def validate_box_name(name: str) -> str:
    if not isinstance(name, str) or not BOX_NAME_RE.fullmatch(name):
        raise ConfigError(f"{name!r} is not a valid box name "
                          "(1-63 of a-z 0-9 . _ -, starting with a letter or digit)")
    return name


def find_vagrant_insecure_key() -> Path | None:
    for pattern in VAGRANT_KEY_GLOBS:
        for match in sorted(glob.glob(pattern), reverse=True):
            if os.path.isfile(match):
                return Path(match)
    return None


class BoxStore:
    """Boxes under one root directory (``sandbox.box_directory``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------

    def list(self) -> list[Box]:
        """Every complete box, by name; half-written or unreadable entries are skipped."""
        if not self.root.is_dir():
            return []
        boxes = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not BOX_NAME_RE.fullmatch(entry.name):
                continue
            try:
                boxes.append(self._load(entry.name))
            except (NotFoundError, ConfigError):
                continue
        return boxes

    def get(self, name: str) -> Box:
        """The box called ``name``; NotFoundError names the known boxes and how to build one."""
        validate_box_name(name)
        if not (self._box_dir(name) / INFO_FILE).is_file():
            known = ", ".join(b.name for b in self.list()) or "none"
            raise NotFoundError(f"box {name!r} not found in {self.root} (known boxes: {known}); "
                                "build one with `vmsandbox box build tiny` or add one with `vmsandbox box import`")
        return self._load(name)

    def _box_dir(self, name: str) -> Path:
        return self.root / name / LAYOUT

    def _load(self, name: str) -> Box:
        return read_box(self._box_dir(name), name)

    # -- writing -------------------------------------------------------------------------------

    def stale(self, name: str, recipe: str | None = None) -> bool:
        """True when box ``name`` is missing or was built from another version of its recipe."""
        try:
            box = self.get(name)
        except NotFoundError:
            return True
        try:
            built = json.loads((box.path / INFO_FILE).read_text()).get("recipe_digest")
        except (OSError, ValueError):
            return True
        return built != recipe_digest(recipe or name)

    def build(self, recipe: str = "tiny", name: str | None = None,
              progress: Callable[[str], None] | None = None, force: bool = False) -> Box:
        """Run ``boxes/<recipe>/build.sh`` and store its box as ``name`` (default: the recipe name).

        Raises NotFoundError (unknown recipe), ConfigError (bad or taken name), ProviderError
        (the recipe failed; carries the tail of its stderr).
        """
        if recipe not in available_recipes():
            raise NotFoundError(f"no box recipe {recipe!r} in {recipe_dir()} "
                                f"(available: {', '.join(available_recipes()) or 'none'})")
        script = recipe_dir() / recipe / "build.sh"
        name = validate_box_name(name or recipe)
        self._check_free(name, force)
        report = progress or (lambda _msg: None)
        started = time.monotonic()
        with self._staging(name) as stage:
            built = stage / "recipe"
            built.mkdir()
            _run_recipe(script, built, report)
            recipe_info = _read_json(built / RECIPE_FILE, f"recipe {recipe!r} output")
            for key in ("kernel", "initrd", "vagrant_box", "ssh_key"):
                produced = recipe_info.get(key, KEY_FILE if key == "ssh_key" else None)
                if produced and not (built / produced).is_file():
                    raise ProviderError(f"recipe {recipe!r} did not produce its {key} {produced!r}")
            out = stage / "box" / LAYOUT
            out.mkdir(parents=True)
            if recipe_info.get("vagrant_box"):
                # The recipe made a Vagrant .box file: unpack it like an import.
                image_info = self._unpack_box(built / recipe_info["vagrant_box"], out)
                shutil.copyfile(built / recipe_info.get("ssh_key", KEY_FILE), out / KEY_FILE)
            else:
                out.rmdir()
                built.rename(out)
                _remove(out / RECIPE_FILE)
                os.replace(out / recipe_info.get("ssh_key", KEY_FILE), out / KEY_FILE)
                image_info = _check_image(out / IMAGE_FILE)
            info = _box_info(image_info, f"recipe:{recipe}", recipe_info.get("ssh_user", "root"),
                             host_key=recipe_info.get("host_key"), kernel=recipe_info.get("kernel"),
                             initrd=recipe_info.get("initrd"), cmdline=recipe_info.get("cmdline"),
                             kernel_version=recipe_info.get("kernel_version"),
                             recipe_digest=recipe_digest(recipe))
            self._finish(stage, name, info, force)
        report(f"box {name!r} ready in {time.monotonic() - started:.1f} s")
        return self.get(name)

    def import_box(self, file: Path, name: str, ssh_user: str = "vagrant", ssh_key: Path | None = None,
                   force: bool = False) -> Box:
        """Import a Vagrant libvirt ``.box`` file (a tar of box.img, metadata.json, Vagrantfile).

        Without ``ssh_key`` the Vagrant insecure key is used when Vagrant is installed.
        Raises ConfigError (bad name, bad box file, no key), ProviderError (qemu-img failed).
        """
        name = validate_box_name(name)
        file = Path(file).resolve()
        if not file.is_file():
            raise ConfigError(f"box file {str(file)!r} does not exist")
        if not ssh_user or not re.fullmatch(r"[a-z_][a-z0-9_.-]*", ssh_user):
            raise ConfigError(f"{ssh_user!r} is not a valid SSH user name")
        key = Path(ssh_key) if ssh_key else find_vagrant_insecure_key()
        if key is None:
            raise ConfigError("no SSH key for the imported box: Vagrant's insecure key is not installed; "
                              "pass --ssh-key PRIVATE_KEY_FILE")
        _check_private_key(key)
        self._check_free(name, force)
        with self._staging(name) as stage:
            out = stage / "box" / LAYOUT
            out.mkdir(parents=True)
            image_info = self._unpack_box(file, out)
            shutil.copyfile(key, out / KEY_FILE)
            info = _box_info(image_info, f"import:{file}", ssh_user)
            self._finish(stage, name, info, force)
        return self.get(name)

    def export(self, name: str, output: Path) -> Path:
        """Write box ``name`` as a Vagrant libvirt ``.box`` file (a tar of box.img, metadata.json,
        its Vagrantfile and what that names: kernel, initrd, key; and vmsandbox.json, so that a
        box Vagrant keeps still says how it boots) that ``vagrant box add`` accepts.
        Written beside ``output`` and renamed into place: a failure leaves no partial file."""
        box = self.get(name)
        output = Path(output).resolve()
        if not output.parent.is_dir():
            raise ConfigError(f"directory {str(output.parent)!r} does not exist", "output")
        files = [f for f in sorted(box.path.iterdir()) if f.is_file()]   # vmsandbox.json too: how it boots
        if not (box.path / "metadata.json").is_file():
            raise ConfigError(f"box {name!r} has no metadata.json; it cannot be exported")
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
        os.close(fd)
        import tarfile
        try:
            with tarfile.open(tmp, "w") as tar:
                for f in files:
                    tar.add(f, arcname=f.name, filter=_plain_member)
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except BaseException:
            _remove(Path(tmp))
            raise
        return output

    def remove(self, name: str) -> None:
        """Delete a box (NotFoundError if there is none). Sandboxes still using it break."""
        self.get(name)
        trash = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}rm-{name}-", dir=self.root))
        os.rename(self.root / name, trash / name)
        shutil.rmtree(trash, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def _check_free(self, name: str, force: bool) -> None:
        if not force and (self.root / name).exists():
            raise ConfigError(f"box {name!r} already exists in {self.root} (use --force to replace it)")

    @contextmanager
    def _staging(self, name: str) -> Iterator[Path]:
        """A temp directory inside the store, always removed; ``_finish`` moves the box out of it."""
        private_dir(self.root, qemu_search=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{name}-", dir=self.root))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _finish(self, stage: Path, name: str, info: dict, force: bool) -> None:
        """Write vmsandbox.json, set permissions, and rename ``stage/box`` into place as ``name``."""
        box_root = stage / "box"
        (box_root / LAYOUT / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _set_permissions(box_root, box_root / LAYOUT)
        target = self.root / name
        if target.exists():
            if not force:
                raise ConfigError(f"box {name!r} already exists in {self.root} (use --force to replace it)")
            os.rename(target, stage / "replaced")     # removed with the stage
        try:
            os.rename(box_root, target)
        except OSError as exc:
            if (stage / "replaced").exists():
                os.rename(stage / "replaced", target)
            raise ProviderError(f"could not move box {name!r} into {self.root}: {exc}") from exc

    def _unpack_box(self, file: Path, out: Path) -> dict:
        """Safely extract a Vagrant libvirt box into ``out``, validate it; returns qemu-img info."""
        import tarfile
        try:
            with tarfile.open(file, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, file)
                for member in members:
                    if member.isdir():
                        (out / _member_path(member)).mkdir(parents=True, exist_ok=True)
                        continue
                    dest = out / _member_path(member)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(dest, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ConfigError(f"{file} is not a readable Vagrant box (tar) file: {exc}") from exc
        metadata = _read_json(out / "metadata.json", f"{file.name}: metadata.json", ConfigError)
        if metadata.get("provider") != "libvirt":
            raise ConfigError(f"{file.name}: provider is {metadata.get('provider')!r}, "
                              "only 'libvirt' boxes can be imported")
        if metadata.get("format", "qcow2") != "qcow2":
            raise ConfigError(f"{file.name}: format is {metadata.get('format')!r}, expected 'qcow2'")
        if not (out / IMAGE_FILE).is_file():
            raise ConfigError(f"{file.name}: no {IMAGE_FILE} at the top of the box file")
        image_info = _check_image(out / IMAGE_FILE, ConfigError, file.name)
        declared = metadata.get("virtual_size")
        if declared is not None:
            actual_gib = math.ceil(image_info["virtual-size"] / (1 << 30))
            if not isinstance(declared, (int, float)) or isinstance(declared, bool) or declared < actual_gib:
                raise ConfigError(f"{file.name}: metadata virtual_size {declared!r} GiB does not match "
                                  f"{IMAGE_FILE} ({image_info['virtual-size']} bytes)")
        if not (out / "Vagrantfile").exists():
            (out / "Vagrantfile").write_text(_DEFAULT_VAGRANTFILE)
        return image_info


def read_box(path: Path, name: str) -> Box:
    """The box in directory ``path`` (one with a ``vmsandbox.json``: the store's, or a box a store
    exported that Vagrant now keeps), called ``name``."""
    try:
        info = json.loads((path / INFO_FILE).read_text())
        kernel, initrd = info.get("kernel"), info.get("initrd")
        return Box(
            name=name, path=path, image=path / info.get("image", IMAGE_FILE),
            virtual_size=int(info["virtual_size"]), format=info.get("format", "qcow2"),
            kernel=path / kernel if kernel else None, initrd=path / initrd if initrd else None,
            cmdline=info.get("cmdline"), ssh_user=info["ssh_user"],
            ssh_key=path / info.get("ssh_key", KEY_FILE), host_key=info.get("host_key"),
            created_at=float(info["created_at"]), source=info.get("source", ""))
    except FileNotFoundError:
        raise NotFoundError(f"box {name!r} has no {INFO_FILE} in {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"box {name!r}: unreadable {path / INFO_FILE}: {exc}") from exc


def _box_info(image_info: dict, source: str, ssh_user: str, host_key: str | None = None,
              kernel: str | None = None, initrd: str | None = None, cmdline: str | None = None,
              **extra: object) -> dict:
    """The contents of a box's vmsandbox.json (file names relative to the box directory)."""
    return {"image": IMAGE_FILE, "format": "qcow2", "virtual_size": image_info["virtual-size"],
            "kernel": kernel, "initrd": initrd, "cmdline": cmdline, "ssh_user": ssh_user, "ssh_key": KEY_FILE,
            "host_key": host_key, "created_at": time.time(), "source": source, **extra}


def _member_path(member: tarfile.TarInfo) -> PurePosixPath:
    return PurePosixPath(*[p for p in PurePosixPath(member.name).parts if p != "."])


def _check_member(member: tarfile.TarInfo, file: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not _member_path(member).parts and not member.isdir():
        raise ConfigError(f"{file.name}: unsafe path {member.name!r} in the box file")
    if not (member.isfile() or member.isdir()):
        raise ConfigError(f"{file.name}: {member.name!r} is a link or special file; "
                          "a box file may hold only regular files")


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A box file member owned by nobody in particular (the store's uids mean nothing elsewhere)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_image(image: Path, error: type = ProviderError, label: str = "") -> dict:
    """``qemu-img info`` of a box image: must be qcow2 with no backing file."""
    where = f"{label}: " if label else ""
    info = json.loads(_qemu_img("info", "--output=json", str(image)))
    if info.get("format") != "qcow2":
        raise error(f"{where}{image.name} is {info.get('format')!r}, expected qcow2")
    if info.get("backing-filename"):
        raise error(f"{where}{image.name} has a backing file ({info['backing-filename']!r}); "
                    "a box image must stand alone")
    _qemu_img("check", "-q", str(image))
    return info


def _qemu_img(*args: str) -> str:
    try:
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise ProviderError("qemu-img not found (install qemu-utils)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProviderError(f"qemu-img {args[0]} timed out") from exc
    if proc.returncode != 0:
        raise ProviderError(f"qemu-img {' '.join(args)} failed: {proc.stderr.strip()[-_TAIL_CHARS:]}")
    return proc.stdout


def _run_recipe(script: Path, out: Path, report: Callable[[str], None]) -> None:
    """Run a recipe's build.sh; its ``==> step`` lines go to ``report``."""
    with tempfile.TemporaryFile("w+") as stderr:
        try:
            proc = subprocess.Popen(["sh", str(script), str(out)], stdout=subprocess.PIPE, stderr=stderr,
                                    stdin=subprocess.DEVNULL, text=True, cwd=out)
        except OSError as exc:
            raise ProviderError(f"cannot run {script}: {exc}") from exc
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(BUILD_TIMEOUT, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("==> "):
                    report(line[4:].strip())
            code = proc.wait()
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise ProviderError(f"box recipe {script.parent.name!r} did not finish in {BUILD_TIMEOUT} s")
        if code != 0:
            stderr.seek(0)
            tail = stderr.read().strip()[-_TAIL_CHARS:]
            raise ProviderError(f"box recipe {script.parent.name!r} failed (exit {code}): {tail or 'no output'}")


def _read_json(path: Path, what: str, error: type = ProviderError) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what}: {path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise error(f"{what}: {path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what}: {path.name} must hold a JSON object")
    return data


def _check_private_key(key: Path) -> None:
    try:
        text = key.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read SSH key {str(key)!r}: {exc}") from exc
    if "PRIVATE KEY-----" not in text:
        raise ConfigError(f"{str(key)!r} is not a private SSH key (PEM or OpenSSH format)")


def _set_permissions(stage: Path, box_dir: Path) -> None:
    """Directories 0700 that QEMU's user may pass through, files 0600 (libvirt hands the image,
    kernel and initrd to QEMU's user while a guest uses them; the image holds the box's host key)."""
    user = qemu_user()
    for dirpath, dirnames, filenames in os.walk(stage):
        grant_search(Path(dirpath), user)
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), FILE_MODE)
    os.chmod(box_dir / KEY_FILE, 0o600)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
