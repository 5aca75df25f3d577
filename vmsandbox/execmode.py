"""How a command starts in a guest so that a timeout can kill its whole process tree: the exec
modes, the probe that picks one per guest image, the line a command prints first (its kill
handle), the kill command for that handle, and where a sandbox's mode is remembered.

Modes, cheapest first (measured: docs/benchmarks.md, "Exec wrapper"):

- ``leader``: the login shell already leads its own process group (OpenSSH calls setsid for each
  session). The command prints ``$$`` and evals the script: builtins only, nothing extra runs.
- ``cgroup``: the login shell shares its server's per-connection group (dropbear), so killing
  that group would kill the server; but it runs as root on cgroup v2 with ``cgroup.kill``. The
  shell moves itself into a free slot cgroup (``/sys/fs/cgroup/vmsandbox/N``: a builtin
  redirect, no fork) and a timeout writes that slot's ``cgroup.kill``, which kills everything
  in it, even what double-forked or called setsid. Slots are made by the first command after a
  boot (cgroup v2 mounted with ``favordynmods`` when the guest has not mounted it: moving a
  process then costs 0.15 ms instead of ~10 ms under TCG). A slot still holding an earlier
  command's background processes is skipped, so a later timeout never kills them.
- ``setsid``: ``exec setsid sh -c ...``: a new session, two extra execs (~5 ms under TCG).
- ``fork``: any POSIX guest: ``setsid`` in a forked child if it exists, else only the shell's
  pid can be killed.

A mode depends on the guest image only (SSH server, shell, kernel), so it is probed once per
sandbox and kept in the sandbox's state directory (``exec-mode``); a rollback keeps it, a clone
inherits its source's. Every mode falls back at run time: a cgroup command that finds no usable
slot runs as ``setsid`` does.
"""
from __future__ import annotations

import os
import random
import shlex
from pathlib import Path
from typing import Callable

from .perms import write_private

MODES = ("leader", "cgroup", "setsid", "fork")
MODE_FILE = "exec-mode"

MARK = b"\x1evmsandbox-"             # a kill handle line: MARK + b"pgid:123\n" or b"cgroup:7\n"
_PRINT_PGID = """printf '\\036vmsandbox-pgid:%s\\n' $$"""
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_DIR = f"{CGROUP_ROOT}/vmsandbox"
CGROUP_SLOTS = 32                     # slot cgroups per guest (each costs a few KiB of kernel memory)
_TRIES = 4                            # slots one command tries before it falls back to setsid

# Runs SCRIPT (passed as $1) in a new session that first prints its pid (= its process-group id)
# after a marker. setsid runs as a child of the outer shell, never exec'd: a process-group leader
# would make setsid fork and return at once. `eval "shift; $1"` keeps a syntax error in SCRIPT
# after the marker and clears $1 before SCRIPT runs.
_SESSION = """'printf "\\036vmsandbox-pgid:%s\\n" $$; eval "shift; $1"' sh"""
FORK_WRAPPER = (f"if command -v setsid >/dev/null; then setsid sh -c {_SESSION} {{script}}; "
                f"else sh -c {_SESSION} {{script}}; fi; exit $?")
EXEC_WRAPPER = f"exec setsid sh -c {_SESSION} {{script}}"
LEADER_WRAPPER = f"{_PRINT_PGID}; eval {{script}}"

# Once per boot, as root: cgroup v2 where the guest did not mount it, and the slots (never plain
# directories: where no cgroup v2 is mounted, nothing is made and commands fall back to setsid).
_CGROUP_SETUP = (f"([ -e {CGROUP_ROOT}/cgroup.procs ] || mount -t cgroup2 -o favordynmods cgroup2 {CGROUP_ROOT} "
                 f"|| mount -t cgroup2 cgroup2 {CGROUP_ROOT}; [ -e {CGROUP_ROOT}/cgroup.procs ] && mkdir -p {CGROUP_DIR} "
                 f"&& cd {CGROUP_DIR} "
                 f"&& mkdir -p {' '.join(map(str, range(CGROUP_SLOTS)))})")
# Claims the first free slot of the list given: the shell joins it and stays if it is alone there
# (else it leaves: an earlier command's background processes, or a command of another
# connection, hold it). A slot that cannot be joined makes the slots (first command after a
# boot) and is tried again. The script runs outside the loop (a `break` in it must not reach
# ours), with our variables unset.
_CGROUP_WRAPPER = (
    f"_vms_k=; for _vms_s in {{slots}}; do _vms_d={CGROUP_DIR}/$_vms_s; "
    f"echo $$ >$_vms_d/cgroup.procs || {{{{ {_CGROUP_SETUP} >/dev/null 2>&1; echo $$ >$_vms_d/cgroup.procs; }}}} "
    "|| break; _vms_n=0; while read -r _vms_p; do [ $_vms_p = $$ ] || _vms_n=1; done <$_vms_d/cgroup.procs; "
    f"[ $_vms_n = 0 ] && {{{{ _vms_k=$_vms_s; break; }}}}; echo $$ >{CGROUP_ROOT}/cgroup.procs; "
    "done 2>/dev/null; "
    "if [ -n \"$_vms_k\" ]; then printf '\\036vmsandbox-cgroup:%s\\n' $_vms_k; "
    "eval \"unset _vms_k _vms_s _vms_d _vms_n _vms_p; \"{script}; "
    f"else {EXEC_WRAPPER}; fi")

# What the probe prints: the shell's stat line (pid, pgid), whether it is root, whether setsid
# exists; for a shell that does not lead its group and runs as root, it also makes the cgroup
# slots and says whether cgroup.kill is there (it needs Linux 5.14).
PROBE = ("read -r _p _c _s _pp _g _r </proc/$$/stat && echo \"stat $_p $_g\"; "
         "command -v setsid >/dev/null && echo has-setsid; "
         f"if [ \"$_p\" != \"$_g\" ] && [ \"$(id -u)\" = 0 ]; then {_CGROUP_SETUP} >/dev/null 2>&1; "
         f"[ -e {CGROUP_DIR}/0/cgroup.kill ] && echo has-cgroup-kill; fi; exit 0")


def choose(probe_output: str) -> str:
    """The mode for a guest, from what ``PROBE`` printed there (a login shell's greeting may come
    first: only whole lines count)."""
    lines = probe_output.splitlines()
    stat = next((fields for fields in map(str.split, lines)
                 if len(fields) == 3 and fields[0] == "stat" and fields[1].isdigit() and fields[2].isdigit()), None)
    if stat is None:
        return "fork"                 # no /proc to tell: the wrapper that works anywhere
    if stat[1] == stat[2]:
        return "leader"
    if "has-cgroup-kill" in lines:
        return "cgroup"
    if "has-setsid" in lines:
        return "setsid"
    return "fork"


class Wrapper:
    """Builds the command line for one mode; ``slots`` (cgroup mode) spreads one connection's
    concurrent commands over different slots, starting at a random one per connection."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown exec mode {mode!r}")
        self.mode = mode
        self._base = random.randrange(CGROUP_SLOTS)

    def command(self, script: str, lane: int = 0) -> str:
        """The guest command line that runs ``script`` (``lane``: which of the connection's
        concurrent commands this is, 0..n-1)."""
        quoted = shlex.quote(script)
        if self.mode == "leader":
            return LEADER_WRAPPER.format(script=quoted)
        if self.mode == "setsid":
            return EXEC_WRAPPER.format(script=quoted)
        if self.mode == "fork":
            return FORK_WRAPPER.format(script=quoted)
        slots = [(self._base + lane + 8 * k) % CGROUP_SLOTS for k in range(_TRIES)]
        return _CGROUP_WRAPPER.format(slots=" ".join(map(str, slots)), script=quoted)


def kill_command(kind: str, value: int) -> str:
    """The guest command that kills a command by its handle (``kind`` "pgid" or "cgroup")."""
    if kind == "cgroup":
        return f"echo 1 >{CGROUP_DIR}/{int(value)}/cgroup.kill"
    return f"kill -9 -{int(value)} 2>/dev/null || kill -9 {int(value)}"


def parse_handle(line: bytes) -> tuple[str, int] | None:
    """``b"pgid:123"`` -> ("pgid", 123); anything else -> None (the guest writes this line)."""
    kind, _, value = line.partition(b":")
    if kind in (b"pgid", b"cgroup") and value.isdigit() and len(value) < 12:
        return kind.decode(), int(value)
    return None


# ------------------------------------------------------------------ per-sandbox memory

def load(sandbox_dir: Path) -> str | None:
    """The mode recorded for a sandbox (None: not probed yet, or unreadable)."""
    try:
        mode = (Path(sandbox_dir) / MODE_FILE).read_text().strip()
    except OSError:
        return None
    return mode if mode in MODES else None


def save(sandbox_dir: Path, mode: str) -> None:
    """Record a sandbox's mode; never recreates the directory of a sandbox destroyed meanwhile."""
    if mode not in MODES:
        raise ValueError(f"unknown exec mode {mode!r}")
    path = Path(sandbox_dir) / MODE_FILE
    tmp = path.with_name(f".{MODE_FILE}.{os.getpid()}")
    try:
        write_private(tmp, mode + "\n")          # 0600, as everything in the state directory
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def remembered(sandbox_dir: Path) -> tuple[str | None, Callable[[str], None]]:
    """(the sandbox's recorded mode or None, a callback that records a probed one): the two
    arguments ``SSHSession(exec_mode=..., on_exec_mode=...)`` takes, e.g. in a CLI process that
    opens its own session: ``mode, remember = remembered(layout.sandbox_dir(sid))``."""
    return load(sandbox_dir), lambda mode: save(sandbox_dir, mode)


__all__ = ["MODES", "choose", "Wrapper", "kill_command", "parse_handle", "load", "save", "remembered", "PROBE"]
