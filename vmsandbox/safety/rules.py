"""Rule packs of the command policy: every rule id, its level, and the checks that raise it.

Input is a parsed ``Script`` (see ``parser.py``); output is a list of ``Finding``. Each check
looks at normalised ``SimpleCommand`` records (wrappers stripped, quotes removed), the
redirects, the function definitions, the loops, the variable assignments, or the inline program
of an interpreter. Operands are resolved against the working directory and symlinks the parser
tracked, and globs against the sensitive paths they can match (``paths``). Pure: no I/O. ``RULES`` is the
catalogue that ``docs/policy.md`` documents and that ``safety.validation.allow`` may name.
"""
from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from .models import Finding, RiskLevel
from .words import option_values
from .parser import (SHELLS, STDIN_SCRIPT_RUNNERS, Loop, Redirect, Script, SimpleCommand, Word, find_name_filter,
                     find_roots, is_interpreter, reads_code_from_stdin)

L, M, H, C = RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH, RiskLevel.CRITICAL


@dataclass(frozen=True)
class Rule:
    id: str
    level: RiskLevel
    summary: str


RULES: dict[str, Rule] = {r.id: r for r in [
    Rule("parse.error", H, "the command is not valid shell syntax"),
    Rule("parse.too-complex", H, "the command nests substitutions or subshells too deeply to analyse"),
    Rule("evasion.dynamic-command", H, "the command name is a variable or substitution, unknown until it runs"),
    Rule("evasion.obfuscated-command", H, "the command name is hidden with ANSI-C escapes, $IFS, brace expansion or a variable"),
    Rule("evasion.nesting-too-deep", H, "scripts nested (sh -c inside eval inside ...) deeper than the parser follows"),
    Rule("evasion.glob-command", H, "the command name is a glob (/bin/r?, /usr/bin/[r]m) that matches a known program"),
    Rule("evasion.history", H, "tampering with shell history (history -c, unset HISTFILE, HISTSIZE=0, deleting ~/.bash_history)"),
    Rule("fs.delete-root", C, "recursive delete of / or everything under it"),
    Rule("fs.delete-system", C, "delete or move of a system tree (/etc, /usr, /bin, /boot, /var, ...)"),
    Rule("fs.delete-home", C, "recursive delete of a home directory (~, $HOME, /root, /home/USER)"),
    Rule("fs.delete-system-file", H, "delete of a single file inside a system tree"),
    Rule("fs.delete-variable-root", H, "recursive delete of \"$VAR/\" or /$VAR: deletes / when the variable is empty"),
    Rule("fs.overwrite-system", H, "write into a boot, init, login or binary path (/etc/profile, /boot, /usr/bin, ...)"),
    Rule("fs.recursive-delete", M, "recursive delete inside the work tree (ordinary, monitored)"),
    Rule("disk.write-device", C, "write to a block device or raw memory (dd of=/dev/sda, > /dev/vda, /dev/mem)"),
    Rule("disk.format", C, "format, wipe or repartition a device (mkfs*, wipefs, fdisk, parted, blkdiscard)"),
    Rule("disk.format-image", M, "mkfs on an image file in the work tree (ordinary, monitored)"),
    Rule("perm.recursive-system", C, "recursive chmod/chown/chgrp on /, a system tree or home"),
    Rule("perm.system", H, "chmod/chown of / or a system tree itself"),
    Rule("proc.fork-bomb", C, "a function that calls itself in a pipeline or in the background (fork bomb)"),
    Rule("proc.spawn-loop", C, "a loop that never ends (while true, for ((;;))) starting background processes"),
    Rule("vcs.force-push", H, "git push that rewrites or deletes remote history (--force, +refspec, --mirror, --delete)"),
    Rule("vcs.delete-repo", H, "recursive delete of a .git directory (the repository's history)"),
    Rule("persist.crontab", H, "removing or replacing a crontab (crontab -r, crontab FILE)"),
    Rule("sandbox.swap", H, "turning swap off or on (swapoff, swapon)"),
    Rule("remote.pipe-to-interpreter", C, "downloaded content piped or redirected into a shell or interpreter"),
    Rule("remote.substitution", C, "downloaded content run through $(...), <(...) or eval"),
    Rule("remote.download-exec", H, "a file downloaded and then executed in the same command"),
    Rule("net.download", M, "a download (curl, wget) to a file or stdout (ordinary, monitored)"),
    Rule("decode.to-shell", C, "decoded or escaped text (base64 -d, xxd -r, printf '\\x..') run by a shell"),
    Rule("revshell.dev-tcp", C, "a /dev/tcp or /dev/udp socket (bash reverse shell)"),
    Rule("revshell.netcat-exec", C, "netcat/ncat with -e/-c/--sh-exec (serves a shell)"),
    Rule("revshell.socat-exec", C, "socat with EXEC: or SYSTEM: (serves a shell)"),
    Rule("revshell.pipe", C, "a shell and a network tool in one pipeline (nc ... | sh)"),
    Rule("sandbox.kill-init", C, "kill of PID 1 or of every process (kill -9 -1, killall5)"),
    Rule("sandbox.kill-ssh", C, "stopping or killing the SSH server (sshd, dropbear) that runs the sandbox"),
    Rule("sandbox.power", C, "shutdown, reboot, halt, poweroff, init 0/6, systemctl poweroff"),
    Rule("sandbox.firewall-flush", C, "flushing firewall rules or setting a DROP policy (iptables -F, nft flush ruleset)"),
    Rule("sandbox.firewall", H, "changing firewall rules"),
    Rule("sandbox.kernel-module", C, "loading or unloading kernel modules, kexec (insmod, modprobe, rmmod)"),
    Rule("sandbox.sysrq", C, "magic SysRq (/proc/sysrq-trigger, kernel.sysrq)"),
    Rule("sandbox.kernel-param", H, "changing kernel parameters (sysctl -w, writes to /proc/sys)"),
    Rule("sandbox.network-down", H, "taking the network down (ip link set down, ifdown, ip route flush)"),
    Rule("sandbox.unmount", H, "unmounting or remounting the root filesystem"),
    Rule("cred.shadow-read", H, "reading password hashes (/etc/shadow, /etc/gshadow)"),
    Rule("cred.account-write", C, "writing account databases (/etc/passwd, /etc/shadow, /etc/group) or a UID 0 user"),
    Rule("cred.sudoers", C, "editing sudoers (/etc/sudoers, /etc/sudoers.d, visudo)"),
    Rule("cred.privilege-edit", H, "granting privileges: group sudo/wheel, passwd, chpasswd"),
    Rule("cred.setuid", H, "setting setuid/setgid bits or file capabilities"),
    Rule("cred.ssh-keys", H, "reading SSH private keys or writing authorized_keys"),
    Rule("interp.delete", C, "inline interpreter code deleting /, a system tree or home"),
    Rule("interp.fork-bomb", C, "inline interpreter code forking in a loop"),
    Rule("interp.reverse-shell", C, "inline interpreter code connecting a socket to a shell"),
    Rule("interp.remote-code", C, "inline interpreter code running downloaded code"),
    Rule("interp.decode-exec", C, "inline interpreter code running decoded code"),
    Rule("interp.device-write", C, "inline interpreter code opening a block device or /dev/mem"),
    Rule("interp.sandbox-kill", C, "inline interpreter code killing PID 1, rebooting or using sysrq"),
    Rule("interp.credentials", H, "inline interpreter code touching shadow/sudoers or setuid"),
    Rule("user.pattern", C, "a pattern from safety.validation.patterns (level configurable)"),
]}

# --- path classes ---------------------------------------------------------------------------------

SYSTEM_TREES = frozenset("etc usr bin sbin lib lib32 lib64 libx32 boot dev proc sys var opt srv snap "
                         "home root run".split())
SYSTEM_SUBTREES = frozenset({"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libexec",
                             "/usr/share", "/usr/include", "/usr/local", "/var/lib", "/var/log", "/var/spool",
                             "/etc/ssh", "/etc/pam.d", "/etc/systemd", "/etc/init.d", "/lib/modules",
                             "/usr/lib/modules", "/etc/security", "/etc/sudoers.d"})
_DEVICE_RE = re.compile(r"^/dev/(sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|dm-\d|mapper/|md\d|loop\d"
                        r"|disk/|sr\d|nbd\d|mem$|kmem$|port$|root$|fb\d)")
_CRED_FILES = frozenset({"/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/master.passwd"})
_SHADOW_FILES = frozenset({"/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-",
                           "/etc/security/opasswd", "/etc/master.passwd"})
_SUDOERS_RE = re.compile(r"^/etc/sudoers(\.d(/|$)|$|\.tmp$)")
_CRITICAL_FILE_RE = re.compile(r"^/(boot/|bin/|sbin/|usr/s?bin/|lib(64)?/|usr/lib(64)?/|etc/(profile|bash\.bashrc"
                               r"|environment|crontab|cron\.|init\.d/|inittab|rc|ld\.so\.preload|ld\.so\.conf"
                               r"|pam\.d/|ssh/|systemd/|fstab|hosts\.allow|hosts\.deny|modules|modprobe\.d/|anacrontab)|var/spool/cron/)")
_SSH_PRIVATE_RE = re.compile(r"(^|/)\.ssh/id_[A-Za-z0-9_]+$|^/etc/ssh/ssh_host_[a-z0-9]+_key$|(^|/)\.ssh/identity$")
_AUTHORIZED_KEYS_RE = re.compile(r"(^|/)\.ssh/authorized_keys2?$")
_SYSRQ_RE = re.compile(r"^/proc/(sysrq-trigger|sys/kernel/sysrq)$")
_GLOB_CHARS = set("*?[")
_HOME_PREFIX_RE = re.compile(r"^(\$HOME|\$\{HOME\}|~[A-Za-z0-9_.-]*)(?=/|$)")
_VAR_PREFIX_RE = re.compile(r"^(\$[A-Za-z_][A-Za-z0-9_]*|\$\{[^}]*\})")


def resolve_path(text: str) -> str:
    """Normalise a path for matching: ``$HOME``/``~`` -> ``~``, ``//usr/../etc/`` -> ``/etc``."""
    t = text.strip()
    m = _HOME_PREFIX_RE.match(t)
    if m:
        user = m.group(1)[1:] if m.group(1).startswith("~") else ""
        t = "~" + ("/home/" + user if user and user != "root" else ("/root" if user == "root" else "")) + t[m.end():]
        if t.startswith("~/home/") or t.startswith("~/root"):
            t = t[1:]
    if t.startswith("/"):
        t = posixpath.normpath(t)
        if t.startswith("//"):
            t = "/" + t.lstrip("/")
    elif t.startswith("~"):
        rest = posixpath.normpath(t[1:]) if len(t) > 1 else ""
        t = "~" + ("" if rest in ("", ".", "/") else rest)
    return t


def classify(text: str) -> Optional[str]:
    """'root', 'system', 'home', 'device' or None for a path argument (possibly a glob)."""
    t = resolve_path(text)
    if _DEVICE_RE.match(t):
        return "device"
    if t.startswith("~"):
        rest = t[1:].strip("/")
        return "home" if rest in ("", "*", ".*", "{*,.*}") or set(rest) <= set("*.?/") else None
    if not t.startswith("/"):
        # ../.. from the work directory: its parents (home, then /); ../build is ordinary
        up = [p for p in t.split("/") if p and p != "."]
        while up and set(up[-1]) <= set("*?.") and up[-1] != "..":
            up.pop()
        if up and all(p == ".." for p in up):
            return "root" if len(up) >= 2 else "home"
        return None
    parts = [p for p in t.split("/") if p]
    if not parts:
        return "root"
    if set(parts[0]) & _GLOB_CHARS:
        # /*, /?*, /[a-z]* match every top-level directory; /[u]sr, /e?c are resolved by glob_paths
        hits = sum(fnmatch.fnmatchcase(n, parts[0]) for n in _TOP_LEVEL)
        return "root" if hits >= 3 else None
    if parts[0] == "home" and len(parts) == 2 and not set(parts[1]) & _GLOB_CHARS:
        return "home"
    if parts[0] == "root" and (len(parts) == 1 or all(set(p) <= set("*.?") for p in parts[1:])):
        return "home"
    if parts[0] in SYSTEM_TREES:
        if len(parts) == 1 or all(set(p) <= set("*.?") for p in parts[1:]):
            return "system"
        prefix = "/" + "/".join(parts[:2])
        if prefix in SYSTEM_SUBTREES and (len(parts) == 2 or all(set(p) <= set("*.?") for p in parts[2:])):
            return "system"
    return None


_TOP_LEVEL = SYSTEM_TREES | {"tmp", "mnt", "media", "lost+found", "workspace"}
_HISTORY_RE = re.compile(r"(^|/)\.(((bash|zsh|sh|ash|ksh|mksh|fish|python|mysql|psql|sqlite|node_repl)_)?history"
                         r"|zhistory|lesshst)$|(^|/)fish/fish_history$")
_HISTORY_NAMES = (".bash_history", ".zsh_history", ".sh_history", ".history", ".zhistory")
_GIT_DIR_RE = re.compile(r"(^|/)\.git(/\*?)?$")
# Concrete paths a glob is matched against (per path component), so /etc/sha* is /etc/shadow and
# /[u]sr/lib is /usr/lib. Whatever follows a matched prefix is kept: /e?c/* -> /etc/*.
_GLOB_TARGETS = tuple(sorted({"/" + t for t in SYSTEM_TREES} | SYSTEM_SUBTREES | _SHADOW_FILES | _CRED_FILES | {
    "/etc/sudoers", "/etc/sudoers.d", "/etc/profile", "/etc/bash.bashrc", "/etc/environment", "/etc/crontab",
    "/etc/ld.so.preload", "/etc/fstab", "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ecdsa_key", "/root/.ssh/id_rsa", "/root/.ssh/id_ed25519", "/root/.ssh/authorized_keys",
    "~/.ssh/id_rsa", "~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/authorized_keys", "~/.bash_history",
    "~/.zsh_history", "/root/.bash_history", "/dev/sda", "/dev/vda", "/dev/xvda", "/dev/nvme0n1", "/dev/mem",
    "/proc/sysrq-trigger", "/boot/vmlinuz", "/boot/grub"}))


_GLOB_TARGET_PARTS = tuple(t.split("/") for t in _GLOB_TARGETS)


@functools.lru_cache(maxsize=4096)
def _glob_paths(t: str) -> tuple[str, ...]:
    parts = t.split("/")
    out: list[str] = []
    for tp in _GLOB_TARGET_PARTS:
        if len(tp) <= len(parts) and tp[0] == parts[0] and all(
                a == g or fnmatch.fnmatchcase(a, g) for a, g in zip(tp[1:], parts[1:])):
            out.append("/".join(tp + parts[len(tp):]))
    return tuple(out)


def glob_paths(text: str) -> list[str]:
    """The sensitive paths a glob can expand to (``/etc/sha*`` -> ``/etc/shadow``), with its tail."""
    return list(_glob_paths(resolve_path(text)))


def _is_git_dir(path: str) -> bool:
    """``.git``, ``x/.git/``, ``.git/*``, and dot-globs that match it (``.*``, ``.g?t``)."""
    norm = posixpath.normpath(path)
    if _GIT_DIR_RE.search(norm):
        return True
    last = norm.rsplit("/", 1)[-1]
    return last.startswith(".") and bool(_GLOB_CHARS & set(last)) and fnmatch.fnmatchcase(".git", last)


def _deref(text: str, links: tuple, follow: bool = False) -> str:
    """Follow a symlink made earlier in the line: ``ln -s / /tmp/r; rm -rf /tmp/r/`` deletes /.
    ``follow``: the operand itself is followed too (reads, writes, chmod), not only ``link/``."""
    norm = posixpath.normpath(text)
    for link, target in reversed(links):
        if norm == link and (follow or text.endswith(("/", "/."))) or norm.startswith(link + "/"):
            return target.rstrip("/") + "/" + norm[len(link):].lstrip("/")
    return text


def paths(cmd: SimpleCommand, w: Word, follow: bool = False) -> list[str]:
    """Where an operand points: against the tracked cwd, through earlier symlinks, and every
    sensitive path a glob in it can match. The first entry is the operand itself."""
    t = w.text
    if cmd.cwd and t and not t.startswith(("/", "~", "$")):
        t = posixpath.join(cmd.cwd, t)
    if cmd.links:
        t = _deref(t, cmd.links, follow)
    out = [t]
    if _GLOB_CHARS & set(t):
        out.extend(p for p in glob_paths(t) if p != t)
    return out


_CLASS_RANK = {"root": 4, "system": 3, "home": 2, "device": 1}


def _worst(cmd: SimpleCommand, w: Word, follow: bool = False) -> tuple[Optional[str], str]:
    """The most severe path class among ``paths(cmd, w)``, and the path that has it."""
    best: tuple[Optional[str], str] = (None, w.text)
    for p in paths(cmd, w, follow):
        cls = classify(p)
        if cls is not None and (best[0] is None or _CLASS_RANK[cls] > _CLASS_RANK[best[0]]):
            best = (cls, p)
    if best[0] is None:
        best = (None, paths(cmd, w, follow)[0])
    return best


def _shown(w: Word, path: str) -> str:
    return w.text if path == w.text else f"{w.text}, i.e. {path}"


def _variable_root(text: str) -> bool:
    """``/$X`` or ``"$X/"``, ``$X/*``: becomes ``/`` (or ``/*``) when the variable is empty."""
    t = text.strip()
    if t.startswith("/") and _VAR_PREFIX_RE.match(t[1:]) and not _HOME_PREFIX_RE.match(t[1:]):
        return True
    m = _VAR_PREFIX_RE.match(t)
    if m and not _HOME_PREFIX_RE.match(t):
        rest = t[m.end():]
        return rest.startswith("/") and set(rest) <= set("/*.")
    return False


# --- command helpers --------------------------------------------------------------------------------

def _flags(cmd: SimpleCommand) -> set[str]:
    """Short flags split into letters ('-rf' -> r, f) plus long flags as written."""
    out: set[str] = set()
    for a in cmd.args:
        t = a.text
        if t == "--":
            break
        if t.startswith("--"):
            out.add(t.split("=", 1)[0])
        elif t.startswith("-") and len(t) > 1:
            out.update(t[1:])
    return out


def _operands(cmd: SimpleCommand, with_value: frozenset = frozenset()) -> list[Word]:
    out: list[Word] = []
    skip = False
    ended = False
    for a in cmd.args:
        if skip:
            skip = False
            continue
        t = a.text
        if not ended and t == "--":
            ended = True
            continue
        if not ended and t.startswith("-") and len(t) > 1:
            skip = t in with_value
            continue
        out.append(a)
    return out


def _f(rule: str, word: Optional[Word] | SimpleCommand, message: str, level: Optional[RiskLevel] = None) -> Finding:
    span = word.span if word is not None else None
    return Finding(rule, level or RULES[rule].level, span, message)


_DELETE_RULES = {"root": "fs.delete-root", "system": "fs.delete-system", "home": "fs.delete-home"}
_DELETE_WHAT = {"root": "the root filesystem", "system": "a system tree", "home": "a home directory",
                "device": "a block device"}


# --- per-command checks -----------------------------------------------------------------------------

def _rm(cmd: SimpleCommand) -> Iterable[Finding]:
    flags = _flags(cmd)
    for w in _operands(cmd):
        recursive = bool(flags & {"r", "R", "--recursive"}) or w.each
        cls, path = _worst(cmd, w)
        if cls in _DELETE_RULES and (recursive or cls == "root"):
            yield _f(_DELETE_RULES[cls], w, f"'{cmd.name}' recursively deletes {_DELETE_WHAT[cls]} ({_shown(w, path)}).")
        elif cls == "device":
            yield _f("disk.write-device", w, f"'{cmd.name}' removes the device node {path}.", H)
        elif recursive and _is_git_dir(path):
            yield _f("vcs.delete-repo", w, f"Recursive delete of {_shown(w, path)}, a repository's history.")
        elif any(_HISTORY_RE.search(p) for p in paths(cmd, w)):
            yield _f("evasion.history", w, f"'{cmd.name}' deletes a shell history file ({_shown(w, path)}).")
        elif recursive and _variable_root(w.text):
            yield _f("fs.delete-variable-root", w,
                     f"Recursive delete of {w.text} removes everything under / if the variable is empty.")
        elif recursive and not w.literal and w.text.startswith(("$(", "`")):
            yield _f("fs.delete-variable-root", w, f"Recursive delete of a path computed at run time ({w.text}).")
        elif any(p.startswith("/") and _in_system(p) for p in paths(cmd, w)):
            yield _f("fs.delete-system-file", w, f"'{cmd.name}' deletes {_shown(w, path)} inside a system tree.")
        elif recursive:
            yield _f("fs.recursive-delete", w, f"Recursive delete of {w.text} (work tree).")


def _in_system(text: str) -> bool:
    t = resolve_path(text)
    parts = [p for p in t.split("/") if p]
    return bool(parts) and parts[0] in SYSTEM_TREES - {"home", "run", "var", "opt", "srv", "dev", "proc", "sys"} \
        or t.startswith(("/var/lib/dpkg", "/var/lib/apt/lists/lock"))


def _shred(cmd: SimpleCommand) -> Iterable[Finding]:
    for w in _operands(cmd, frozenset({"-n", "-s", "--iterations", "--size"})):
        cls, path = _worst(cmd, w)
        if cls == "device":
            yield _f("disk.write-device", w, f"'{cmd.name}' overwrites the block device {path}.")
        elif cls in _DELETE_RULES:
            yield _f(_DELETE_RULES[cls], w, f"'{cmd.name}' destroys {_DELETE_WHAT[cls]} ({_shown(w, path)}).")
        elif any(_in_system(p) for p in paths(cmd, w)):
            yield _f("fs.delete-system-file", w, f"'{cmd.name}' destroys {_shown(w, path)} inside a system tree.")
        elif _HISTORY_RE.search(path):
            yield _f("evasion.history", w, f"'{cmd.name}' destroys the shell history file {path}.")


def _find(cmd: SimpleCommand) -> Iterable[Finding]:
    for i, a in enumerate(cmd.args[:-1]):        # -fprint FILE writes FILE
        if a.text in ("-fprint", "-fprint0", "-fprintf", "-fls"):
            yield from _write_target(cmd, cmd.args[i + 1])
    if not any(a.text in ("-delete",) for a in cmd.args):
        return
    name = find_name_filter(cmd.args)
    for w in find_roots(cmd.args) or [Word(".", cmd.span)]:
        target = w if name is None else Word(posixpath.join(w.text, name), w.span, w.literal, w.dynamic, (), True)
        cls, path = _worst(cmd, target)
        if cls in _DELETE_RULES:
            yield _f(_DELETE_RULES[cls], w, f"'find {w.text} -delete' deletes {_DELETE_WHAT[cls]} ({path}).")
        elif name is not None and any(fnmatch.fnmatchcase(h, name) for h in _HISTORY_NAMES):
            yield _f("evasion.history", w, f"'find {w.text} -name {name} -delete' deletes shell history files.")


def _rsync(cmd: SimpleCommand) -> Iterable[Finding]:
    if not any(a.text.startswith("--delete") for a in cmd.args):
        return
    ops = _operands(cmd, frozenset({"-e", "--rsh", "--exclude", "--include", "--filter", "-f"}))
    if len(ops) >= 2:
        dest = ops[-1]
        cls, path = _worst(cmd, dest)
        if cls in _DELETE_RULES:
            yield _f(_DELETE_RULES[cls], dest, f"'rsync --delete' into {_shown(dest, path)} wipes {_DELETE_WHAT[cls]}.")


def _mv(cmd: SimpleCommand) -> Iterable[Finding]:
    ops = _operands(cmd, frozenset({"-t", "--target-directory", "-S", "--suffix"}))
    for w in ops[:-1]:
        cls, path = _worst(cmd, w)
        if cls in _DELETE_RULES:
            yield _f(_DELETE_RULES[cls], w, f"'mv' moves away {_DELETE_WHAT[cls]} ({_shown(w, path)}).")
        elif _is_git_dir(path):
            yield _f("vcs.delete-repo", w, f"'mv' moves away {path}, a repository's history.")
        elif _HISTORY_RE.search(path):
            yield _f("evasion.history", w, f"'mv' moves away the shell history file {path}.")
    if len(ops) >= 2:
        yield from _write_target(cmd, ops[-1])


def _cp_like(cmd: SimpleCommand) -> Iterable[Finding]:
    ops = _operands(cmd, frozenset({"-t", "--target-directory", "-S", "--suffix", "-m", "--mode", "-o", "-g",
                                    "--owner", "--group"}))
    if len(ops) >= 2:
        yield from _write_target(cmd, ops[-1])
    for w in ops[:-1]:
        yield from _read_target(cmd, w)
    if cmd.name == "install":
        for m in option_values(cmd.args, ("-m", "--mode"), ("-m",)):
            if _sets_setid(m.text):
                yield _f("cred.setuid", m, f"'install -m {m.text}' installs a setuid/setgid program.")


def _tee(cmd: SimpleCommand) -> Iterable[Finding]:
    for w in _operands(cmd):
        yield from _write_target(cmd, w)


def _truncate(cmd: SimpleCommand) -> Iterable[Finding]:
    for w in _operands(cmd, frozenset({"-s", "--size", "-r", "--reference"})):
        yield from _write_target(cmd, w)


def _sed(cmd: SimpleCommand) -> Iterable[Finding]:
    if not any(a.text.startswith(("-i", "--in-place")) or (a.text.startswith("-") and not a.text.startswith("--")
                                                            and "i" in a.text) for a in cmd.args):
        return
    ops = _operands(cmd, frozenset({"-e", "-f", "--expression", "--file"}))
    has_script_opt = any(a.text in ("-e", "-f", "--expression", "--file") for a in cmd.args)
    for w in ops if has_script_opt else ops[1:]:
        yield from _write_target(cmd, w)


def _write_target(cmd: SimpleCommand, w: Word) -> Iterable[Finding]:
    for p in paths(cmd, w, follow=cmd.name != "ln"):
        found = list(_write_one(cmd, w, resolve_path(p)))
        if found:
            yield from found
            return


def _write_one(cmd: SimpleCommand, w: Word, t: str) -> Iterable[Finding]:
    if _HISTORY_RE.search(t):
        yield _f("evasion.history", w, f"'{cmd.name}' overwrites the shell history file {t}.")
    elif _DEVICE_RE.match(t):
        yield _f("disk.write-device", w, f"'{cmd.name}' writes to the block device {t}.")
    elif _SYSRQ_RE.match(t):
        yield _f("sandbox.sysrq", w, f"'{cmd.name}' writes to {t} (magic SysRq).")
    elif t.startswith("/proc/sys/"):
        yield _f("sandbox.kernel-param", w, f"'{cmd.name}' changes the kernel parameter {t}.")
    elif t in _CRED_FILES:
        yield _f("cred.account-write", w, f"'{cmd.name}' writes the account database {t}.")
    elif _SUDOERS_RE.match(t):
        yield _f("cred.sudoers", w, f"'{cmd.name}' edits sudoers ({t}).")
    elif _AUTHORIZED_KEYS_RE.search(t):
        yield _f("cred.ssh-keys", w, f"'{cmd.name}' writes SSH authorized keys ({t}).")
    elif _CRITICAL_FILE_RE.match(t):
        yield _f("fs.overwrite-system", w, f"'{cmd.name}' overwrites {t}, a boot, login or system binary path.")


def _read_target(cmd: SimpleCommand, w: Word) -> Iterable[Finding]:
    for p in paths(cmd, w, follow=True):
        found = list(_read_one(cmd, w, resolve_path(p)))
        if found:
            yield from found
            return


def _read_one(cmd: SimpleCommand, w: Word, t: str) -> Iterable[Finding]:
    if t in _SHADOW_FILES:
        yield _f("cred.shadow-read", w, f"'{cmd.name}' reads the password hashes in {t}.")
    elif _SSH_PRIVATE_RE.search(t):
        yield _f("cred.ssh-keys", w, f"'{cmd.name}' reads the SSH private key {t}.")
    elif _SUDOERS_RE.match(t):
        yield _f("cred.shadow-read", w, f"'{cmd.name}' reads sudoers ({t}).")


def _dd(cmd: SimpleCommand) -> Iterable[Finding]:
    for a in cmd.args:
        if a.text.startswith("of="):
            yield from _write_target(cmd, Word(a.text[3:], a.span, a.literal, a.dynamic))
        elif a.text.startswith("if="):
            yield from _read_target(cmd, Word(a.text[3:], a.span, a.literal, a.dynamic))


_FORMATTERS = re.compile(r"^(mkfs(\.\w+)?|mke2fs|mkswap|mkdosfs|mkntfs|mkexfatfs|mkfs\.\w+|wipefs|fdisk|sfdisk|gdisk"
                         r"|sgdisk|cfdisk|parted|blkdiscard|zpool|pvcreate|cryptsetup)$")


def _format(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.name in ("fdisk", "sfdisk", "parted", "gdisk", "sgdisk") and any(
            a.text in ("-l", "--list", "print", "-p") for a in cmd.args):
        return
    if cmd.name == "cryptsetup" and not any(a.text in ("luksFormat", "erase", "luksErase") for a in cmd.args):
        return
    ops = _operands(cmd, frozenset({"-t", "-L", "-b", "-c", "-d", "-E", "-O", "-N", "-m", "-T", "-U", "-I", "-i",
                                    "-n", "-o", "-s", "-F", "-l", "-e", "-V"}))
    devices = [a for a in cmd.args if a.text.startswith("/dev/")]
    targets = devices or [w for w in ops if w.text.startswith("/") or not w.literal or "." in w.text]
    for w in targets or ops[:1]:
        if w.literal and not w.text.startswith("/dev/"):
            yield _f("disk.format-image", w, f"'{cmd.name}' formats the image file {w.text}.")
        else:
            yield _f("disk.format", w, f"'{cmd.name}' formats or wipes the device {w.text}.")
        return
    yield _f("disk.format", cmd.name_word, f"'{cmd.name}' formats or wipes a device.")


_SYMBOLIC_SETID = re.compile(r"^[ugoa]*[+=][rwxXt]*s[rwxXt]*$")


def _sets_setid(mode: str) -> bool:
    """``u+s``, ``g+s``, ``+s``, ``u=rwxs``, ``a+x,u+s``, ``4755``, ``02755``: sets setuid or setgid."""
    if any(_SYMBOLIC_SETID.match(clause) for clause in mode.split(",")):
        return True
    digits = mode[1:] if len(mode) == 5 and mode.startswith("0") else mode
    return len(digits) == 4 and digits.isdigit() and "8" not in digits and "9" not in digits \
        and bool(int(digits[0]) & 6)


def _chmod(cmd: SimpleCommand) -> Iterable[Finding]:
    flags = _flags(cmd)
    recursive = bool(flags & {"R", "--recursive"})
    ops = _operands(cmd, frozenset({"--reference"}))
    if cmd.name == "chmod":
        mode = next((a for a in cmd.args if _sets_setid(a.text)), None)
        if mode is not None:
            yield _f("cred.setuid", mode, f"'chmod {mode.text}' sets a setuid/setgid bit.")
        ops = ops[1:] if ops and not ops[0].text.startswith("/") else ops
    elif cmd.name in ("chown", "chgrp"):
        ops = ops[1:]
    for w in ops:
        cls, path = _worst(cmd, w, follow="h" not in flags)      # chmod/chown follow a symlink operand
        if cls in ("root", "system", "home") and recursive:
            yield _f("perm.recursive-system", w, f"Recursive '{cmd.name}' on {_DELETE_WHAT[cls]} ({_shown(w, path)}).")
        elif cls in ("root", "system"):
            yield _f("perm.system", w, f"'{cmd.name}' changes {_DELETE_WHAT[cls]} ({_shown(w, path)}).")
        elif cls == "device":
            yield _f("perm.system", w, f"'{cmd.name}' opens up the device {w.text}.")
        elif _SUDOERS_RE.match(resolve_path(w.text)) or resolve_path(w.text) in _SHADOW_FILES:
            yield _f("cred.sudoers", w, f"'{cmd.name}' changes permissions of {w.text}.")


_SSH_DAEMONS = re.compile(r"^(sshd?|dropbear|openssh(-server)?|ssh\.service|sshd\.service|dropbear\.service)$")
_INIT_NAMES = re.compile(r"^(init|systemd|busybox|runit|s6-svscan|tini|dumb-init)$")


def _kill(cmd: SimpleCommand) -> Iterable[Finding]:
    args = cmd.args
    i = 0
    if args and args[0].text in ("-s", "-n", "--signal"):
        i = 2
    elif args and args[0].text.startswith("-") and args[0].text != "--" and len(args) > 1:
        i = 1
    if i < len(args) and args[i].text == "--":
        i += 1
    for w in args[i:]:
        if w.text in ("1", "-1"):
            what = "PID 1 (init)" if w.text == "1" else "every process"
            yield _f("sandbox.kill-init", w, f"'kill {w.text}' kills {what}, which takes the sandbox down.")
        for inner in w.inner:
            if inner.name in ("pidof", "pgrep", "pkill") and any(_SSH_DAEMONS.match(a.text) for a in inner.args):
                yield _f("sandbox.kill-ssh", w, "Kills the SSH server, cutting the sandbox off.")
            if inner.name == "cat" and any("ssh" in a.text or "dropbear" in a.text for a in inner.args):
                yield _f("sandbox.kill-ssh", w, "Kills the SSH server, cutting the sandbox off.")


def _killall(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.name == "killall5":
        yield _f("sandbox.kill-init", cmd.name_word, "'killall5' kills every process.")
        return
    for w in _operands(cmd, frozenset({"-s", "--signal", "-u", "--user", "-U", "-g", "-G", "-P", "-t", "-n",
                                       "-o", "-y", "--older-than", "--younger-than"})):
        name = w.text.split()[0].rsplit("/", 1)[-1] if w.text.split() else ""
        if _SSH_DAEMONS.match(name) or re.search(r"\b(sshd|dropbear)\b", w.text):
            yield _f("sandbox.kill-ssh", w, f"'{cmd.name} {w.text}' kills the SSH server, cutting the sandbox off.")
        elif _INIT_NAMES.match(name):
            yield _f("sandbox.kill-init", w, f"'{cmd.name} {w.text}' kills the init process.")


_POWER_VERBS = frozenset({"poweroff", "reboot", "halt", "kexec", "suspend", "hibernate", "hybrid-sleep",
                          "rescue", "emergency", "soft-reboot"})
_STOP_VERBS = frozenset({"stop", "kill", "disable", "mask", "restart", "try-restart", "reload-or-restart"})


def _service(cmd: SimpleCommand) -> Iterable[Finding]:
    ops = _operands(cmd, frozenset({"-s", "--signal", "-H", "--host", "-M", "--machine"}))
    texts = [w.text for w in ops]
    if cmd.name == "systemctl":
        if texts and texts[0] in _POWER_VERBS or (texts[:1] == ["isolate"] and any(
                t in ("rescue.target", "emergency.target", "poweroff.target", "reboot.target", "halt.target")
                for t in texts)):
            yield _f("sandbox.power", ops[0], f"'systemctl {texts[0]}' stops or reboots the sandbox.")
        if texts and texts[0] in _STOP_VERBS and any(_SSH_DAEMONS.match(t) for t in texts[1:]):
            yield _f("sandbox.kill-ssh", ops[0], f"'systemctl {' '.join(texts)}' stops the SSH server.")
    elif cmd.name in ("service", "rc-service", "sv", "invoke-rc.d"):
        if any(_SSH_DAEMONS.match(t) for t in texts) and any(t in _STOP_VERBS or t == "down" for t in texts):
            yield _f("sandbox.kill-ssh", cmd.name_word, f"'{cmd.name} {' '.join(texts)}' stops the SSH server.")
    elif _SSH_DAEMONS.match(cmd.name or "") and "/init.d/" in cmd.name_word.text:
        if any(t in _STOP_VERBS for t in texts):
            yield _f("sandbox.kill-ssh", cmd.name_word, "Stops the SSH server through its init script.")


def _power(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.name in ("init", "telinit"):
        if any(a.text in ("0", "6", "1", "s", "S", "single") for a in cmd.args):
            yield _f("sandbox.power", cmd.name_word, f"'{cmd.name} {cmd.argv[0]}' halts, reboots or isolates the sandbox.")
        return
    if cmd.name == "shutdown" and any(a.text in ("-c", "--help") for a in cmd.args):
        return
    yield _f("sandbox.power", cmd.name_word, f"'{cmd.name}' shuts down or reboots the sandbox.")


def _firewall(cmd: SimpleCommand) -> Iterable[Finding]:
    texts = cmd.argv
    if cmd.name == "nft":
        joined = " ".join(texts)
        if re.search(r"\bflush\s+(ruleset|table|chain)\b|\bdelete\s+(table|chain)\b", joined):
            yield _f("sandbox.firewall-flush", cmd.name_word, f"'nft {joined}' removes the firewall rules.")
        elif re.search(r"\b(add|insert|replace|create)\b", joined):
            yield _f("sandbox.firewall", cmd.name_word, f"'nft {joined}' changes the firewall rules.")
        return
    if cmd.name in ("ufw", "firewall-cmd"):
        if texts and texts[0] not in ("status", "--state", "--list-all", "app"):
            yield _f("sandbox.firewall", cmd.name_word, f"'{cmd.name}' changes the firewall.")
        return
    flags = set()
    for t in texts:
        if t.startswith("--"):
            flags.add(t)
        elif t.startswith("-"):
            flags.update("-" + ch for ch in t[1:])
    if flags & {"-F", "--flush", "-X", "--delete-chain", "-P", "--policy"}:
        yield _f("sandbox.firewall-flush", cmd.name_word, f"'{cmd.name} {' '.join(texts)}' flushes the firewall or sets a policy.")
    elif flags & {"-A", "-I", "-D", "-R", "-N", "--append", "--insert", "--delete", "--replace", "--new-chain"}:
        yield _f("sandbox.firewall", cmd.name_word, f"'{cmd.name} {' '.join(texts)}' changes the firewall rules.")


def _modules(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.name == "modprobe" and any(a.text in ("-l", "--list", "-c", "--showconfig", "-n", "--dry-run", "--show-depends",
                                                  "-D") for a in cmd.args):
        return
    yield _f("sandbox.kernel-module", cmd.name_word, f"'{cmd.name}' loads or unloads kernel code.")


def _sysctl(cmd: SimpleCommand) -> Iterable[Finding]:
    for a in cmd.args:
        if "=" in a.text and not a.text.startswith("-"):
            if "sysrq" in a.text:
                yield _f("sandbox.sysrq", a, f"'sysctl {a.text}' enables magic SysRq.")
            else:
                yield _f("sandbox.kernel-param", a, f"'sysctl {a.text}' changes a kernel parameter.")
        elif a.text in ("-p", "-f", "--load", "--system") or a.text.startswith(("--load=", "-p/")):
            yield _f("sandbox.kernel-param", a, "'sysctl' loads kernel parameters.")


def _network(cmd: SimpleCommand) -> Iterable[Finding]:
    texts = cmd.argv
    joined = " ".join(texts)
    if cmd.name in ("ifdown", "ifconfig") and (cmd.name == "ifdown" or "down" in texts):
        yield _f("sandbox.network-down", cmd.name_word, f"'{cmd.name} {joined}' takes a network interface down.")
    elif cmd.name == "ip" and re.search(r"\b(link\s+(set\s+\S+\s+down|del(ete)?)|addr(ess)?\s+(flush|del)"
                                        r"|route\s+(flush|del))\b", joined):
        yield _f("sandbox.network-down", cmd.name_word, f"'ip {joined}' cuts the sandbox's network.")
    elif cmd.name == "nmcli" and re.search(r"\b(networking\s+off|down|disconnect)\b", joined):
        yield _f("sandbox.network-down", cmd.name_word, f"'nmcli {joined}' cuts the sandbox's network.")


def _mount(cmd: SimpleCommand) -> Iterable[Finding]:
    texts = cmd.argv
    if cmd.name == "umount" and any(t in ("/", "-a", "--all") or classify(t) in ("root", "system") for t in texts):
        yield _f("sandbox.unmount", cmd.name_word, f"'umount {' '.join(texts)}' unmounts system filesystems.")
    elif cmd.name == "mount" and any("remount" in t for t in texts) and any(t in ("/", "/usr", "/boot") for t in texts):
        yield _f("sandbox.unmount", cmd.name_word, f"'mount {' '.join(texts)}' remounts the root filesystem.")


def _accounts(cmd: SimpleCommand) -> Iterable[Finding]:
    texts = cmd.argv
    joined = " ".join(texts)
    if cmd.name in ("visudo", "sudoedit"):
        if cmd.name == "visudo" and any(t in ("-c", "--check") for t in texts):
            return
        yield _f("cred.sudoers", cmd.name_word, f"'{cmd.name}' edits sudoers." if cmd.name == "visudo"
                 else f"'sudoedit {joined}' edits a root-owned file.")
        return
    if cmd.name in ("useradd", "usermod", "adduser") and re.search(r"(-u|--uid)\s+0\b|(^|\s)-o(\s|$)|--non-unique", joined):
        yield _f("cred.account-write", cmd.name_word, f"'{cmd.name} {joined}' creates a second root account (UID 0).")
    elif cmd.name in ("usermod", "gpasswd", "adduser", "useradd") and re.search(r"\b(sudo|wheel|root|admin|adm|docker)\b", joined):
        yield _f("cred.privilege-edit", cmd.name_word, f"'{cmd.name} {joined}' grants administrator rights.")
    elif cmd.name in ("passwd", "chpasswd", "chage", "pwconv", "vipw", "vigr"):
        yield _f("cred.privilege-edit", cmd.name_word, f"'{cmd.name}' changes account passwords.")
    elif cmd.name == "setcap":
        yield _f("cred.setuid", cmd.name_word, f"'setcap {joined}' grants file capabilities.")


def _setfattr(cmd: SimpleCommand) -> Iterable[Finding]:
    if any(v.text.startswith("security.capability") for v in option_values(cmd.args, ("-n", "--name"), ("-n",))):
        yield _f("cred.setuid", cmd.name_word, "'setfattr -n security.capability' grants file capabilities.")


def _crontab(cmd: SimpleCommand) -> Iterable[Finding]:
    flags = {ch for a in cmd.args if a.text.startswith("-") and not a.text.startswith("--") for ch in a.text[1:]}
    if "r" in flags:
        yield _f("persist.crontab", cmd.name_word, f"'crontab {' '.join(cmd.argv)}' removes a crontab.")
    elif not flags & {"l", "e", "V", "h"} and _operands(cmd, frozenset({"-u", "-s"})):
        yield _f("persist.crontab", cmd.name_word, f"'crontab {' '.join(cmd.argv)}' replaces a crontab (runs commands later).")


def _swap(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.name == "swapon" and (not cmd.args or any(a.text in ("-s", "--show", "--summary") or a.text.startswith("--show")
                                                     for a in cmd.args)):
        return
    yield _f("sandbox.swap", cmd.name_word, f"'{cmd.name} {' '.join(cmd.argv)}' changes the sandbox's swap.")


def _history(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.name == "history" and _flags(cmd) & {"c", "d"}:
        yield _f("evasion.history", cmd.name_word, f"'history {' '.join(cmd.argv)}' erases shell history.")
    elif cmd.name == "set" and any(a.text == "+o" and b.text == "history" for a, b in zip(cmd.args, cmd.args[1:])):
        yield _f("evasion.history", cmd.name_word, "'set +o history' stops recording shell history.")


_GIT_GLOBAL_WITH_VALUE = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--config-env"})


def _git(cmd: SimpleCommand) -> Iterable[Finding]:
    args = cmd.args
    i = 0
    while i < len(args) and args[i].text.startswith("-"):
        i += 2 if args[i].text in _GIT_GLOBAL_WITH_VALUE else 1
    if i >= len(args) or args[i].text != "push":
        return
    skip = False
    for a in args[i + 1:]:
        t = a.text
        if skip:
            skip = False
            continue
        if t in ("-o", "--push-option", "--repo", "--receive-pack", "--exec"):
            skip = True
        elif t in ("--force", "--mirror", "--delete", "--prune") or t.startswith(("--force-with-lease", "--force-if-includes")) \
                or t.startswith("-") and not t.startswith("--") and set(t[1:]) & {"f", "d"}:
            yield _f("vcs.force-push", a, f"'git push {t}' rewrites or deletes history on the remote.")
            return
        elif not t.startswith("-") and (t.startswith("+") or t.startswith(":") and len(t) > 1):
            yield _f("vcs.force-push", a, f"'git push ... {t}' force-updates or deletes a remote branch.")
            return


_HISTORY_VARS = frozenset({"HISTFILE", "HISTSIZE", "HISTFILESIZE", "SAVEHIST", "HISTIGNORE"})


def check_assignments(script: Script) -> list[Finding]:
    """``unset HISTFILE``, ``HISTSIZE=0``, ``HISTFILE=/dev/null``: shell history switched off."""
    out: list[Finding] = []
    for name, value in script.assignments:
        v = value.text.strip()
        if name == "HISTFILE" or name == "HISTIGNORE" and "*" in v or name in _HISTORY_VARS and v in ("", "0"):
            out.append(_f("evasion.history", value, f"Setting {name}={v!r} hides commands from shell history."))
    for name, span in script.unsets:
        if name in _HISTORY_VARS:
            out.append(Finding("evasion.history", H, span, f"'unset {name}' hides commands from shell history."))
    return out


def check_loop(loop: Loop) -> list[Finding]:
    """``while true; do CMD & done``: processes pile up until the sandbox runs out of PIDs or memory."""
    if not loop.unbounded or any(c.name in ("break", "exit", "return", "wait") or c.name == "kill" and any(
            a.text.startswith("$") or a.text.startswith("%") for a in c.args) for c in loop.body):
        return []                           # leaves the loop, or reaps / kills what it started (a restart loop)
    spawned = loop.spawned
    if not spawned:
        return []
    return [Finding("proc.spawn-loop", C, loop.span,
                    f"A loop that never ends starts '{spawned[0].name or spawned[0].name_word.text}' in the background "
                    "on every pass: a process bomb.")]


_NC_NAMES = frozenset({"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd", "pwncat"})


def _netcat(cmd: SimpleCommand) -> Iterable[Finding]:
    for a in cmd.args:
        t = a.text
        if t in ("-e", "-c", "--exec", "--sh-exec", "--lua-exec") or t.startswith(("--exec=", "--sh-exec=")) or \
                (t.startswith("-") and not t.startswith("--") and re.search(r"[ec]", t[1:]) and len(t) > 2
                 and t[-1] in "ec"):
            yield _f("revshell.netcat-exec", a, f"'{cmd.name} {t}' serves a shell over the network.")
            return


def _socat(cmd: SimpleCommand) -> Iterable[Finding]:
    for a in cmd.args:
        if re.search(r"(^|[,!])\s*(exec|system)\s*:", a.text, re.IGNORECASE):
            yield _f("revshell.socat-exec", a, f"'socat {a.text}' connects a program to the network.")
            return


_DOWNLOADERS = frozenset({"curl", "wget", "fetch", "aria2c", "http", "https", "lwp-request", "lwp-download", "GET",
                          "ftp", "tftp", "lynx", "links", "w3m", "xh", "wget2", "axel"})
_NETWORK_TOOLS = _NC_NAMES | {"socat", "telnet", "openssl", "cryptcat", "sbd"}


def _is_downloader(c: SimpleCommand) -> bool:
    if c.name in _DOWNLOADERS:
        return True
    if c.name in _NETWORK_TOOLS and c.name != "openssl":
        return True
    if c.name == "openssl" and any(a.text == "s_client" for a in c.args):
        return True
    return bool(c.inline_code) and bool(_REMOTE_CODE_FETCH.search(c.inline_code.text))


def _is_decoder(c: SimpleCommand) -> bool:
    name = c.name or ""
    flags = _flags(c)
    if name in ("base64", "base32", "basenc", "gbase64") and flags & {"d", "D", "--decode"}:
        return True
    if name == "xxd" and flags & {"r"}:
        return True
    if name in ("uudecode", "rev", "gunzip", "zcat", "bzcat", "xzcat", "unxz", "lzcat", "zstdcat"):
        return True
    if name in ("gzip", "bzip2", "xz", "zstd") and flags & {"d", "--decompress"}:
        return True
    if name == "openssl" and (any(a.text in ("base64", "enc") for a in c.args) and "d" in flags):
        return True
    if name == "tr" and any(re.search(r"[A-Za-z]-[A-Za-z]", a.text) for a in c.args):
        return True
    if name == "printf" and c.args and re.search(r"\\(x[0-9A-Fa-f]|[0-7]{2,3}|u[0-9A-Fa-f])", c.args[0].text):
        return True
    if name == "echo" and any(re.fullmatch(r"-[nE]*e[nE]*", a.text) for a in c.args) and any(
            re.search(r"\\(x[0-9A-Fa-f]|[0-7]{2,3})", a.text) for a in c.args):
        return True
    return bool(c.inline_code) and bool(_DECODE_CODE.search(c.inline_code.text))


def _code_consumer(cmd: SimpleCommand) -> bool:
    """Whether ``cmd`` runs its stdin as code."""
    if cmd.name in STDIN_SCRIPT_RUNNERS:
        return True
    if cmd.name in ("source", "."):
        return any(a.text in ("/dev/stdin", "-", "/proc/self/fd/0") for a in cmd.args)
    return reads_code_from_stdin(cmd)


def _code_words(cmd: SimpleCommand) -> list[Word]:
    """Words whose content runs as code: sh -c SCRIPT, eval ARGS, source FILE, python -c CODE, bash <(..)."""
    words: list[Word] = []
    if cmd.script_word is not None:
        words.append(cmd.script_word)
    if cmd.inline_code is not None:
        words.append(cmd.inline_code)
    if cmd.name in ("eval", "source", ".") or cmd.name in SHELLS or is_interpreter(cmd.name):
        words.extend(a for a in cmd.args if a.inner)
    return words


def _pipeline_checks(cmd: SimpleCommand) -> Iterable[Finding]:
    if cmd.upstream and _code_consumer(cmd):
        if any(_is_downloader(u) for u in cmd.upstream):
            yield _f("remote.pipe-to-interpreter", cmd, f"Downloaded content is piped into '{cmd.name}' and run.")
        elif any(_is_decoder(u) for u in cmd.upstream):
            yield _f("decode.to-shell", cmd, f"Decoded or escaped text is piped into '{cmd.name}' and run.")
    runs_code = cmd.name in SHELLS or cmd.name in ("eval", "source", ".") or is_interpreter(cmd.name)
    if runs_code:
        for w in _code_words(cmd):
            if any(_is_downloader(c) for c in _all_inner(w)):
                yield _f("remote.substitution", w, f"'{cmd.name}' runs code fetched from the network ({w.text[:60]}).")
            elif any(_is_decoder(c) for c in _all_inner(w)):
                yield _f("decode.to-shell", w, f"'{cmd.name}' runs decoded text ({w.text[:60]}).")
    if cmd.in_pipeline:
        if cmd.name in _NETWORK_TOOLS and any(u.name in SHELLS for u in cmd.upstream):
            yield _f("revshell.pipe", cmd, f"A shell's output is piped into '{cmd.name}' (reverse shell).")
        elif cmd.name in SHELLS and any(u.name in _NETWORK_TOOLS for u in cmd.upstream):
            yield _f("revshell.pipe", cmd, f"Network input from a socket is piped into '{cmd.name}' (reverse shell).")


def _all_inner(w: Word) -> list[SimpleCommand]:
    out: list[SimpleCommand] = []
    stack = list(w.inner)
    while stack:
        c = stack.pop()
        out.append(c)
        out.extend(c.upstream)
        for a in c.args:
            stack.extend(a.inner)
    return out


# --- inline interpreter code ----------------------------------------------------------------------

_REMOTE_CODE_FETCH = re.compile(r"urlopen|urllib|requests\.(get|post)|http\.get|https\.get|fetch\(|open-uri|Net::HTTP"
                                r"|LWP::|HTTP::Tiny|file_get_contents\(\s*['\"]https?:|curl_exec|URI\.open|Invoke-WebRequest"
                                r"|DownloadString|iwr\b")
_EXEC_CODE = re.compile(r"\b(exec|eval|compile|system|Function|load|instance_eval|iex|Invoke-Expression|runInThisContext)\b")
_DECODE_CODE = re.compile(r"b64decode|decodebytes|decode64|unpack\(\s*['\"]m|atob\(|Buffer\.from\([^)]*base64|"
                          r"base64_decode|fromhex|FromBase64String|codecs\.decode\([^)]*rot")
_CODE_CHECKS: list[tuple[str, re.Pattern, Optional[re.Pattern], str]] = [
    ("interp.delete", re.compile(r"(rmtree|rm_rf|rm_r|rmSync|rimraf|remove_dir_all|rmdir|unlink|remove|rm)\s*\(?\s*"
                                 r"(['\"](/|/\*|~/?|/(etc|usr|bin|sbin|boot|lib|lib64|var|home|root|opt)/?)['\"]"
                                 r"|os\.path\.expanduser\(\s*['\"]~['\"]\s*\)|Path\.home\(\)|os\.environ\[['\"]HOME['\"]\]"
                                 r"|ENV\[['\"]HOME['\"]\]|Dir\.home|os\.homedir\(\))"), None,
     "deletes /, a system tree or home"),
    ("interp.fork-bomb", re.compile(r"(while|for\s*\(\s*;\s*;\s*\)|loop|until|forever)[^\n]{0,60}\bfork\b|\bfork\b[^\n]{0,40}"
                                    r"\b(while|until)\b|\bfork\s*(\(\s*\))?\s*(while|until|for)\b"), None,
     "forks in an endless loop (fork bomb)"),
    ("interp.reverse-shell", re.compile(r"/dev/(tcp|udp)/"), None, "opens a /dev/tcp socket"),
    ("interp.reverse-shell", re.compile(r"\bsocket\b|fsockopen|TCPSocket|net\.Socket|net\.connect|IO::Socket|Socket\.new"
                                        r"|new\s+Socket|TCPClient", re.IGNORECASE),
     re.compile(r"dup2|pty\.spawn|/bin/(ba|z|da)?sh\b|subprocess|\bexec\w*\b|\bspawn\b|popen|\bsystem\b|cmd\.exe"
                r"|child_process|STDIN|proc_open|shell_exec"),
     "connects a network socket to a shell (reverse shell)"),
    ("interp.remote-code", _REMOTE_CODE_FETCH, _EXEC_CODE, "runs code downloaded from the network"),
    ("interp.decode-exec", _DECODE_CODE, _EXEC_CODE, "runs code it decodes at run time"),
    ("interp.device-write", re.compile(r"/dev/(sd[a-z]|vd[a-z]|hd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|mem\b|kmem\b|port\b)"), None,
     "opens a block device or raw memory"),
    ("interp.sandbox-kill", re.compile(r"\bkill\(\s*(1|-1)\s*,|process\.kill\(\s*(1|-1)\b|Process\.kill\([^)]*,\s*(1|-1)\s*\)"
                                       r"|sysrq-trigger|\breboot\(|LINUX_REBOOT|kill\s+(-9\s+)?-?1\b"), None,
     "kills PID 1, reboots or uses magic SysRq"),
    ("interp.credentials", re.compile(r"/etc/(g?shadow|sudoers)|\bset(res)?uid\(\s*0\s*\)|S_ISUID|0o?[46]7[0-7]{2}\b"),
     None, "touches password hashes, sudoers or setuid"),
]


def _inline_code(cmd: SimpleCommand) -> Iterable[Finding]:
    code = cmd.inline_code
    if code is None:
        return
    text = code.text
    seen: set[str] = set()
    for rule, first, second, what in _CODE_CHECKS:
        if rule in seen:
            continue
        if first.search(text) and (second is None or second.search(text)):
            seen.add(rule)
            yield _f(rule, code, f"Inline {cmd.name} code {what}.")


# --- dispatch ---------------------------------------------------------------------------------------

_CHECKS: dict[str, Callable[[SimpleCommand], Iterable[Finding]]] = {
    "rm": _rm, "unlink": _rm, "shred": _shred, "wipe": _shred, "srm": _shred, "find": _find, "rsync": _rsync,
    "mv": _mv, "cp": _cp_like, "install": _cp_like, "ln": _cp_like, "tee": _tee, "truncate": _truncate,
    "sed": _sed, "dd": _dd, "chmod": _chmod, "chown": _chmod, "chgrp": _chmod, "setfacl": _chmod,
    "kill": _kill, "killall": _killall, "pkill": _killall, "killall5": _killall, "skill": _killall,
    "systemctl": _service, "service": _service, "rc-service": _service, "sv": _service, "invoke-rc.d": _service,
    "ssh": _service, "sshd": _service, "dropbear": _service,
    "shutdown": _power, "reboot": _power, "halt": _power, "poweroff": _power, "init": _power, "telinit": _power,
    "kexec": _modules,
    "iptables": _firewall, "ip6tables": _firewall, "iptables-legacy": _firewall, "iptables-nft": _firewall,
    "ebtables": _firewall, "arptables": _firewall, "nft": _firewall, "ufw": _firewall, "firewall-cmd": _firewall,
    "insmod": _modules, "modprobe": _modules, "rmmod": _modules,
    "sysctl": _sysctl, "ip": _network, "ifconfig": _network, "ifdown": _network, "nmcli": _network,
    "umount": _mount, "mount": _mount,
    "visudo": _accounts, "sudoedit": _accounts, "useradd": _accounts, "usermod": _accounts, "adduser": _accounts,
    "gpasswd": _accounts, "passwd": _accounts, "chpasswd": _accounts, "chage": _accounts, "pwconv": _accounts,
    "vipw": _accounts, "vigr": _accounts, "setcap": _accounts, "setfattr": _setfattr,
    "crontab": _crontab, "swapoff": _swap, "swapon": _swap, "history": _history, "set": _history, "git": _git,
    "socat": _socat, **{n: _netcat for n in _NC_NAMES},
}
_READERS_SKIP = frozenset({"echo", "printf", "ls", "stat", "test", "[", "which", "file", "dd", "find", "du", "tree",
                           "getfacl", "lsattr", "realpath", "readlink", "basename", "dirname", "namei", "touch"})


def check_command(cmd: SimpleCommand) -> list[Finding]:
    out: list[Finding] = []
    if cmd.name is None:
        out.append(_f("evasion.dynamic-command", cmd.name_word,
                      f"The command name {cmd.name_word.text!r} is computed at run time, so it cannot be checked."))
    elif cmd.name_word.dynamic:
        out.append(_f("evasion.obfuscated-command", cmd.name_word,
                      f"The command name is hidden with escapes or variables (it runs '{cmd.name}')."))
    name = cmd.name or ""
    check = _CHECKS.get(name)
    if check is None and _FORMATTERS.match(name):
        check = _format
    if check is not None:
        out.extend(check(cmd))
    if name in _DOWNLOADERS:
        out.append(_f("net.download", cmd, f"'{name}' downloads from the network."))
    out.extend(_pipeline_checks(cmd))
    out.extend(_inline_code(cmd))
    for a in cmd.args:     # paths anywhere on the line
        t = a.text
        if "/dev/tcp/" in t or "/dev/udp/" in t:
            out.append(_f("revshell.dev-tcp", a, f"{t} opens a network socket from the shell (reverse shell)."))
        elif name not in _READERS_SKIP and check not in (_cp_like, _dd, _mv, _rm, _shred, _chmod) and (
                "/" in t or cmd.links or cmd.cwd and cmd.cwd.startswith(("/", "~")) and not t.startswith("-")):
            out.extend(_read_target(cmd, a))
    return out


def check_redirect(red: Redirect) -> list[Finding]:
    t = resolve_path(red.target.text)
    w = red.target
    owner = red.owner
    label = owner.name if owner is not None and owner.name else "a redirect"
    if "/dev/tcp/" in t or "/dev/udp/" in t:
        return [_f("revshell.dev-tcp", w, f"Redirect to {t} opens a network socket (reverse shell).")]
    if red.writes:
        fake = SimpleCommand(label, Word(label, None), [], None, 0)
        fake.cwd, fake.links = red.cwd, red.links
        return [Finding(f.rule_id, f.risk_level, w.span, f.message.replace(f"'{label}' ", "A redirect ", 1)
                        if owner is None else f.message) for f in _write_target(fake, w)]
    if red.op == "<":
        fake = SimpleCommand(label, Word(label, None), [], None, 0)
        fake.cwd, fake.links = red.cwd, red.links
        return list(_read_target(fake, w))
    return []


def check_function(fn) -> list[Finding]:
    calls = fn.calls
    if any(c.in_pipeline or c.background for c in calls) or len(calls) >= 2:
        return [Finding("proc.fork-bomb", C, fn.span,
                        f"The function {fn.name!r} calls itself in a pipeline or in the background: a fork bomb.")]
    return []


def download_exec(script: Script) -> list[Finding]:
    """``curl -o x.sh URL && sh x.sh``: a downloaded file run in the same command line."""
    saved: set[str] = set()
    for c in script.commands:
        if c.name in ("curl", "wget", "fetch", "aria2c"):
            for i, a in enumerate(c.args):
                if a.text in ("-o", "-O", "--output", "--output-document") and i + 1 < len(c.args):
                    saved.add(posixpath.basename(c.args[i + 1].text))
                elif a.text.startswith("--output-document=") or a.text.startswith("-O") and len(a.text) > 2:
                    saved.add(posixpath.basename(a.text.split("=", 1)[-1][2 if a.text.startswith("-O") else 0:]))
                elif "://" in a.text:
                    saved.add(posixpath.basename(a.text.split("?", 1)[0]))
            for r in c.redirects:
                if r.writes:
                    saved.add(posixpath.basename(r.target.text))
    saved.discard("")
    if not saved:
        return []
    out: list[Finding] = []
    for c in script.commands:
        runs = None
        if c.name_word.text.startswith(("./", "/")) and posixpath.basename(c.name_word.text) in saved:
            runs = c.name_word
        elif c.name in SHELLS or c.name in ("source", ".") or is_interpreter(c.name):
            runs = next((a for a in c.args if not a.text.startswith("-") and posixpath.basename(a.text) in saved), None)
        if runs is not None:
            out.append(_f("remote.download-exec", runs, f"Runs {runs.text}, a file downloaded in the same command."))
    return out


def check_script(script: Script) -> list[Finding]:
    """All built-in findings for a parsed script (the validator adds user patterns and the allow list)."""
    findings: list[Finding] = []
    for rule, span, message in script.problems:
        findings.append(Finding(rule, RULES[rule].level, span, message + "."))
    for cmd in script.commands:
        findings.extend(check_command(cmd))
    for red in script.redirects:
        findings.extend(check_redirect(red))
    for fn in script.functions:
        findings.extend(check_function(fn))
    for loop in script.loops:
        findings.extend(check_loop(loop))
    findings.extend(check_assignments(script))
    findings.extend(download_exec(script))
    return findings


READ_ONLY = frozenset("""ls cat head tail less more grep egrep fgrep rg ag wc echo printf pwd whoami id uname date
stat file which type du df ps free uptime printenv hostname diff cmp sort uniq cut tr jq yq sha1sum sha256sum
sha512sum md5sum cksum basename dirname realpath readlink test [ [[ true false sleep tree nproc lscpu lsblk lsmod
lsof xxd od hexdump strings column seq cd history man help whereis locate tac nl fold fmt comm join paste expand
look zless zgrep env getconf getent groups w who last dmesg journalctl ss netstat ip awk git tar unzip find
command hash alias declare typeset local export set shopt read :""".split())
_GIT_READ = frozenset("status log diff show branch rev-parse ls-files blame describe remote config tag shortlog "
                      "grep reflog cat-file ls-tree show-ref".split())


def is_read_only(script: Script) -> bool:
    """True when every command only reads (LOW): no writes, no unknown programs."""
    if any(r.writes and r.target.text not in ("/dev/null", "/dev/stderr", "/dev/stdout") for r in script.redirects):
        return False
    for c in script.commands:
        name = c.name
        if name not in READ_ONLY or c.wrappers:
            return False
        argv = c.argv
        if name == "git":          # git -C dir -c key=value log: the subcommand decides
            k = 0
            while k < len(argv) and argv[k].startswith("-"):
                k += 2 if argv[k] in _GIT_GLOBAL_WITH_VALUE else 1
            argv = argv[k:]
        if name == "git" and not (argv and argv[0] in _GIT_READ and not (argv[0] in ("branch", "tag", "remote", "config")
                                                                         and len(argv) > 1 and not argv[1].startswith("-"))):
            return False
        if name == "find" and any(a in ("-delete", "-exec", "-execdir", "-ok", "-fprint", "-fls") for a in argv):
            return False
        if name == "tar" and not any(re.fullmatch(r"-?[tvfzjJ]*t[tvfzjJ]*", a) or a == "--list" for a in argv):
            return False
        if name == "unzip" and not any(a in ("-l", "-v", "-t") for a in argv):
            return False
        if name == "awk" and c.inline_code is not None and re.search(r"system|\|\s*\"|>", c.inline_code.text):
            return False
        if name == "ip" and argv and argv[-1] not in ("show", "list", "addr", "a", "route", "r", "link", "l"):
            return False
        if name == "env" and argv:
            return False
    return True
