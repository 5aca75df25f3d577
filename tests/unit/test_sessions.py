"""SessionPool's rule for keeping a session when a sandbox's endpoint changed."""
from pathlib import Path
from types import SimpleNamespace

from vmsandbox.providers import Endpoint
from vmsandbox.sessions import _repinned

OLD = Endpoint("127.0.0.1", 20001, "root", Path("/k"), "ssh-ed25519 AAAAold")
NEW = Endpoint("127.0.0.1", 20001, "root", Path("/k"), "ssh-ed25519 AAAAnew comment")


def test_a_session_re_pinned_to_the_rotated_key_stays_open():
    assert _repinned(OLD, NEW, SimpleNamespace(host_key="ssh-ed25519 AAAAnew"))


def test_anything_else_opens_a_new_session():
    assert not _repinned(OLD, NEW, SimpleNamespace(host_key="ssh-ed25519 AAAAold"))   # not re-pinned
    moved = Endpoint("127.0.0.1", 20002, "root", Path("/k"), NEW.host_key)
    assert not _repinned(OLD, moved, SimpleNamespace(host_key=NEW.host_key))          # another port
    assert not _repinned(OLD, SimpleNamespace(container="c1"), SimpleNamespace())     # another provider's
    assert not _repinned(OLD, Endpoint("127.0.0.1", 20001, "root", Path("/k"), None), SimpleNamespace(host_key=None))
