"""Value types shared across modules: sandbox lifecycle states and their transitions, records,
and the result of a command. Frozen dataclasses; no behaviour beyond small derived properties."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


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
    "emergency_shutdown": frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.BROKEN, S.ROLLING_BACK, S.CREATING}),
    "destroy": frozenset(set(S)),
}


@dataclass(frozen=True)
class ExecutionResult:
    """What a command did. ``exit_code`` is None when it was killed by the timeout."""
    stdout: str
    stderr: str
    exit_code: Optional[int]
    duration: float
    timed_out: bool = False
    truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as recorded in the state store."""
    id: str
    name: str
    state: SandboxState
    box: str
    domain: str
    ssh_port: int
    cpu: str
    memory: str
    disk: str
    network_mode: str
    persistent: bool
    created_at: float
    last_used_at: float
    reason: str = ""            # why it is paused/stopped/broken, when it is
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["state"] = self.state.value
        return d
