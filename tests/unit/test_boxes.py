"""Box store logic: names, layout, permissions, atomicity, import validation, CLI (fast, no VM).

Recipes here are stand-ins (a few lines of sh making a small qcow2 with qemu-img), chosen through
$VMSANDBOX_BOXES; the real recipes are exercised in tests/integration/test_box_build.py.
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmsandbox import boxes
from vmsandbox.boxes import BoxStore, validate_box_name
from vmsandbox.cli import cli
from vmsandbox.exceptions import ConfigError, NotFoundError, ProviderError

FAKE_PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"

KERNEL_RECIPE = """\
set -eu
out=$1
echo "==> making image"
qemu-img create -q -f qcow2 "$out/box.img" 64M
echo kernel > "$out/vmlinuz"; echo initrd > "$out/initrd.img"
printf '%s' '{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}' > "$out/metadata.json"
echo 'Vagrant.configure("2") {}' > "$out/Vagrantfile"
printf '%s\\n' '-----BEGIN OPENSSH PRIVATE KEY-----' x '-----END OPENSSH PRIVATE KEY-----' > "$out/ssh_key"
cat > "$out/recipe.json" <<EOF
{"ssh_user": "root", "ssh_key": "ssh_key", "host_key": "ssh-ed25519 AAAAfake",
 "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0 root=/dev/vda"}
EOF
echo "==> done"
"""

BOXFILE_RECIPE = """\
set -eu
out=$1
mkdir "$out/pack"
qemu-img create -q -f qcow2 "$out/pack/box.img" 32M
printf '%s' '{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}' > "$out/pack/metadata.json"
tar -C "$out/pack" -czf "$out/made.box" box.img metadata.json
printf '%s\\n' '-----BEGIN OPENSSH PRIVATE KEY-----' y '-----END OPENSSH PRIVATE KEY-----' > "$out/id"
printf '%s' '{"vagrant_box": "made.box", "ssh_user": "root", "ssh_key": "id", "host_key": "ssh-ed25519 AAAAb"}' \\
    > "$out/recipe.json"
"""


def _write_recipe(root: Path, name: str, body: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "build.sh").write_text(body)


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "recipes"
    _write_recipe(root, "fake", KERNEL_RECIPE)
    _write_recipe(root, "broken", "echo '==> step one'\necho 'mkfs exploded: disk full' >&2\nexit 3\n")
    _write_recipe(root, "boxfile", BOXFILE_RECIPE)
    _write_recipe(root, "nokernel", KERNEL_RECIPE.replace('echo kernel > "$out/vmlinuz"; ', ""))
    monkeypatch.setenv("VMSANDBOX_BOXES", str(root))
    return root


@pytest.fixture
def store(tmp_path: Path) -> BoxStore:
    return BoxStore(tmp_path / "store")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_test"
    path.write_text(FAKE_PRIVATE_KEY)
    return path


def _entries(store: BoxStore) -> list[str]:
    return sorted(os.listdir(store.root)) if store.root.exists() else []


def _qcow2(path: Path, size: str = "64M", backing: Path | None = None) -> Path:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        cmd += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run(cmd + [str(path), size], check=True)
    return path


def _make_box(tmp_path: Path, name: str = "x.box", image: Path | None = None, metadata: dict | str | None = None,
              extra: dict[str, bytes] | None = None, skip: tuple[str, ...] = ()) -> Path:
    """A Vagrant libvirt box file; every part can be replaced to make a bad one."""
    image = image or _qcow2(tmp_path / "img.qcow2")
    meta = metadata if metadata is not None else {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    meta_bytes = (meta if isinstance(meta, str) else json.dumps(meta)).encode()
    file = tmp_path / name
    with tarfile.open(file, "w:gz") as tar:
        if "box.img" not in skip:
            tar.add(image, arcname="./box.img")
        for arcname, data in [("metadata.json", meta_bytes), ("Vagrantfile", b"# vagrant\n"),
                              *(extra or {}).items()]:
            if arcname in skip:
                continue
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return file


# -- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "a", "debian-12.1", "x_y", "0box", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate_box_name(name) == name


@pytest.mark.parametrize("name", ["", "Tiny", "-x", ".hidden", "a/b", "../x", "a b", "a" * 64, "é"])
def test_invalid_names_are_config_errors(name: str, store: BoxStore) -> None:
    with pytest.raises(ConfigError, match="not a valid box name"):
        validate_box_name(name)
    with pytest.raises(ConfigError):
        store.get(name)


def test_recipe_dir_defaults_to_repo_and_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VMSANDBOX_BOXES", raising=False)
    assert (boxes.recipe_dir() / "tiny" / "build.sh").is_file()
    monkeypatch.setenv("VMSANDBOX_BOXES", str(tmp_path))
    assert boxes.recipe_dir() == tmp_path


# -- build --------------------------------------------------------------------------------------

def test_build_stores_box_in_vagrant_layout(recipes: Path, store: BoxStore) -> None:
    steps: list[str] = []
    box = store.build("fake", name="mybox", progress=steps.append)
    assert box.path == store.root / "mybox" / "0" / "libvirt"
    assert {p.name for p in box.path.iterdir()} == {
        "box.img", "vmlinuz", "initrd.img", "metadata.json", "Vagrantfile", "ssh_key", "vmsandbox.json"}
    assert box.image == box.path / "box.img" and box.format == "qcow2"
    assert box.virtual_size == 64 << 20
    assert box.kernel == box.path / "vmlinuz" and box.initrd == box.path / "initrd.img"
    assert box.cmdline == "console=ttyS0 root=/dev/vda"
    assert (box.ssh_user, box.host_key, box.source) == ("root", "ssh-ed25519 AAAAfake", "recipe:fake")
    assert steps[:2] == ["making image", "done"]
    # Nobody but the owner reads a box; QEMU's user may only pass through the directories
    # (libvirt hands it the files it boots). perms.check finds nothing to fix.
    from vmsandbox import perms
    for d in (store.root, store.root / "mybox", store.root / "mybox" / "0", box.path):
        assert stat.S_IMODE(d.stat().st_mode) & 0o067 == 0
    for f in ("box.img", "vmlinuz", "initrd.img", "metadata.json"):
        assert stat.S_IMODE((box.path / f).stat().st_mode) == 0o600
    assert [v for v in perms.check(store.root, store.root) if v.path.startswith(str(store.root))] == []
    assert stat.S_IMODE(box.ssh_key.stat().st_mode) == 0o600
    assert _entries(store) == ["mybox"]
    assert store.get("mybox") == box
    assert json.loads(json.dumps(box.to_dict()))["kernel"] == str(box.kernel)


def test_build_of_a_recipe_that_makes_a_box_file(recipes: Path, store: BoxStore) -> None:
    box = store.build("boxfile")
    assert box.kernel is None and box.cmdline is None
    assert (box.ssh_user, box.host_key, box.virtual_size) == ("root", "ssh-ed25519 AAAAb", 32 << 20)
    assert "-----BEGIN OPENSSH PRIVATE KEY-----\ny\n" in box.ssh_key.read_text()
    assert {p.name for p in box.path.iterdir()} == {"box.img", "metadata.json", "Vagrantfile", "ssh_key",
                                                   "vmsandbox.json"}
    assert _entries(store) == ["boxfile"]


def test_build_name_defaults_to_recipe(recipes: Path, store: BoxStore) -> None:
    assert store.build("fake").name == "fake"
    assert [b.name for b in store.list()] == ["fake"]


def test_failed_recipe_raises_with_stderr_tail_and_leaves_nothing(recipes: Path, store: BoxStore) -> None:
    with pytest.raises(ProviderError, match=r"exit 3.*mkfs exploded: disk full"):
        store.build("broken")
    assert _entries(store) == []


def test_recipe_without_its_kernel_leaves_nothing(recipes: Path, store: BoxStore) -> None:
    with pytest.raises(ProviderError, match="kernel"):
        store.build("nokernel")
    assert _entries(store) == []


def test_unknown_recipe(recipes: Path, store: BoxStore) -> None:
    with pytest.raises(NotFoundError, match=r"no box recipe 'nope'.*available: boxfile, broken, fake, nokernel"):
        store.build("nope")
    with pytest.raises(NotFoundError):
        store.build("../fake")


def test_duplicate_name_needs_force(recipes: Path, store: BoxStore) -> None:
    first = store.build("fake")
    with pytest.raises(ConfigError, match="already exists.*--force"):
        store.build("fake")
    second = store.build("fake", force=True)
    assert second.created_at > first.created_at
    assert _entries(store) == ["fake"]


def test_failed_forced_rebuild_keeps_the_old_box(recipes: Path, store: BoxStore) -> None:
    first = store.build("fake", name="keep")
    with pytest.raises(ProviderError):
        store.build("broken", name="keep", force=True)
    assert store.get("keep") == first
    assert _entries(store) == ["keep"]


# -- get / list / remove ------------------------------------------------------------------------

def test_get_unknown_names_known_boxes_and_how_to_build(recipes: Path, store: BoxStore) -> None:
    with pytest.raises(NotFoundError, match=r"known boxes: none.*vmsandbox box build tiny"):
        store.get("tiny")
    store.build("fake")
    with pytest.raises(NotFoundError, match=r"known boxes: fake"):
        store.get("tiny")


def test_list_skips_staging_and_broken_entries(recipes: Path, store: BoxStore) -> None:
    store.build("fake")
    (store.root / ".tmp-half-built").mkdir()
    (store.root / "nojson" / "0" / "libvirt").mkdir(parents=True)
    broken = store.root / "broken" / "0" / "libvirt"
    broken.mkdir(parents=True)
    (broken / "vmsandbox.json").write_text("{not json")
    assert [b.name for b in store.list()] == ["fake"]
    with pytest.raises(ConfigError, match="unreadable"):
        store.get("broken")


def test_remove(recipes: Path, store: BoxStore) -> None:
    store.build("fake")
    store.remove("fake")
    assert _entries(store) == [] and store.list() == []
    with pytest.raises(NotFoundError):
        store.remove("fake")


# -- import -------------------------------------------------------------------------------------

def test_import_valid_box(tmp_path: Path, store: BoxStore, key: Path) -> None:
    file = _make_box(tmp_path, extra={"info.json": b"{}"})
    box = store.import_box(file, "imported", ssh_user="root", ssh_key=key)
    assert box.kernel is None and box.initrd is None and box.cmdline is None and box.host_key is None
    assert (box.ssh_user, box.source) == ("root", f"import:{file}")
    assert box.virtual_size == 64 << 20
    assert box.ssh_key.read_text() == FAKE_PRIVATE_KEY
    assert stat.S_IMODE(box.ssh_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(box.image.stat().st_mode) == 0o600
    assert (box.path / "Vagrantfile").read_text() == "# vagrant\n"
    assert _entries(store) == ["imported"]


def test_import_writes_a_vagrantfile_when_missing(tmp_path: Path, store: BoxStore, key: Path) -> None:
    box = store.import_box(_make_box(tmp_path, skip=("Vagrantfile",)), "novf", ssh_key=key)
    assert "libvirt" in (box.path / "Vagrantfile").read_text()


def _symlink_box(tmp_path: Path) -> Path:
    file = _make_box(tmp_path)
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    with tarfile.open(tmp_path / "link.box", "w") as tar:
        for member_file in (file,):
            with tarfile.open(member_file) as src:
                for m in src.getmembers():
                    tar.addfile(m, src.extractfile(m))
        tar.addfile(link)
    return tmp_path / "link.box"


@pytest.mark.parametrize("make, error", [
    (lambda t: _make_box(t, extra={"../escape": b"x"}), "unsafe path '../escape'"),
    (lambda t: _make_box(t, extra={"/etc/evil": b"x"}), "unsafe path '/etc/evil'"),
    (_symlink_box, "'evil' is a link or special file"),
    (lambda t: _make_box(t, skip=("box.img",)), "no box.img"),
    (lambda t: _make_box(t, skip=("metadata.json",)), "metadata.json is missing"),
    (lambda t: _make_box(t, metadata="{oops"), "not valid JSON"),
    (lambda t: _make_box(t, metadata={"provider": "virtualbox"}), "provider is 'virtualbox'"),
    (lambda t: _make_box(t, metadata={"provider": "libvirt", "format": "raw"}), "format is 'raw'"),
    (lambda t: _make_box(t, metadata={"provider": "libvirt", "format": "qcow2", "virtual_size": 0}),
     "virtual_size 0 GiB does not match"),
    (lambda t: _make_box(t, image=_write(t / "raw.img", b"\0" * 65536)), "is 'raw', expected qcow2"),
    (lambda t: _make_box(t, image=_qcow2(t / "child.qcow2", backing=_qcow2(t / "base.qcow2"))), "has a backing file"),
    (lambda t: _write(t / "junk.box", b"this is not a tar file at all" * 100), "not a readable Vagrant box"),
])
def test_import_rejects_bad_box_files_and_leaves_nothing(tmp_path: Path, store: BoxStore, key: Path, make,
                                                         error: str) -> None:
    file = make(tmp_path)
    with pytest.raises(ConfigError, match=error):
        store.import_box(file, "bad", ssh_key=key)
    assert _entries(store) == []
    assert not (tmp_path / "escape").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_import_needs_a_key_when_vagrant_is_absent(tmp_path: Path, store: BoxStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boxes, "VAGRANT_KEY_GLOBS", (str(tmp_path / "nowhere" / "vagrant"),))
    with pytest.raises(ConfigError, match="--ssh-key"):
        store.import_box(_make_box(tmp_path), "nokey")
    assert _entries(store) == []


def test_import_uses_the_vagrant_insecure_key_when_installed(tmp_path: Path, store: BoxStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gem_key = tmp_path / "gems" / "vagrant-2.3.4" / "keys" / "vagrant"
    gem_key.parent.mkdir(parents=True)
    gem_key.write_text(FAKE_PRIVATE_KEY.replace("OPENSSH", "RSA"))
    monkeypatch.setattr(boxes, "VAGRANT_KEY_GLOBS", (str(tmp_path / "gems" / "vagrant-*" / "keys" / "vagrant"),))
    box = store.import_box(_make_box(tmp_path), "vag")
    assert box.ssh_user == "vagrant"
    assert box.ssh_key.read_text() == gem_key.read_text()


def test_import_rejects_a_file_that_is_not_a_private_key(tmp_path: Path, store: BoxStore) -> None:
    public = _write(tmp_path / "id.pub", b"ssh-ed25519 AAAA me@host\n")
    with pytest.raises(ConfigError, match="not a private SSH key"):
        store.import_box(_make_box(tmp_path), "pub", ssh_key=public)


def test_import_duplicate_and_missing_file(tmp_path: Path, store: BoxStore, key: Path) -> None:
    file = _make_box(tmp_path)
    store.import_box(file, "dup", ssh_key=key)
    with pytest.raises(ConfigError, match="already exists"):
        store.import_box(file, "dup", ssh_key=key)
    with pytest.raises(ConfigError, match="does not exist"):
        store.import_box(tmp_path / "missing.box", "other", ssh_key=key)
    assert _entries(store) == ["dup"]


# -- CLI ----------------------------------------------------------------------------------------

def _run(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "state"), "box", *args])


def test_cli_build_list_remove(tmp_path: Path, recipes: Path) -> None:
    result = _run(tmp_path, "build", "fake", "--name", "viacli")
    assert result.exit_code == 0, result.output
    listed = _run(tmp_path, "list", "--json")
    assert listed.exit_code == 0
    assert [b["name"] for b in json.loads(listed.output)] == ["viacli"]
    assert "viacli" in _run(tmp_path, "list").output
    assert _run(tmp_path, "remove", "viacli").exit_code == 0
    assert json.loads(_run(tmp_path, "list", "--json").output) == []


def test_cli_errors_are_one_line(tmp_path: Path, recipes: Path, key: Path) -> None:
    bad = _make_box(tmp_path, metadata={"provider": "virtualbox"})
    result = _run(tmp_path, "import", str(bad), "--name", "bad", "--ssh-key", str(key))
    assert result.exit_code == 2
    assert "provider is 'virtualbox'" in result.output and "Traceback" not in result.output
    missing = _run(tmp_path, "remove", "ghost")
    assert missing.exit_code == 3 and "vmsandbox box build tiny" in missing.output
    broken = _run(tmp_path, "build", "broken")
    assert broken.exit_code == 1 and "disk full" in broken.output
