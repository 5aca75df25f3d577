"""Value types shared across modules: sandbox lifecycle states and their transitions, the typed
records of the state store (sandboxes, layers, snapshots) and the result of a command.

Frozen dataclasses with no behaviour beyond small derived properties; every record round-trips
through plain JSON (``to_dict``/``from_dict``), so it can cross a process or a host.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class SandboxState(str, enum.Enum):
    """Lifecycle of a sandbox. ``ALLOWED`` says which operation may run in which state."""
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ROLLING_BACK = "rolling_back"
    BROKEN = "broken"          # an operation failed half-way; destroy or emergency_shutdown
    DESTROYING = "destroying"

    def __str__(self) -> str:
        return self.value


S = SandboxState
#: operation -> states it may start from
ALLOWED: dict[str, frozenset] = {
    "execute": frozenset({S.RUNNING}),
    "copy": frozenset({S.RUNNING}),
    "snapshot": frozenset({S.RUNNING, S.STOPPED, S.PAUSED}),
    "rollback": frozenset({S.RUNNING, S.STOPPED, S.PAUSED, S.BROKEN}),
    "start": frozenset({S.STOPPED}),
    "stop": frozenset({S.RUNNING, S.PAUSED}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "throttle": frozenset({S.RUNNING, S.PAUSED}),
    "unthrottle": frozenset({S.RUNNING, S.PAUSED}),
    "emergency_shutdown": frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.BROKEN, S.ROLLING_BACK, S.CREATING}),
    "destroy": frozenset(set(S)),
}


class _Record:
    """JSON round trip for the frozen record dataclasses below."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ExecutionResult(_Record):
    """What a command did. ``exit_code`` is None when it was killed by the timeout.

    ``assessment`` is the policy's verdict on the command (``RiskAssessment.to_dict()``), when the
    policy ran."""
    stdout: str
    stderr: str
    exit_code: Optional[int]
    duration: float
    timed_out: bool = False
    truncated: bool = False
    command: str = ""
    sandbox: str = ""               # the sandbox's name
    started_at: float = 0.0         # wall clock (time.time())
    assessment: Optional[dict] = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class SandboxInfo(_Record):
    """A sandbox as recorded in the state store. Names are unique per state directory;
    ``host`` says which machine's state directory holds it (``ref`` = host/name)."""
    id: str
    name: str
    state: SandboxState
    box: str
    domain: str                     # the provider's machine name (a libvirt domain, a container...)
    ssh_port: int                   # 127.0.0.1 port forwarded to the guest's SSH (VM providers)
    cpu: str
    memory: str
    disk: str
    network_mode: str
    persistent: bool
    created_at: float
    last_used_at: float
    reason: str = ""                # why it is paused/stopped/broken, when it is
    provider: str = "libvirt"
    host: str = ""
    uuid: str = ""
    mac: str = ""
    active_layer: str = ""          # the layer the machine writes to
    generation: int = 0             # bumped by each rollback (new machine name, console log)
    ttl_seconds: float = 3600.0
    host_key: str = ""              # pinned SSH host key learnt on first use ("" = the box's)
    throttled: Optional[float] = None
    throttle_reason: str = ""
    cloned_from: str = ""           # snapshot id
    labels: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.name}" if self.host else self.name

    @classmethod
    def from_dict(cls, data: dict) -> "SandboxInfo":
        data = dict(data)
        data["state"] = SandboxState(data["state"])
        return super().from_dict(data)


@dataclass(frozen=True)
class Layer(_Record):
    """One node of the layer tree. ``ref`` is the provider's own reference (a qcow2 path for
    libvirt); parent None: the layer stands on its box. A frozen layer never changes."""
    id: str
    ref: str
    parent: Optional[str]
    box: str
    owner: str                      # sandbox that wrote it
    frozen: bool
    created_at: float


@dataclass(frozen=True)
class Snapshot(_Record):
    """A snapshot: a frozen layer plus, optionally, the guest's memory (``memory_ref``, the
    provider's reference to its saved state)."""
    id: str
    name: str
    sandbox_id: str
    layer: str
    memory_ref: Optional[str]
    cpu: str
    memory: str
    created_at: float
    metadata: dict = field(default_factory=dict)
    pinned: bool = False            # kept by every retention rule (age, count, memory size)

    @property
    def has_memory(self) -> bool:
        return bool(self.memory_ref)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "has_memory": self.has_memory}


@dataclass(frozen=True)
class Standby(_Record):
    """A warm standby (``standby.py``): a guest restored from snapshot ``snapshot_id``'s memory and
    paused, on its own layer (``layer``, standing on the snapshot's), port and identity; a rollback
    (``kind`` 'rollback', of sandbox ``sandbox_id``) or a clone (``kind`` 'pool') takes it over.
    ``state``: 'starting' (being made; ``layer`` empty) or 'ready'."""
    id: str
    snapshot_id: str
    kind: str
    sandbox_id: str                 # the snapshot's sandbox
    state: str
    domain: str
    uuid: str
    mac: str
    ssh_port: int
    layer: str
    memory_bytes: int               # guest memory it holds (what the caps count)
    network_mode: str
    console_log: str
    created_at: float
    host_key: str = ""              # its own pinned key (pool standbys get one before they pause)
