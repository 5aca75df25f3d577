"""Programs that run a command given in an option, a variable-like setting or a file: the GTFOBins
family (``tar --checkpoint-action=exec=``, ``git -c core.pager=``, ``ssh -o ProxyCommand=``,
``rsync -e``, ``zip -TT``, ``vim -c '!cmd'``, ``sed 's/x/cmd/e'``, ``make -f`` recipes, ...).

``OPTION_EXEC[name](args)`` and the readers in ``FILE_FED`` return ``(word, is_code)`` pairs:
the text a program will run, as a shell script (``is_code`` false) or as interpreter code whose
shell strings the parser extracts. Pure functions of the arguments; the parser re-parses and
rates what they return like any command.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

from .words import Word, join_words, option_values, skip_options, sub_word


def _tar_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    out = [(w, False) for w in option_values(args, ("--to-command", "--use-compress-program", "-I", "--info-script",
                                                    "--new-volume-script", "-F", "--rsh-command"), ("-I",))]
    for w in option_values(args, ("--checkpoint-action",)):
        m = re.match(r"^(exec|shell)[=:](.*)$", w.text, re.S)
        if m:
            out.append((sub_word(w, m.group(2)), False))
    return out


_GIT_EXEC_KEY = re.compile(r"^(core\.(pager|editor|sshcommand|fsmonitor|askpass|gitproxy)|sequence\.editor"
                           r"|diff\.external|gpg(\.\w+)?\.program|credential(\..*)?\.helper|uploadpack\.packobjectshook"
                           r"|remote\..*\.(uploadpack|receivepack)|pager\..*|alias\..*|filter\..*\.(clean|smudge|process)"
                           r"|diff\..*\.(textconv|command)|merge\..*\.driver|(merge|diff)tool\..*\.cmd|browser\..*\.cmd"
                           r"|web\.browser|sendemail\.(sendmailcmd|smtpserver))$", re.IGNORECASE)


def _git_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    out: list[tuple[Word, bool]] = []
    sub = skip_options(args, frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace"}))
    if sub and sub[0].text == "config":         # git config core.pager 'cmd': runs at the next git log
        ops = [a for a in sub[1:] if not a.text.startswith("-")]
        if len(ops) >= 2 and _GIT_EXEC_KEY.match(ops[0].text):
            value = ops[1].text
            if not (ops[0].text.lower().startswith(("alias.", "credential")) and not value.startswith("!")):
                out.append((sub_word(ops[1], value[1:] if value.startswith("!") else value), False))
    for w in option_values(args, ("-c",)):
        key, _, value = w.text.partition("=")
        if _GIT_EXEC_KEY.match(key) and value.strip():
            if key.lower().startswith(("alias.", "credential")) and not value.startswith("!"):
                continue          # a plain alias is git arguments, a plain helper a git-credential-* name
            out.append((sub_word(w, value[1:] if value.startswith("!") else value), False))
    out.extend((w, False) for w in option_values(args, ("--upload-pack", "--receive-pack", "-u", "--exec"))
               if args and args[0].text in ("clone", "fetch", "pull", "ls-remote", "push", "archive"))
    return out


_SSH_EXEC_OPT = re.compile(r"^(ProxyCommand|LocalCommand|KnownHostsCommand)\s*[= ]\s*(.+)$", re.IGNORECASE | re.S)


def _ssh_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    out: list[tuple[Word, bool]] = []
    for w in option_values(args, ("-o",), ("-o",)):
        m = _SSH_EXEC_OPT.match(w.text.strip())
        if m and m.group(2).strip().lower() != "none":
            out.append((sub_word(w, m.group(2)), False))
    out.extend((w, False) for w in option_values(args, ("-S",)))     # scp/sftp -S program
    return out


def _rsync_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    return [(w, False) for w in option_values(args, ("-e", "--rsh"), ("-e",))]


def _zip_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    return [(w, False) for w in option_values(args, ("-TT", "--unzip-command"))]


def _vim_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``vim -c ':!cmd'``, ``+'!cmd'``, ``--cmd``: ex commands; ``!`` runs a shell, ``system()`` too."""
    cmds = option_values(args, ("-c", "--cmd")) + [sub_word(a, a.text[1:]) for a in args
                                                  if a.text.startswith("+") and not a.text[1:].isdigit()]
    out: list[tuple[Word, bool]] = []
    for w in cmds:
        t = re.sub(r"^[\s:]*(silent!?\s+|exe(c(ute)?)?\s+['\"])?", "", w.text)
        if t.startswith("!"):
            out.append((sub_word(w, t[1:].rstrip("'\"")), False))
        elif re.match(r"^(sh(ell)?|te(rminal)?)\s+\S", t):
            out.append((sub_word(w, t.split(None, 1)[1]), False))
        elif re.search(r"system\(|py(thon)?3?\s|lua\s|perl\s|ruby\s", t):
            out.append((sub_word(w, t), True))
    return out


def _pager_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``less '+!cmd'``: a less command given on the command line; ``!`` runs a shell."""
    return [(sub_word(a, a.text[2:]), False) for a in args if a.text.startswith("+!")]


def _man_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    return [(w, False) for w in option_values(args, ("-P", "--pager", "-H", "--html"), ("-P",))]


_SED_E_CMD = re.compile(r"^\s*(?:\d+|\$|/[^/]*/)?(?:\s*,\s*(?:\d+|\$|/[^/]*/))?\s*!?\s*e\s+(.+)$", re.S)
_SED_S_E = re.compile(r"^\s*(?:\d+|\$|/[^/]*/)?\s*s(.)(?:\\.|(?!\1).)*\1((?:\\.|(?!\1).)*)\1[gpiImM0-9]*e[gpiImM0-9]*\s*$")


def _sed_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """GNU sed's ``e command`` and ``s/x/cmd/e`` run a shell."""
    scripts = option_values(args, ("-e", "--expression"), ("-e",))
    if not scripts and not any(a.text in ("-f", "--file") or a.text.startswith("--file=") for a in args):
        first = next((a for a in args if not a.text.startswith("-")), None)
        scripts = [first] if first is not None else []
    out: list[tuple[Word, bool]] = []
    for w in scripts:
        for part in re.split(r"[;\n]", w.text):
            m = _SED_E_CMD.match(part)
            if m:
                out.append((sub_word(w, m.group(1)), False))
                continue
            m = _SED_S_E.match(part)
            if m and m.group(2).strip():
                out.append((sub_word(w, m.group(2).replace("\\/", "/")), False))
    return out


def _gdb_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    out: list[tuple[Word, bool]] = []
    for w in option_values(args, ("-ex", "--ex", "-eval-command", "--eval-command", "-iex")):
        t = w.text.strip()
        if t.startswith("!") or t.startswith("shell "):
            out.append((sub_word(w, t[1:] if t.startswith("!") else t[6:]), False))
        elif t.startswith(("python", "py ")):
            out.append((sub_word(w, t), True))
    return out


def _apt_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``apt-get -o APT::Update::Pre-Invoke::=CMD``: hooks apt runs as shell commands."""
    out: list[tuple[Word, bool]] = []
    for w in option_values(args, ("-o", "--option"), ("-o",)):
        key, _, value = w.text.partition("=")
        if re.search(r"(Pre|Post)-Invoke|Pre-Install-Pkgs|Post-Invoke-Success", key) and value.strip():
            out.append((sub_word(w, value), False))
    return out


OPTION_EXEC: dict[str, Callable[[list[Word]], list[tuple[Word, bool]]]] = {
    "tar": _tar_exec, "bsdtar": _tar_exec, "gtar": _tar_exec,
    "git": _git_exec,
    "ssh": _ssh_exec, "scp": _ssh_exec, "sftp": _ssh_exec,
    "rsync": _rsync_exec,
    "zip": _zip_exec,
    **{n: _vim_exec for n in ("vi", "vim", "nvim", "view", "vimdiff", "ex", "rvim", "gvim", "evim")},
    "less": _pager_exec, "more": _pager_exec,
    "man": _man_exec,
    "sed": _sed_exec, "gsed": _sed_exec,
    "gdb": _gdb_exec,
    "apt-get": _apt_exec, "apt": _apt_exec,
}


# --- files that tools read commands from (FILE_FED) -------------------------------------------------

def _lines(w: Word) -> list[Word]:
    return [sub_word(w, line.strip()) for line in w.text.splitlines() if line.strip()]


def _make_recipes(w: Word) -> list[tuple[Word, bool]]:
    """Recipe lines of a makefile (tab-indented), without their ``@ - +`` prefixes."""
    return [(sub_word(w, line.lstrip("\t").lstrip("@-+ ")), False) for line in w.text.splitlines()
            if line.startswith("\t") and line.strip()]


def _ssh_config(w: Word) -> list[tuple[Word, bool]]:
    return [item for line in _lines(w) for item in _ssh_exec([Word("-o", w.span), line])]


FILE_FED: dict[str, tuple[tuple[str, ...], Optional[Callable[[Word], list[tuple[Word, bool]]]]]] = {
    "make": (("-f", "--file", "--makefile"), _make_recipes),
    "gmake": (("-f", "--file", "--makefile"), _make_recipes),
    "awk": (("-f", "--file"), None), "gawk": (("-f", "--file"), None), "mawk": (("-f",), None),
    "sed": (("-f", "--file"), lambda w: _sed_exec([Word("-e", w.span), w])),
    "ssh": (("-F",), _ssh_config), "scp": (("-F",), _ssh_config), "sftp": (("-F",), _ssh_config),
    **{n: (("-S", "-u"), lambda w: [i for line in _lines(w) for i in _vim_exec([Word("-c", w.span), line])])
       for n in ("vi", "vim", "nvim", "ex", "view")},
    "gdb": (("-x", "--command"), lambda w: [i for line in _lines(w) for i in _gdb_exec([Word("-ex", w.span), line])]),
}



def _npx_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``npx -c 'cmd'``, ``npm exec -c 'cmd'``: a shell command."""
    return [(w, False) for w in option_values(args, ("-c", "--call"))]


def _tmux_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``tmux new -d 'cmd'``, ``tmux run-shell 'cmd'``: the shell command of a new pane or job."""
    subs = {"new-session", "new", "new-window", "neww", "split-window", "splitw", "run-shell", "run",
            "respawn-pane", "respawnp", "respawn-window", "respawnw", "display-popup", "popup"}
    i = next((k for k, a in enumerate(args) if a.text in subs), None)
    if i is None:
        return []
    rest, skip = [], False
    for a in args[i + 1:]:
        if skip:
            skip = False
        elif a.text.startswith("-") and len(a.text) > 1:
            skip = a.text[-1] in "sncteFxyl" and len(a.text) == 2
        else:
            rest.append(a)
    return [(join_words(rest), False)] if rest else []


def _screen_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``screen -dmS name CMD ARGS``: the program screen starts."""
    i, n = 0, len(args)
    while i < n and args[i].text.startswith("-"):
        t = args[i].text
        i += 2 if t[-1] in "SctTLphXe" and not t.startswith("--") and t not in ("-L",) else 1
    return [(join_words(args[i:]), False)] if i < n else []


def _db_shell_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``psql -c '\\! cmd'``, ``mysql -e 'system cmd'``, ``sqlite3 db '.shell cmd'``: shell escapes."""
    out: list[tuple[Word, bool]] = []
    for w in option_values(args, ("-c", "--command", "-e", "--execute"), ("-e",)) + [a for a in args if a.text.startswith(".")]:
        for part in re.split(r"[;\n]", w.text):
            m = re.match(r"^\s*(?:\\!|system\s|\.shell\s|\.system\s)\s*(.+)$", part)
            if m:
                out.append((sub_word(w, m.group(1)), False))
    return out


def _daemon_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``start-stop-daemon --start --exec PROG -- ARGS``: the program it starts."""
    progs = option_values(args, ("--startas", "-a", "--exec", "-x"))
    if not progs:
        return []
    rest = args[next((i for i, a in enumerate(args) if a.text == "--"), len(args) - 1) + 1:]
    return [(join_words([progs[0], *rest]), False)]


def awk_exec(args: list[Word]) -> list[tuple[Word, bool]]:
    """``awk -v c='reboot' 'BEGIN{system(c)}'``: a -v variable the program hands to a shell."""
    if any(a.text in ("-f", "--file") for a in args):
        return []
    rest = skip_options(args, frozenset({"-F", "-v", "--field-separator", "--assign"}))
    code = rest[0] if rest else None
    out: list[tuple[Word, bool]] = []
    for w in option_values(args, ("-v", "--assign"), ("-v",)):
        name, _, value = w.text.partition("=")
        if code is not None and name and re.search(r"(system\(\s*|\|\s*|\|&\s*)" + re.escape(name) + r"\b"
                                                   r"|\b" + re.escape(name) + r"\s*\|\s*getline", code.text):
            out.append((sub_word(w, value), False))
    return out


OPTION_EXEC.update({"psql": _db_shell_exec, "mysql": _db_shell_exec, "mariadb": _db_shell_exec,
                     "sqlite3": _db_shell_exec, "start-stop-daemon": _daemon_exec,
                     "nano": lambda a: [(w, False) for w in option_values(a, ("-s", "--speller"))],
                     "rpm": lambda a: [(w, True) for w in option_values(a, ("--eval", "-E"))],
                     "dpkg": lambda a: [(w, False) for w in option_values(a, ("--pre-invoke", "--post-invoke"))]})
OPTION_EXEC.update({"npx": _npx_exec, "npm": lambda a: _npx_exec(a) if a and a[0].text in ("exec", "x") else [],
                     "tmux": _tmux_exec, "screen": _screen_exec})
