"""The ansible view of sandboxes: labels on sandboxes, and the inventory built from them.

Owns sandbox labels (``key=value`` pairs kept in the sandbox record) and the ansible inventory:
one host per sandbox, named after it, with the connection variables of ``client_config`` (the
ProxyCommand ``vmsandbox ssh-proxy NAME`` finds the sandbox's current port at every connection, so
the inventory stays right after a rollback or a restart); groups ``box_<box>``,
``label_<key>_<value>`` and ``state_<state>``. ``inventory_json`` is the ansible script protocol
(``--list``: groups plus ``_meta.hostvars``; ``--host NAME``: one host's variables).
"""
from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Iterable, Mapping, Optional

from .client_config import client_settings
from .exceptions import ConfigError, SandboxError
from .models import SandboxInfo, SandboxState

LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
#: states whose sandboxes are listed (a destroying one is on its way out)
_LISTED = frozenset(set(SandboxState) - {SandboxState.DESTROYING})


def parse_labels(items: Iterable[str]) -> tuple[dict, list]:
    """``["k=v", "k2-"]`` -> ({"k": "v"}, ["k2"]): labels to set and labels to remove.

    Raises ConfigError naming the bad item."""
    sets, removes = {}, []
    for item in items:
        if item.endswith("-") and "=" not in item:
            key, value = item[:-1], None
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise ConfigError(f"{item!r} is not KEY=VALUE (or KEY- to remove)", "label")
        if not LABEL_KEY_RE.fullmatch(key):
            raise ConfigError(f"{key!r} is not a label key (a-z, 0-9, _; starting with a letter)", "label")
        if value is None:
            removes.append(key)
        elif not LABEL_VALUE_RE.fullmatch(value):
            raise ConfigError(f"{value!r} is not a label value (up to 63 of A-Z a-z 0-9 _ . -)", f"label.{key}")
        else:
            sets[key] = value
    return sets, removes


def labels_of(info: SandboxInfo) -> dict:
    return dict(info.labels or {})


def set_labels(core, sandbox: str, labels: Mapping[str, str] | None = None,
               remove: Iterable[str] = ()) -> dict:
    """Set and remove labels of a sandbox (by name or id); returns its labels. Audited."""
    sets, _ = parse_labels(f"{k}={v}" for k, v in (labels or {}).items())
    _, drops = parse_labels(f"{k}-" for k in remove)
    return core.label(sandbox, sets, drops)


def client_config_file(core, config_path: Optional[str] = None) -> str:
    """A config file that gives ``vmsandbox ssh-proxy`` the same settings as ``core``.

    The ProxyCommand runs a new vmsandbox process. A core built from a dict has no file, so its
    effective config is written to ``<state_dir>/client-config.json`` (0600; YAML reads JSON)."""
    if config_path:
        return os.path.abspath(config_path)
    path = Path(core.state_dir) / "client-config.json"
    text = json.dumps(core.config.to_dict(), indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return str(path)
    except OSError:
        pass
    tmp = path.with_name(f".client-config.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return str(path)


def _group(*parts: str) -> str:
    """An ansible group name: letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))


def host_vars(core, info: SandboxInfo, config_path: Optional[str] = None) -> dict:
    """Connection and descriptive variables of one sandbox."""
    settings = client_settings(core, info.name, client_config_file(core, config_path))
    return {
        **settings.ansible_vars(),
        # The ProxyCommand ignores the port; it still keeps OpenSSH's ControlPath (a hash of host,
        # port and user) apart between sandboxes, which would otherwise all be root@127.0.0.1:22.
        "ansible_port": info.ssh_port,
        "ansible_python_interpreter": "auto_silent",
        "ansible_pipelining": True,          # one SSH round trip per task instead of four
        "vmsandbox_id": info.id,
        "vmsandbox_box": info.box,
        "vmsandbox_state": info.state.value,
        "vmsandbox_labels": labels_of(info),
    }


def build_inventory(core, config_path: Optional[str] = None, names: Optional[Iterable[str]] = None) -> dict:
    """The ``--list`` document for every sandbox (or only ``names``)."""
    wanted = set(names) if names is not None else None
    groups: dict[str, set] = {}
    hostvars: dict[str, dict] = {}
    for info in core.list_sandboxes():
        if info.state not in _LISTED or (wanted is not None and info.name not in wanted):
            continue
        try:
            hostvars[info.name] = host_vars(core, info, config_path)
        except SandboxError:
            continue            # no host key yet (still creating) or its box is gone: not reachable
        groups.setdefault(_group("box", info.box), set()).add(info.name)
        groups.setdefault(_group("state", info.state.value), set()).add(info.name)
        for key, value in labels_of(info).items():
            groups.setdefault(_group("label", key, value), set()).add(info.name)
    doc: dict = {name: {"hosts": sorted(hosts)} for name, hosts in sorted(groups.items())}
    doc["all"] = {"children": sorted(groups) + ["ungrouped"]}
    doc["_meta"] = {"hostvars": hostvars}
    return doc


__all__ = ["build_inventory", "client_config_file", "host_vars", "labels_of", "parse_labels", "set_labels"]
