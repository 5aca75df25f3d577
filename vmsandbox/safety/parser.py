"""Shell parsing for the command policy: a command line -> normalised ``SimpleCommand`` records.

Owns the cached tree-sitter-bash grammar, the walk over every command node (pipelines, lists,
subshells, groups, loop/if/case/function bodies, command and process substitutions, heredocs and
here-strings), word normalisation (quotes, backslashes, ANSI-C strings, ``$IFS``, variables assigned
earlier in the same script), wrapper stripping (sudo, env, timeout, xargs, find -exec, ...) and the
re-parsing of nested scripts (``sh -c``, ``eval``, ``su -c``, text fed to a shell's stdin, shell
strings inside inline interpreter code, option arguments and files that run commands: ``tar
--checkpoint-action=exec=``, ``git -c core.pager=``, ``ssh -o ProxyCommand=``, ... whose tables
are in ``optexec.py``) up to ``MAX_DEPTH``. It also follows the simple dataflow of one command line, in order: the working
directory (``cd``/``pushd``), variables (with ``${X:-default}``, ``read <<<``, ``for`` values,
``set --``), function bodies applied to their call arguments, symlinks made with ``ln -s``, files
written with literal text and then run, and glob command names matched against known commands.
Rules never see tree-sitter nodes.
"""
from __future__ import annotations

import fnmatch
import posixpath
import re
import threading
from dataclasses import dataclass, field
from typing import Optional

import tree_sitter
import tree_sitter_bash

from .optexec import FILE_FED, OPTION_EXEC, awk_exec
from .words import Word
from .words import join_words as _join
from .words import option_values as _opt_values
from .words import skip_options as _skip_options

MAX_DEPTH = 4                      # nested scripts deeper than this are reported, not parsed
_MAX_CODE_STRINGS = 32             # shell strings taken from one inline program

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())
_local = threading.local()         # tree_sitter.Parser is not thread-safe: one per thread


def _parser() -> tree_sitter.Parser:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = tree_sitter.Parser(_LANGUAGE)
    return parser


SHELLS = frozenset("sh bash dash zsh ksh mksh pdksh ash rbash fish csh tcsh yash posh".split())
INTERPRETER_RE = re.compile(
    r"^(python[0-9.]*|pypy[0-9.]*|perl[0-9.]*|ruby[0-9.]*|irb|jruby|node|nodejs|deno|bun|php[0-9.]*"
    r"|lua[0-9.]*|luajit|rscript|tclsh[0-9.]*|pwsh|powershell|[gmn]?awk)$", re.IGNORECASE)
STDIN_SCRIPT_RUNNERS = frozenset({"at", "batch"})   # read a shell script from stdin

# wrapper -> (options that take a value, positional operands before the wrapped command)
_WRAPPERS: dict[str, tuple[frozenset, int]] = {
    "sudo": (frozenset("-u -g -C -D -h -p -r -t -U -T -R --user --group --chdir --close-from --host "
                       "--prompt --role --type --other-user --command-timeout --chroot".split()), 0),
    "doas": (frozenset({"-u", "-C"}), 0),
    "env": (frozenset({"-u", "--unset", "-C", "--chdir", "-P"}), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "ionice": (frozenset({"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"}), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "command": (frozenset(), 0),
    "builtin": (frozenset(), 0),
    "exec": (frozenset({"-a"}), 0),
    "nohup": (frozenset(), 0),
    "setsid": (frozenset(), 0),
    "stdbuf": (frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}), 0),
    "chroot": (frozenset({"--userspec", "--groups"}), 1),
    "nsenter": (frozenset({"-t", "--target", "-S", "--setuid", "-G", "--setgid"}), 0),
    "unshare": (frozenset(), 0),
    "taskset": (frozenset(), 1),
    "chrt": (frozenset(), 1),
    "flock": (frozenset({"-w", "--timeout", "-E", "--conflict-exit-code"}), 1),
    "time": (frozenset({"-f", "--format", "-o", "--output"}), 0),
    "xargs": (frozenset("-I -n -P -d -E -L -s -a --max-args --max-procs --delimiter --arg-file "
                        "--replace --max-lines --max-chars --eof".split()), 0),
    "busybox": (frozenset(), 0),
    "fakeroot": (frozenset({"-l", "-s", "-i", "--lib", "--faked"}), 0),
    "strace": (frozenset("-o -e -p -s -u -E -a -b -I -O -S -P -X".split()), 0),
    "ltrace": (frozenset({"-o", "-e", "-p", "-s", "-u", "-n", "-a"}), 0),
    "valgrind": (frozenset(), 0),
    "firejail": (frozenset(), 0),
    "pkexec": (frozenset({"--user"}), 0),
    "runuser": (frozenset({"-u", "-g", "-G", "--user", "--group", "--supp-group", "-s", "--shell"}), 0),
    "unbuffer": (frozenset(), 0),
    "rlwrap": (frozenset(), 0),
    "torsocks": (frozenset(), 0),
    "proxychains": (frozenset({"-f"}), 0),
    "proxychains4": (frozenset({"-f"}), 0),
    "chronic": (frozenset(), 0),
    "catchsegv": (frozenset(), 0),
    "eatmydata": (frozenset(), 0),
    "systemd-run": (frozenset({"-p", "--property", "-u", "--unit", "-M", "--machine", "-E", "--setenv",
                               "--uid", "--gid", "--nice", "--slice"}), 0),
}
_WRAPPERS.update({
    "ssh-agent": (frozenset({"-a", "-E", "-t", "-P"}), 0),
    "dbus-run-session": (frozenset(), 0),
    "xvfb-run": (frozenset({"-n", "-s", "-f", "-e", "-p"}), 0),
    "prlimit": (frozenset({"-p", "--pid"}), 0),
    "setarch": (frozenset(), 1),
    "logsave": (frozenset(), 1),
    "cpulimit": (frozenset({"-l", "--limit", "-p", "--pid", "-e", "--exe"}), 0),
    "sshpass": (frozenset({"-p", "-f", "-d", "-P"}), 0),
    "multitime": (frozenset({"-n", "-s", "-i", "-o"}), 0),
    "perf": (frozenset({"-e", "--event", "-o", "--output", "-r", "--repeat", "-p", "--pid", "-t", "-C", "-F"}), 1),
})
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
_CHDIR = "cd:"                     # marks `env -C DIR` / `sudo -D DIR` among a command's wrappers
_GLOB_CANDIDATES = 512             # programs a glob command name is followed as, per command
# the dynamic loader runs the program it is given: /lib64/ld-linux-x86-64.so.2 /bin/rm -rf /
_LDSO_RE = re.compile(r"^ld(-linux[\w.-]*|-musl[\w.-]*)?\.so(\.\d+)*$")
_LDSO_SPEC = (frozenset({"--library-path", "--preload", "--argv0", "--audit", "--inhibit-rpath"}), 0)
MAX_LOOP_VALUES = 8                # a for loop's body is followed once per literal value, up to this
_MAX_CALL_DEPTH = 3                # function bodies re-walked for their call arguments, nested this deep
_REWALK_BUDGET = 256               # extra body walks (loop values, function calls) for one command line
_GLOB_RE = re.compile(r"[*?]|\[[^\]/]+\]")

# Command names a glob in a command name (``/bin/r?``, ``/usr/bin/[r]m``) is matched against: the
# programs the rule packs and the nested-script reader know. tests check the rule dispatch is in here.
KNOWN_COMMANDS = frozenset("""
rm unlink rmdir shred wipe srm find rsync mv cp install ln tee truncate sed dd chmod chown chgrp setfacl
kill killall pkill killall5 skill systemctl service rc-service sv invoke-rc.d ssh sshd dropbear scp sftp
shutdown reboot halt poweroff init telinit kexec iptables ip6tables iptables-legacy iptables-nft ebtables
arptables nft ufw firewall-cmd insmod modprobe rmmod sysctl ip ifconfig ifdown nmcli umount mount visudo
sudoedit useradd usermod adduser gpasswd passwd chpasswd chage pwconv vipw vigr setcap setfattr socat nc ncat
netcat nc.openbsd nc.traditional pwncat crontab swapoff swapon history set git tar zip vim vi nvim view ex rvim less more man gdb apt apt-get
curl wget base64 xxd mkfs mkfs.ext2 mkfs.ext3 mkfs.ext4 mkfs.xfs mkfs.btrfs mkfs.vfat mke2fs mkswap mkdosfs
wipefs fdisk sfdisk gdisk sgdisk cfdisk parted blkdiscard cryptsetup eval source su sg trap alias watch
python python3 perl ruby node php lua awk gawk
""".split()) | SHELLS | frozenset(_WRAPPERS)

# Variables whose value a program runs as a command (git, man, less, ssh-askpass, bash's BASH_ENV ...).
COMMAND_VARIABLES = frozenset("""GIT_SSH_COMMAND GIT_PAGER GIT_EDITOR GIT_SEQUENCE_EDITOR GIT_EXTERNAL_DIFF
GIT_ASKPASS SSH_ASKPASS PAGER MANPAGER SYSTEMD_PAGER EDITOR VISUAL PROMPT_COMMAND BASH_ENV ENV LESSOPEN
LESSCLOSE""".split())


@dataclass(eq=False)
class Redirect:
    op: str
    target: Word
    owner: Optional["SimpleCommand"] = None
    cwd: Optional[str] = None            # working directory and symlinks when it is opened
    links: tuple = ()

    @property
    def writes(self) -> bool:
        return ">" in self.op and not self.target.text.isdigit() and self.target.text != "-"


@dataclass(eq=False)
class SimpleCommand:
    """One command after wrapper stripping: ``name`` is the basename, None when not a literal."""
    name: Optional[str]
    name_word: Word
    args: list[Word]
    span: Optional[tuple[int, int]]
    depth: int
    wrappers: tuple[str, ...] = ()
    redirects: list[Redirect] = field(default_factory=list)
    stdin_text: Optional[Word] = None
    upstream: list["SimpleCommand"] = field(default_factory=list)   # earlier pipeline stages
    feeders: list["SimpleCommand"] = field(default_factory=list)    # the stage right before
    background: bool = False
    in_pipeline: bool = False
    inline_code: Optional[Word] = None   # program text of python -c, perl -e, awk, ... or fed on stdin
    script_word: Optional[Word] = None   # the script of sh -c / eval / su -c
    origin: tuple = ()
    cwd: Optional[str] = None            # working directory from earlier cd/pushd ("/etc", "~", "repo")
    links: tuple = ()                    # (link, target) symlinks made earlier in the line
    output: Optional[Word] = None        # what it prints when known (cat of a file written earlier)
    xargs_replace: str = "{}"            # xargs -I STR: the string replaced by each input line

    @property
    def argv(self) -> list[str]:
        return [a.text for a in self.args]

    @property
    def normalised(self) -> str:
        return " ".join([self.name or self.name_word.text, *self.argv])


@dataclass(eq=False)
class FunctionDef:
    name: str
    span: Optional[tuple[int, int]]
    calls: list[SimpleCommand]        # commands in the body that call the function itself


@dataclass(eq=False)
class Loop:
    """A while/until/for loop: ``unbounded`` when its condition is constant (``while true``, ``for ((;;))``)."""
    span: Optional[tuple[int, int]]
    unbounded: bool
    body: list[SimpleCommand]
    spawned: list[SimpleCommand] = field(default_factory=list)   # put in the background inside the body


@dataclass(eq=False)
class Script:
    """Everything the walk found in one command line, nested scripts included."""
    source: str
    commands: list[SimpleCommand] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    functions: list[FunctionDef] = field(default_factory=list)
    problems: list[tuple[str, Optional[tuple[int, int]], str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)        # every script text parsed
    assignments: list[tuple[str, Word]] = field(default_factory=list)   # NAME=value, export/declare too
    unsets: list[tuple[str, Optional[tuple[int, int]]]] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)


def parse_script(source: str) -> Script:
    """Parse ``source`` and everything nested in it. Never raises on bad shell: reports problems."""
    script = Script(source)
    try:
        _Walker(script).run(source, 0, 0, (0, len(source)))
    except RecursionError:      # thousands of nested $( ( { : judged, not analysed
        script.problems.append(("parse.too-complex", (0, len(source)),
                                "The command is nested too deeply to analyse"))
    return script


def command_name(text: str) -> str:
    """The basename a path command runs as: ``/usr/bin/rm`` -> ``rm``."""
    return posixpath.basename(text.rstrip("/")) if "/" in text else text


def is_interpreter(name: Optional[str]) -> bool:
    return bool(name) and bool(INTERPRETER_RE.match(name))


# --- text helpers -----------------------------------------------------------------------------

_ANSI_RE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|.)", re.S)
_ANSI_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r",
                "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def decode_escapes(text: str) -> str:
    """Decode ANSI-C / printf / echo -e escapes (``\\x72``, ``\\162``, ``\\u0072``, ``\\n``)."""
    def one(m: re.Match) -> str:
        e = m.group(1)
        if e[0] in "xuU":
            try:
                return chr(int(e[1:], 16))
            except (ValueError, OverflowError):     # \x with no digits, \U beyond Unicode: as written
                return "\\" + e
        if e[0] in "01234567":
            return chr(int(e, 8) & 0xFF)
        if e[0] == "c" and len(e) == 2:
            return chr(ord(e[1]) & 0x1F)
        return _ANSI_SIMPLE.get(e, "\\" + e)
    return _ANSI_RE.sub(one, text)


_UNQUOTED_ESC = re.compile(r"\\(\n|.)", re.S)
_DQ_ESC = re.compile(r"\\([$`\"\\\n])")


def _unescape_unquoted(raw: str) -> str:
    return _UNQUOTED_ESC.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), raw)


def _unescape_dq(raw: str) -> str:
    return _DQ_ESC.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), raw)


_BRACE_LIST = re.compile(r"\{([^{}\s]*,[^{}\s]*)\}")
_HAS_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]|[0-7]{1,3}|u[0-9A-Fa-f])")

# Strings inside inline code that are handed to a shell.
_EXEC_CALL_RE = re.compile(
    r"\b(system|popen|spawn\w*|exec\w*|check_output|check_call|call|run|Popen|getoutput|getstatusoutput"
    r"|shell_exec|passthru|proc_open|Open3|getline)\b|`|%x[({\[]|\|\s*\"", re.IGNORECASE)
_CODE_STRING_RE = re.compile(r"'((?:[^'\\\n]|\\.)*)'|\"((?:[^\"\\\n]|\\.)*)\"|`([^`]*)`|%x[({\[]([^)}\]]*)[)}\]]")
_CODE_LIST_RE = re.compile(r"\[\s*((?:(?:'[^']*'|\"[^\"]*\")\s*,\s*)+(?:'[^']*'|\"[^\"]*\")\s*,?\s*)\]")


class _Source:
    """One parsed text and how its byte offsets map onto the original command."""

    def __init__(self, text: str, depth: int, base: Optional[int], fallback: Optional[tuple[int, int]]):
        self.text = text
        self.data = text.encode("utf-8", "surrogatepass")
        self.depth = depth
        self.base = base
        self.fallback = fallback
        self._b2c: Optional[list[int]] = None
        if len(self.data) != len(text):
            b2c: list[int] = []
            for i, ch in enumerate(text):
                b2c.extend([i] * len(ch.encode("utf-8", "surrogatepass")))
            b2c.append(len(text))
            self._b2c = b2c

    def span(self, node: tree_sitter.Node) -> Optional[tuple[int, int]]:
        if self.base is None:
            return self.fallback
        s, e = node.start_byte, node.end_byte
        if self._b2c is not None:
            s, e = self._b2c[s], self._b2c[e]
        return (self.base + s, self.base + e)

    def raw(self, node: tree_sitter.Node) -> str:
        return self.data[node.start_byte:node.end_byte].decode("utf-8", "surrogatepass")


class _Walker:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.vars: dict[str, str] = {}
        self.function_stack: list[str] = []
        self.positional: Optional[list[Word]] = None    # $1.. of sh -c, a function call, set --
        self.cwd: Optional[str] = None                  # None: the sandbox's work directory
        self.links: tuple = ()                          # (link, target) from ln -s, in order
        self.files: dict[str, str] = {}                 # path -> literal text written to it
        self.functions: dict[str, tuple] = {}           # name -> (body node, source)
        self.aliases: dict[str, str] = {}               # name -> replacement text
        self.arrays: dict[str, list[str]] = {}          # x=(a b), read -a x
        self.each_vars: set[str] = set()                # read from `find DIR`: every path under DIR
        self.pending_input: Optional[str] = None        # literal stdin of the loop being walked
        self.pending_each = False                       # ... and it lists every path under a root
        self.budget = _REWALK_BUDGET                    # nested loops multiply: bound the work
        self.globs = [_GLOB_CANDIDATES]                 # glob command names too, across nested scripts

    def _spend(self, span: Optional[tuple[int, int]]) -> bool:
        """Take one extra body walk from the budget; when it runs out, say so once (HIGH)."""
        if self.budget > 0:
            self.budget -= 1
            return True
        if self.budget == 0:
            self.budget = -1
            self.script.problems.append(("parse.too-complex", span,
                                         "Loops and function calls multiply past what the policy follows"))
        return False

    # --- entry points ---------------------------------------------------------------------------

    def run(self, text: str, depth: int, base: Optional[int], fallback: Optional[tuple[int, int]]
            ) -> list[SimpleCommand]:
        if depth > MAX_DEPTH:
            self.script.problems.append(("evasion.nesting-too-deep", fallback,
                                         f"Scripts are nested more than {MAX_DEPTH} levels deep"))
            return []
        if "\\\n" in text:      # r\<newline>m is rm: bash drops line continuations before splitting words
            joined = _join_continuations(text)
            if joined != text:
                text, base = joined, None
        self.script.texts.append(text)
        src = _Source(text, depth, base, fallback)
        tree = _parser().parse(src.data)
        root = tree.root_node
        if root.has_error:
            bad = _first_error(root)
            self.script.problems.append(("parse.error", src.span(bad) if bad else fallback,
                                         "The command is not valid shell syntax"))
            expanded = _BRACE_LIST.sub(lambda m: " ".join(m.group(1).split(",")), text)
            if expanded != text:   # {rm,-rf,/} is brace expansion: read it as bash would
                self.script.problems.append(("evasion.obfuscated-command", fallback,
                                             "Brace expansion builds the command"))
                return self.run(expanded, depth + 1, None, src.span(root))
        return self._walk(root, src)

    def nested(self, word: Word, text: str, src: _Source) -> list[SimpleCommand]:
        """Parse ``text`` (taken from ``word``) as a script one level deeper."""
        base = None
        if word.span is not None and text:
            idx = self.script.source.find(text, word.span[0], word.span[1])
            base = idx if idx >= 0 else None
        return self.run(text, src.depth + 1, base, word.span)

    # --- tree walk ------------------------------------------------------------------------------

    def _walk(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        t = node.type
        if t == "command":
            return self._command(node, src)
        if t == "pipeline":
            return self._pipeline(node, src)
        if t == "redirected_statement":
            return self._redirected(node, src)
        if t == "function_definition":
            return self._function(node, src)
        if t == "variable_assignment":
            return self._assignment(node, src)
        if t == "for_statement":
            return self._for(node, src)
        if t in ("while_statement", "c_style_for_statement"):
            return self._loop(node, src)
        if t == "unset_command":
            for c in node.children:
                if c.type in ("variable_name", "word"):
                    name = src.raw(c)
                    self.vars.pop(name, None)
                    self.script.unsets.append((name, src.span(c)))
            return []
        out: list[SimpleCommand] = []
        children = node.children
        for i, child in enumerate(children):
            cmds = self._walk(child, src)
            if i + 1 < len(children) and children[i + 1].type == "&":
                for c in cmds:
                    c.background = True
            out.extend(cmds)
        return out

    def _assignment(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        name_node = node.child_by_field_name("name")
        value_node = node.child_by_field_name("value")
        name = src.raw(name_node) if name_node is not None else ""
        if value_node is None:
            self.vars[name] = ""
            return []
        self.each_vars.discard(name)
        if value_node.type == "array":              # x=(/ /etc): ${x[@]}, ${x[1]}, $x (the first)
            words = [w for c in value_node.named_children for w in self._words(c, src)]
            self.arrays[name] = [w.text for w in words]
            if words and all(w.literal for w in words):
                self.vars[name] = words[0].text
            else:
                self.vars.pop(name, None)
                self.arrays.pop(name, None)
            return [c for w in words for c in w.inner]
        value = self._word(value_node, src)
        if value.literal:
            self.vars[name] = value.text
        else:
            self.vars.pop(name, None)
        return list(value.inner) + self._assigned(name, value, src)

    def _assigned(self, name: str, value: Word, src: _Source) -> list[SimpleCommand]:
        """Record ``NAME=value``; a variable that a program runs as a command is parsed as one."""
        self.script.assignments.append((name, value))
        if name in COMMAND_VARIABLES and value.text.strip():
            text = value.text.lstrip("|-") if name.startswith("LESS") else value.text   # LESSOPEN='|cmd %s'
            return self.nested(value, text, src)
        return []

    def _for(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        """``for v in a b; do BODY; done``: BODY is followed once per literal value (up to a cap)."""
        var, values, body, out = None, [], None, []
        seen_in = False
        for c in node.children:
            if c.type == "variable_name" and var is None:
                var = src.raw(c)
            elif c.type == "in":
                seen_in = True
            elif c.type == "do_group":
                body = c
            elif seen_in and c.is_named and c.type != "comment":
                ws = self._expand_positional(c, src) or self._words(c, src)
                for w in ws:
                    out.extend(w.inner)
                values.extend(ws)
        if not seen_in:
            values = list(self.positional or [])
        if body is None or var is None:
            return out
        bodies: list[SimpleCommand] = []
        literal = [v for v in values if v.literal][:MAX_LOOP_VALUES]
        if not values or any(not v.literal for v in values):
            self.vars.pop(var, None)
            bodies.extend(self._walk(body, src))
        for k, v in enumerate(literal):
            if k > 0 and not self._spend(src.span(node)):
                break
            self.vars[var] = v.text
            bodies.extend(self._walk(body, src))
        self.script.loops.append(Loop(src.span(node), False, bodies))
        return out + bodies

    def _loop(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        """while/until and ``for ((...))``: the body, plus whether the condition never ends the loop."""
        cond: list[SimpleCommand] = []
        body: list[SimpleCommand] = []
        keyword = node.children[0].type if node.children else ""
        unbounded = False
        if node.type == "c_style_for_statement":
            semis = [i for i, c in enumerate(node.children) if c.type == ";"]
            middle = node.children[semis[0] + 1:semis[1]] if len(semis) >= 2 else [None]
            unbounded = not [c for c in middle if c is not None and c.is_named]
        constant_tests = 0
        constant: list[SimpleCommand] = []
        for c in node.children:
            if c.type == "do_group" or c.type == "compound_statement" and node.type == "c_style_for_statement":
                body.extend(self._walk(c, src))
            elif node.type == "while_statement" and c.type == "compound_statement" and \
                    [n.type for n in c.named_children] == ["number"] and src.raw(c.named_children[0]) != "0":
                constant_tests += 1                 # while (( 1 ))
            elif node.type == "while_statement" and c.type == "negated_command":
                negated = self._walk(c, src)        # while ! false: as constant as while true
                cond.extend(negated)
                if len(negated) == 1 and negated[0].name == ("true" if keyword == "until" else "false"):
                    constant.extend(negated)
            elif node.type == "while_statement" and c.is_named:
                if c.type == "test_command" and _static_test(c, src) is (keyword == "while"):
                    constant_tests += 1          # while [ 1 ], while [ 1 -eq 1 ], until [ 0 -eq 1 ]
                cond.extend(self._walk(c, src))
        if node.type == "while_statement":
            unbounded = (bool(cond) or constant_tests > 0) and \
                all(c in constant or _constant_condition(c, keyword == "until") for c in cond)
        # only a `&` inside the body spawns per pass; `(while ...; done) &` backgrounds the loop once
        self.script.loops.append(Loop(src.span(node), unbounded, body, [c for c in body if c.background]))
        return cond + body

    def _function(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        name_node = node.child_by_field_name("name")
        name = _unescape_unquoted(src.raw(name_node)) if name_node is not None else ""
        body = node.child_by_field_name("body")
        self.function_stack.append(name)
        try:
            cmds = self._walk(body, src) if body is not None else []
        finally:
            self.function_stack.pop()
        calls = [c for c in cmds if c.name == name]
        self.script.functions.append(FunctionDef(name, src.span(node), calls))
        if body is not None:
            self.functions[name] = (body, src)
        return cmds

    def _call(self, cmd: SimpleCommand) -> list[SimpleCommand]:
        """A call of a function defined earlier: walk its body again with ``$1 $@ ...`` bound."""
        body, src = self.functions[cmd.name]
        if cmd.name in self.function_stack or len(self.function_stack) >= _MAX_CALL_DEPTH \
                or not self._spend(cmd.span):
            return []
        saved_vars, saved_pos = dict(self.vars), self.positional
        self._bind(cmd.args)
        self.function_stack.append(cmd.name)
        try:
            return self._walk(body, src)
        finally:
            self.function_stack.pop()
            for k in [k for k in self.vars if k.isdigit() or k in ("@", "*", "#")]:
                self.vars.pop(k)
            self.vars.update({k: v for k, v in saved_vars.items() if k.isdigit() or k in ("@", "*", "#")})
            self.positional = saved_pos

    def _bind(self, args: list[Word]) -> None:
        """Set the positional parameters ``$1 ... $@ $* $#``."""
        self.positional = list(args)
        for k in [k for k in self.vars if k.isdigit() and k != "0"]:
            self.vars.pop(k)
        for i, a in enumerate(args, 1):
            if a.literal:
                self.vars[str(i)] = a.text
        if all(a.literal for a in args):
            self.vars["@"] = self.vars["*"] = " ".join(a.text for a in args)
        else:
            self.vars.pop("@", None)
            self.vars.pop("*", None)
        self.vars["#"] = str(len(args))

    def _pipeline(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        stages = [c for c in node.children if c.type not in ("|", "|&")]
        out: list[SimpleCommand] = []
        previous: list[SimpleCommand] = []
        for stage in stages:
            saved = self.pending_input, self.pending_each
            if previous:
                self.pending_input = _emitted_line(previous)      # echo / | read x; ls / | while read d
                self.pending_each = any(c.name == "find" for c in previous)
            try:
                cmds = self._walk(stage, src)
            finally:
                self.pending_input, self.pending_each = saved
            self._link(out, previous, cmds, src)
            out.extend(cmds)
            previous = cmds
        return out

    def _link(self, upstream: list[SimpleCommand], feeders: list[SimpleCommand],
              cmds: list[SimpleCommand], src: _Source) -> None:
        """Connect a pipeline stage to what runs before it; feed literal text into shells."""
        for c in cmds:
            c.in_pipeline = True
            c.upstream.extend(upstream + feeders)
            c.feeders.extend(feeders)
        for f in feeders:
            f.in_pipeline = True
        if not feeders:
            return
        for c in list(cmds):
            if c.origin and c is not _primary(cmds, c.origin):
                continue
            for f in feeders:
                if _xargs_input(c, _emitted_args(f)):
                    cmds.extend(self._nested_of(c, src))    # xargs -I% sh -c '%': the script is known now
            for f in feeders:
                text = _emitted_text(f)
                if text is not None:
                    cmds.extend(self._feed(c, text, src))
                    if c.name == "tee":                     # echo CMD | tee x.sh: x.sh holds CMD
                        for a in c.args:
                            if not a.text.startswith("-"):
                                self._wrote(a.text, text.text if text.literal else None,
                                            "-a" in c.argv or "--append" in c.argv)
                                if text.literal:
                                    cmds.extend(self._runs_later(a.text, text, src))
                    if c.name == "crontab" and text.literal:  # echo '* * * * * CMD' | crontab -
                        for line in _cron_commands(text.text):
                            cmds.extend(self.nested(text, line, src))

    def _redirected(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        body = node.child_by_field_name("body")
        saved = self.pending_input
        if body is not None and body.type == "while_statement":    # while read x; do ...; done <<< /srv
            for child in node.children:
                if child.type == "herestring_redirect":
                    words = [c for c in child.children if c.is_named]
                    if words and words[0].type in ("word", "raw_string"):
                        self.pending_input = _plain(src.raw(words[0]))
                elif child.type == "heredoc_redirect":
                    hb = next((c for c in child.children if c.type == "heredoc_body"), None)
                    if hb is not None:
                        self.pending_input = src.raw(hb).split("\n", 1)[0]
                elif child.type == "file_redirect" and "<" in [src.raw(c) for c in child.children if not c.is_named]:
                    dest = child.child_by_field_name("destination")
                    if dest is not None and dest.type == "process_substitution":      # done < <(echo /)
                        inner = [c for c in dest.named_children]
                        if len(inner) == 1 and inner[0].type == "command":
                            probe = _Walker(Script(self.script.source))   # a dry walk into a scratch script
                            probe.vars = dict(self.vars)
                            probed = probe._walk(inner[0], src)
                            self.pending_input = _emitted_line(probed)
                            self.pending_each = any(c.name == "find" for c in probed)
                    elif dest is not None and dest.type == "word" and self._abspath(_plain(src.raw(dest))) in self.files:
                        self.pending_input = self.files[self._abspath(_plain(src.raw(dest)))].split("\n", 1)[0]
        try:
            cmds = self._walk(body, src) if body is not None else []
        finally:
            self.pending_input = saved
            self.pending_each = False
        target = body
        while target is not None and target.type == "list" and target.named_children:
            target = target.named_children[-1]     # `cd x && echo y > f` parses as (cd && echo) > f
        owners = [c for c in cmds if target is not None and c.origin == (id(src), target.start_byte, target.end_byte)]
        owner = owners[0] if owners else None
        extra: list[SimpleCommand] = []
        for child in node.children:
            if child == body:
                continue
            extra.extend(self._redirect(child, src, owner, cmds))
        if owner is not None:
            for red in owner.redirects:                # echo 'rm -rf /' > x.sh: x.sh holds that text
                if red.writes and red.op in (">", ">>", ">|", "&>", "&>>"):
                    text = _emitted_text(owner)
                    self._wrote(red.target.text, text.text if text is not None and text.literal else None,
                                red.op.endswith(">>"))
                    if text is not None and text.literal:
                        extra.extend(self._runs_later(red.target.text, text, src))
        return cmds + extra

    def _runs_later(self, path: str, text: Word, src: _Source) -> list[SimpleCommand]:
        """Text written to a file the system runs later (shell start-up files, cron, init scripts,
        systemd units): parse the commands it will run."""
        path = self._abspath(path)
        if _RC_FILE_RE.search(path):
            return self.nested(text, text.text, src)
        if _CRON_FILE_RE.search(path):
            user_field = not path.startswith("/var/spool/")
            return [c for line in _cron_commands(text.text, user_field) for c in self.nested(text, line, src)]
        if path.endswith((".service", ".timer", ".socket")):
            return [c for m in re.finditer(r"^\s*Exec\w*\s*=\s*[-@+!:]*(.+)$", text.text, re.M)
                    for c in self.nested(text, m.group(1), src)]
        return []

    def _wrote(self, path: str, text: Optional[str], append: bool) -> None:
        key = self._abspath(path)
        if text is None:
            self.files.pop(key, None)
        else:
            self.files[key] = (self.files.get(key, "") + "\n" if append and key in self.files else "") + text

    def _abspath(self, path: str) -> str:
        """``path`` against the tracked working directory, normalised (relative if that is unknown)."""
        if self.cwd and not path.startswith(("/", "~", "$")):
            path = posixpath.join(self.cwd, path)
        return posixpath.normpath(path) if path else path

    def _redirect(self, node: tree_sitter.Node, src: _Source, owner: Optional[SimpleCommand],
                  owned: list[SimpleCommand]) -> list[SimpleCommand]:
        t = node.type
        out: list[SimpleCommand] = []
        if t == "file_redirect":
            op, target = "", None
            for c in node.children:
                if c.type in ("file_descriptor", "ERROR"):
                    continue
                if not c.is_named and not op:
                    op = src.raw(c)
                elif c.is_named and target is None and op:
                    target = self._word(c, src)
            if target is None:
                return out
            out.extend(target.inner)
            red = Redirect(op, target, owner, self.cwd, self.links)
            self.script.redirects.append(red)
            if owner is not None:
                owner.redirects.append(red)
                if op == "<" and target.inner:           # sh < <(curl ...)
                    self._link([], list(target.inner), [owner], src)
                elif op == "<" and self._abspath(target.text) in self.files:   # sh < x.sh written earlier
                    text = Word(self.files[self._abspath(target.text)], target.span)
                    if _xargs_input(owner, [Word(t, target.span) for t in text.text.split()]):
                        out.extend(self._nested_of(owner, src))
                    out.extend(self._feed(owner, text, src))
        elif t == "herestring_redirect":
            word_nodes = [c for c in node.children if c.is_named]
            if word_nodes:
                w = self._word(word_nodes[0], src)
                out.extend(w.inner)
                if owner is not None:
                    owner.stdin_text = w
                    if owner.name == "read" and w.literal:
                        self._read(owner, w.text)
                    if _xargs_input(owner, [Word(t, w.span, w.literal, w.dynamic) for t in w.text.split()]):
                        out.extend(self._nested_of(owner, src))
                    out.extend(self._feed(owner, w, src))
        elif t == "heredoc_redirect":
            body_node = next((c for c in node.children if c.type == "heredoc_body"), None)
            if body_node is not None:
                w = Word(src.raw(body_node), src.span(body_node), True)
                out.extend(self._walk(body_node, src))   # substitutions in unquoted heredocs run
                if owner is not None:
                    owner.stdin_text = w
                    out.extend(self._feed(owner, w, src))
            for c in node.children:                      # cat <<EOF | sh  /  cat <<EOF && x
                if c.type == "pipeline":
                    stage_nodes = [s for s in c.children if s.type not in ("|", "|&")]
                    previous = [owner] if owner else owned
                    upstream = list(owned)
                    for stage in stage_nodes:
                        cmds = self._walk(stage, src)
                        self._link(upstream, previous, cmds, src)
                        upstream.extend(previous)
                        out.extend(cmds)
                        previous = cmds
                elif c.is_named and c.type not in ("heredoc_start", "heredoc_body", "heredoc_end"):
                    out.extend(self._walk(c, src))
        else:
            out.extend(self._walk(node, src))
        return out

    # --- commands -------------------------------------------------------------------------------

    def _command(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        name_word: Optional[Word] = None
        args: list[Word] = []
        herestrings: list[tree_sitter.Node] = []
        other: list[SimpleCommand] = []
        for child in node.children:
            t = child.type
            if t == "variable_assignment":
                value = child.child_by_field_name("value")
                var = child.child_by_field_name("name")
                if value is not None:
                    w = self._word(value, src)
                    other.extend(w.inner)
                    if var is not None:
                        other.extend(self._assigned(src.raw(var), w, src))
                        if w.literal:       # X=/ sh -c 'rm -rf $X': the child sees it (kept after, conservatively)
                            self.vars[src.raw(var)] = w.text
            elif t == "command_name":
                inner = child.children[0] if child.children else child
                words = self._words(inner, src)
                name_word, args = words[0], words[1:] + args
            elif t == "herestring_redirect":
                herestrings.append(child)
            elif t in ("file_redirect", "heredoc_redirect"):
                pass   # handled by _redirected
            elif child.is_named:
                args.extend(self._expand_positional(child, src) or self._words(child, src))
        if name_word is None:
            return other
        for w in [name_word, *args]:
            other.extend(w.inner)
        if name_word.dynamic and (" " in name_word.text.strip() or "\t" in name_word.text):
            # rm${IFS}-rf${IFS}/ : the shell splits the expanded word; so do we
            self.script.problems.append(("evasion.obfuscated-command", name_word.span,
                                         "The command name is hidden with $IFS or escapes"))
            text = " ".join(w.text for w in [name_word, *args])
            return self.run(text, src.depth + 1, None, src.span(node)) + other
        origin = (id(src), node.start_byte, node.end_byte)
        primary: list[SimpleCommand] = []
        for name_w, argv, wrappers in _unwrap(name_word, args, self.globs):
            name = command_name(name_w.text) if name_w.literal else None
            primary.append(SimpleCommand(name, name_w, argv, src.span(node), src.depth,
                                         tuple(wrappers), origin=origin))
            if "xargs" in wrappers:
                rs = _opt_values(args, ("-I", "--replace", "-i"), ("-I", "-i"))
                primary[-1].xargs_replace = rs[0].text if rs and rs[0].text else "{}"
        out: list[SimpleCommand] = []
        if name_word.glob and _GLOB_RE.search(command_name(name_word.text)) and primary[0].name in KNOWN_COMMANDS:
            self.script.problems.append((
                "evasion.glob-command", name_word.span,
                f"The command name {name_word.text!r} is a glob that can run "
                + ", ".join(sorted({c.name for c in primary if c.name})[:6])))
        for cmd in primary:
            cmd.cwd, cmd.links = self.cwd, self.links
            chdirs = [w[len(_CHDIR):] for w in cmd.wrappers if w.startswith(_CHDIR)]
            if chdirs:
                cmd.cwd = self._abspath(chdirs[-1])
                cmd.wrappers = tuple(w for w in cmd.wrappers if not w.startswith(_CHDIR))
            self.script.commands.append(cmd)
            out.append(cmd)
            out.extend(self._nested_of(cmd, src))
        for h in herestrings:
            out.extend(self._redirect(h, src, primary[0], primary))
        for cmd in primary:
            out.extend(self._effects(cmd, src))
        return out + other

    def _expand_positional(self, node: tree_sitter.Node, src: _Source) -> Optional[list[Word]]:
        """``"$@"`` / ``$*`` with known positional parameters, ``"${x[@]}"`` of a known array:
        one word per parameter or element."""
        if self.positional is None and not self.arrays:
            return None
        inner = node
        if node.type == "string":
            named = [c for c in node.children if c.is_named]
            if len(named) != 1:
                return None
            inner = named[0]
        m = re.fullmatch(r"\$\{(\w+)\[@\]\}", src.raw(inner))
        if m and m.group(1) in self.arrays:             # "${x[@]}": one word per element
            return [Word(t, src.span(node), True, True) for t in self.arrays[m.group(1)]]
        if self.positional is None or inner.type != "simple_expansion" or src.raw(inner) not in ("$@", "$*"):
            return None
        span = src.span(node)
        return [Word(a.text, span, a.literal, True, (), a.glob, a.each) for a in self.positional]

    def _words(self, node: tree_sitter.Node, src: _Source) -> list[Word]:
        """One word as the shell splits it: unquoted brace lists expand (``/{etc,usr}``), and an
        unquoted expansion is split on whitespace (``$(echo /etc /usr)``)."""
        w = self._word(node, src)
        if node.type not in ("word", "concatenation", "simple_expansion", "expansion", "command_substitution"):
            return [w]
        unquoted = "".join(src.raw(c) if c.type == "word" else "\0" for c in node.children) \
            if node.type == "concatenation" else src.raw(node) if node.type == "word" else ""
        if "{" in unquoted and "," in unquoted and _BRACE_LIST.search(unquoted):
            texts = _brace_expand(w.text)
            if len(texts) > 1:
                return [Word(t, w.span, w.literal, True, w.inner if i == 0 else (), w.glob) for i, t in enumerate(texts)]
        if w.dynamic and w.literal and len(w.text.split()) > 1 and not _has_quoted(node):
            return [Word(t, w.span, w.literal, True, w.inner if i == 0 else (), w.glob) for i, t in enumerate(w.text.split())]
        return [w]

    def _effects(self, cmd: SimpleCommand, src: _Source) -> list[SimpleCommand]:
        """What a command changes for the commands after it: cwd, symlinks, variables; and the
        function bodies and written files it runs."""
        name, args = cmd.name, cmd.args
        if name in ("cd", "pushd", "popd", "chdir"):
            ops = [a for a in args if not (a.text.startswith("-") and len(a.text) > 1)]
            target = ops[0].text if ops else "~"
            home = re.match(r"^(\$HOME|\$\{HOME\})(?=/|$)", target)
            if home:
                target = "~" + target[home.end():]
            if name == "popd" or ops and (target == "-" or not ops[0].literal and not home):
                self.cwd = None
            else:
                self.cwd = self._abspath(target)
        elif name == "ln" and any(a.text in ("-s", "--symbolic") or a.text.startswith("-") and
                                  not a.text.startswith("--") and "s" in a.text for a in args):
            ops = [a for a in args if not a.text.startswith("-")]
            if ops and all(a.literal for a in ops):
                target = ops[0].text
                link = ops[1].text if len(ops) > 1 else posixpath.basename(target.rstrip("/"))
                if link.endswith("/"):
                    link += posixpath.basename(target.rstrip("/"))
                self.links = self.links + ((self._abspath(link), target),)
        elif name == "mount" and any(a.text in ("--bind", "-B", "--rbind", "-R") or
                                     a.text.startswith("-o") and "bind" in a.text for a in args):
            ops = [a for a in args if not a.text.startswith("-") and "bind" not in a.text]
            if len(ops) >= 2 and all(a.literal for a in ops[-2:]):     # like a symlink: DST/ shows SRC
                self.links = self.links + ((self._abspath(ops[-1].text), ops[-2].text),)
        elif name == "set" and args and args[0].text == "--":
            self._bind(args[1:])
        elif name == "printf" and len(args) >= 3 and args[0].text == "-v":     # printf -v x %s /
            text = _emitted_text(SimpleCommand("printf", cmd.name_word, args[2:], cmd.span, cmd.depth))
            if text is not None and text.literal:
                self.vars[args[1].text] = text.text
            else:
                self.vars.pop(args[1].text, None)
        elif name == "alias":
            for a in args:
                if "=" in a.text:
                    k, _, v = a.text.partition("=")
                    self.aliases[k] = v
        elif name == "cat" and self.files:
            ops = [a for a in args if not a.text.startswith("-")]
            if ops and all(self._abspath(a.text) in self.files for a in ops):
                cmd.output = Word("\n".join(self.files[self._abspath(a.text)] for a in ops), ops[0].span)
        elif name in ("cp", "mv", "install") and self.files:
            ops = [a for a in args if not a.text.startswith("-")]
            if len(ops) == 2 and self._abspath(ops[0].text) in self.files:
                text = self.files[self._abspath(ops[0].text)]
                self._wrote(ops[1].text, text, False)
                self._wrote(posixpath.join(ops[1].text, posixpath.basename(ops[0].text)), text, False)
        if name in self.aliases and name not in self.function_stack and self._spend(cmd.span):
            text = " ".join([self.aliases[name], *(a.text for a in args)])
            self.function_stack.append(name)        # alias x='x ...' does not expand again
            try:
                return self.nested(cmd.name_word, text, src)
            finally:
                self.function_stack.pop()
        elif name == "read" and cmd.stdin_text is None and self.pending_input is not None:
            self._read(cmd, self.pending_input)
        if name == "git" and self.files:            # a hook written earlier runs on commit, push, checkout ...
            hooks = [t for path, t in self.files.items() if _HOOK_RE.search(path)]
            return [c for t in hooks for c in self.nested(cmd.name_word, t, src)]
        if name in self.functions:
            return self._call(cmd)
        return self._run_written(cmd, src) + self._file_fed(cmd, src) + self._crontab_file(cmd, src)

    def _crontab_file(self, cmd: SimpleCommand, src: _Source) -> list[SimpleCommand]:
        ops = [a for a in cmd.args if not a.text.startswith("-")]
        text = self.files.get(self._abspath(ops[0].text)) if cmd.name == "crontab" and ops else None
        return [c for line in _cron_commands(text or "") for c in self.nested(ops[0], line, src)]

    def _file_fed(self, cmd: SimpleCommand, src: _Source) -> list[SimpleCommand]:
        """Tools that run commands from a file written earlier in the line: ``make -f``, ``awk -f``,
        ``sed -f``, ``ssh -F``, ``vim -S``, ``gdb -x``."""
        feed = FILE_FED.get(cmd.name or "")
        if feed is None or not self.files:
            return []
        options, reader = feed
        given = _opt_values(cmd.args, options)
        if not given and cmd.name in ("make", "gmake"):
            given = [Word(n, cmd.span) for n in ("GNUmakefile", "makefile", "Makefile")]
        out: list[SimpleCommand] = []
        for w in given:
            text = self.files.get(self._abspath(w.text))
            if text is None:
                continue
            if reader is None:                      # awk -f: the file is the program
                cmd.inline_code = Word(text, w.span)
                out.extend(self._code_strings(cmd.inline_code, src))
                continue
            for script, is_code in reader(Word(text, w.span)):
                out.extend(self._code_strings(script, src) if is_code else self.nested(script, script.text, src))
        return out

    def _run_written(self, cmd: SimpleCommand, src: _Source) -> list[SimpleCommand]:
        """``sh x.sh``, ``. ./x.sh``, ``./x.sh`` of a file written with literal text earlier in the line."""
        if not self.files:
            return []
        runs: Optional[Word] = None
        if "/" in cmd.name_word.text and self._abspath(cmd.name_word.text) in self.files:
            runs = cmd.name_word
        elif cmd.name in SHELLS and _shell_script(cmd.args) is None or cmd.name in ("source", ".") \
                or is_interpreter(cmd.name):
            runs = next((a for a in cmd.args if not a.text.startswith(("-", "+"))), None)
        if runs is None or self._abspath(runs.text) not in self.files:
            return []
        text = Word(self.files[self._abspath(runs.text)], runs.span)
        if is_interpreter(cmd.name):
            cmd.inline_code = text
            return self._code_strings(text, src)
        cmd.script_word = text
        return self.nested(text, text.text, src)

    def _read(self, cmd: SimpleCommand, text: str) -> None:
        """``read a b <<< 'x y z'``: a=x, b='y z' (the first line; REPLY when no name is given)."""
        names: list[str] = []
        skip, array = False, None
        for k, a in enumerate(cmd.args):
            if skip:
                skip = False
            elif a.text == "-a" and k + 1 < len(cmd.args):
                array = cmd.args[k + 1].text
                skip = True
            elif a.text in ("-p", "-d", "-n", "-N", "-t", "-u", "-i"):
                skip = True
            elif not a.text.startswith("-"):
                names.append(a.text)
        if array is not None:                       # read -a x <<< '/ /etc'
            self.arrays[array] = text.split("\n", 1)[0].split()
            self.vars[array] = self.arrays[array][0] if self.arrays[array] else ""
            return
        names = names or ["REPLY"]
        line = text.split("\n", 1)[0]
        ifs = self.vars.get("IFS")
        if ifs and ifs.strip():                     # IFS=, read a b <<< 'x,y'
            line = re.sub("[" + re.escape(ifs.strip()) + "]", " ", line)
        fields = line.split(None, len(names) - 1)
        for i, n in enumerate(names):
            self.vars[n] = fields[i] if i < len(fields) else ""
            if self.pending_each and i == 0:
                self.each_vars.add(n)               # find DIR | while read f: f is every path under DIR
            else:
                self.each_vars.discard(n)

    def _nested_of(self, cmd: SimpleCommand, src: _Source) -> list[SimpleCommand]:
        """Scripts a command runs: sh -c, eval, su -c, trap, alias, watch, inline interpreter code."""
        name = cmd.name
        args = cmd.args
        script: Optional[Word] = None
        if name in SHELLS:
            script = _shell_script(args)
        elif name == "eval" and args:
            script = _join(args)
        elif name in ("su", "runuser", "script", "flock", "sg"):
            script = _option_value(args, ("-c", "--command"))
            if script is None and name == "sg" and len(args) >= 2:
                script = _join(args[1:])
        elif name == "trap" and args and args[0].text not in ("-", "-p", "-l"):
            script = args[0]
        elif name == "alias":
            parts = [Word(a.text.split("=", 1)[1], a.span, a.literal, a.dynamic, a.inner)
                     for a in args if "=" in a.text]
            script = _join(parts) if parts else None
        elif name == "watch":
            rest = _skip_options(args, frozenset({"-n", "--interval", "-d", "--differences"}))
            script = _join(rest) if rest else None
        elif name == "env":
            script = _option_value(args, ("-S", "--split-string"))
        elif is_interpreter(name):
            code = _interpreter_code(name, args)
            extra = [c for w, _ in (awk_exec(args) if name.lower().endswith("awk") else [])
                     for c in self.nested(w, w.text, src)]
            if code is not None:
                cmd.inline_code = code
                return self._code_strings(code, src) + extra
            return extra
        elif name in OPTION_EXEC:          # tar --checkpoint-action=exec=..., git -c core.pager=... (GTFOBins)
            out: list[SimpleCommand] = []
            for w, is_code in OPTION_EXEC[name](args):
                if cmd.script_word is None:
                    cmd.script_word = w
                out.extend(self._code_strings(w, src) if is_code else self.nested(w, w.text, src))
            return out
        if script is None and (name in SHELLS or name in ("source", ".")):
            # source <(echo 'rm -rf /'), bash <(printf ...): run what the substitution prints
            first = next((a for a in args if not a.text.startswith(("-", "+"))), None)
            if first is not None and first.text.startswith("<(") and first.inner:
                out = []
                for inner in first.inner:
                    text = _emitted_text(inner)
                    if text is not None and text.literal:
                        out.extend(self.nested(first, text.text, src))
                return out
        if script is None:
            return []
        cmd.script_word = script
        if name in SHELLS:   # sh -c 'script' $0 $1 ...: the positional parameters are known
            after = cmd.args[next(i for i, a in enumerate(cmd.args) if a is script) + 1:]
            saved, saved_pos = dict(self.vars), self.positional
            if after:
                self._bind(after[1:])
                if after[0].literal:
                    self.vars["0"] = after[0].text
            try:
                return self.nested(script, script.text, src)
            finally:
                self.vars, self.positional = saved, saved_pos
        return self.nested(script, script.text, src)

    def _feed(self, cmd: SimpleCommand, text: Word, src: _Source) -> list[SimpleCommand]:
        """Literal text arrives on ``cmd``'s stdin: parse it if ``cmd`` runs it as code."""
        if cmd.name in ("ed", "red", "ex", "ftp", "sftp", "gdb", "mysql", "psql", "sqlite3"):
            # their ! (\! in psql/mysql, .shell in sqlite3) commands run a shell
            return [c for line in text.text.splitlines()
                    for m in [re.match(r"^\s*(?:!|\\!|\.shell\s|\.system\s|system\s|shell\s)\s*(.+)$", line)] if m
                    for c in self.nested(text, m.group(1), src)]
        if cmd.name in SHELLS or cmd.name in STDIN_SCRIPT_RUNNERS or cmd.name in ("source", "."):
            if cmd.name in SHELLS and _shell_script(cmd.args) is not None:
                return []
            return self.nested(text, text.text, src)
        if is_interpreter(cmd.name) and cmd.inline_code is None and reads_code_from_stdin(cmd):
            cmd.inline_code = text
            return self._code_strings(text, src)
        return []

    def _code_strings(self, code: Word, src: _Source) -> list[SimpleCommand]:
        """Shell commands inside inline code: strings handed to system(), popen(), backticks..."""
        text = code.text
        if not _EXEC_CALL_RE.search(text):
            return []
        out: list[SimpleCommand] = []
        found: list[str] = []
        for m in _CODE_LIST_RE.finditer(text):             # subprocess.run(['rm', '-rf', '/'])
            found.append(" ".join(s[1:-1] for s in re.findall(r"'[^']*'|\"[^\"]*\"", m.group(1))))
        for m in _CODE_STRING_RE.finditer(text):
            s = next(g for g in m.groups() if g is not None)
            if s.strip():
                found.append(decode_escapes(s) if "\\" in s else s)
        for s in found[:_MAX_CODE_STRINGS]:
            out.extend(self.nested(code, s, src))
        return out

    # --- words ----------------------------------------------------------------------------------

    def _word(self, node: tree_sitter.Node, src: _Source) -> Word:
        parts: list[str] = []
        state = {"literal": True, "dynamic": False}
        inner: list[SimpleCommand] = []
        self._word_text(node, src, parts, state, inner)
        return Word("".join(parts), src.span(node), state["literal"], state["dynamic"], tuple(inner),
                    _is_glob(node, src), bool(state.get("each")))

    def _word_text(self, node: tree_sitter.Node, src: _Source, parts: list[str], state: dict,
                   inner: list[SimpleCommand]) -> None:
        t = node.type
        if t == "word":
            parts.append(_unescape_unquoted(src.raw(node)))
        elif t == "raw_string":
            parts.append(src.raw(node)[1:-1])
        elif t == "ansi_c_string":
            raw = src.raw(node)[2:-1]
            decoded = decode_escapes(raw)
            parts.append(decoded)
            if decoded != raw:
                state["dynamic"] = True
        elif t in ("string", "translated_string", "concatenation"):
            for c in node.children:
                if c.type == "string_content":
                    parts.append(_unescape_dq(src.raw(c)))
                elif c.type in ('"', "$"):
                    continue
                else:
                    self._word_text(c, src, parts, state, inner)
        elif t in ("simple_expansion", "expansion"):
            var = next((c for c in node.children if c.type in ("variable_name", "special_variable_name")), None)
            simple = len([c for c in node.children if c.is_named]) == 1
            name = src.raw(var) if var is not None else ""
            op = next((c.type for c in node.children if c.type in _DEFAULT_OPS), None)
            sub = next((c for c in node.children if c.type == "subscript"), None)
            if simple and name in self.each_vars:
                state["each"] = True
            if sub is not None and len([c for c in node.children if c.is_named]) == 1:
                arr = sub.child_by_field_name("name")
                idx = sub.child_by_field_name("index")
                values = self.arrays.get(src.raw(arr)) if arr is not None else None
                key = src.raw(idx) if idx is not None else ""
                if values is not None and (key in ("@", "*") or key.isdigit() and int(key) < len(values)):
                    parts.append(" ".join(values) if key in ("@", "*") else values[int(key)])
                    state["dynamic"] = True
                    return
            if simple and name == "IFS":
                parts.append(" ")
                state["dynamic"] = True
            elif simple and name in self.vars:
                parts.append(self.vars[name])
                state["dynamic"] = True
            elif op is not None and var is not None:
                # ${X:-/} ${X:=/} ${X-/}: the default is what runs when X is unset (or empty)
                value = self.vars.get(name)
                default = [c for c in node.children if c.is_named and c is not var]
                use_default = value is None or (value == "" and op.startswith(":"))
                if op in (":+", "+"):
                    use_default = not use_default
                    value = ""
                if use_default:
                    sub: list[str] = []
                    for c in default:
                        self._word_text(c, src, sub, state, inner)
                    value = "".join(sub)
                    if op in (":=", "="):
                        self.vars[name] = value
                parts.append(value or "")
                state["dynamic"] = True
            else:
                parts.append(src.raw(node))
                state["literal"] = False
                inner.extend(self._walk(node, src))
        elif t == "command_substitution":
            cmds = self._walk(node, src)
            inner.extend(cmds)
            emitters = [c for c in cmds if _emitted_text(c) is not None or _emitted_args(c)]
            if len(cmds) == 1 or cmds and cmds[0].name in self.functions and len(emitters) == 1:
                text = _emitted_text(emitters[0]) if emitters else None   # $(f) of f(){ echo /; }
                if text is None and emitters and emitters[0].name in ("ls", "find"):
                    words = _emitted_args(emitters[0])                     # $(ls /) lists /*
                    text = Word(" ".join(w.text for w in words), None) if all(w.literal for w in words) else None
                    state["each"] = state.get("each") or emitters[0].name == "find"
            else:
                text = None
            if text is not None and text.literal:      # $(printf rm), `echo /`: the printed text
                parts.append(text.text.rstrip("\n"))
                state["dynamic"] = True
            else:
                parts.append(src.raw(node))
                state["literal"] = False
        elif t in ("process_substitution", "arithmetic_expansion"):
            parts.append(src.raw(node))
            state["literal"] = False
            inner.extend(self._walk(node, src))
        else:
            parts.append(src.raw(node))
            if node.child_count:
                inner.extend(self._walk(node, src))


# --- helpers on words ---------------------------------------------------------------------------

_DEFAULT_OPS = frozenset({":-", "-", ":=", "=", ":+", "+"})


def _is_glob(node: tree_sitter.Node, src: _Source) -> bool:
    """An unquoted ``*``, ``?`` or ``[..]`` in the word: the shell expands it against paths."""
    if node.type == "word":
        return bool(_GLOB_RE.search(re.sub(r"\\.", "", src.raw(node))))
    if node.type == "concatenation":
        raw = "".join(re.sub(r"\\.", "", src.raw(c)) if c.type == "word" else "\0" for c in node.children)
        return bool(_GLOB_RE.search(raw))
    return node.type == "extglob_pattern"


def _has_quoted(node: tree_sitter.Node) -> bool:
    return node.type == "concatenation" and any(c.type in ("string", "raw_string", "ansi_c_string")
                                                for c in node.children)


def _brace_expand(text: str, limit: int = 64) -> list[str]:
    """``/{etc,usr}/x`` -> ``/etc/x /usr/x`` (nested and repeated lists, at most ``limit`` words)."""
    out, todo = [], [text]
    while todo and len(out) + len(todo) <= limit:
        t = todo.pop(0)
        m = _BRACE_LIST.search(t)
        if m is None:
            out.append(t)
        else:
            todo.extend(t[:m.start()] + alt + t[m.end():] for alt in m.group(1).split(","))
    return out + todo


def _plain(raw: str) -> str:
    return raw[1:-1] if raw[:1] == "'" and raw[-1:] == "'" else _unescape_unquoted(raw)


def _join_continuations(text: str) -> str:
    """Drop backslash-newline outside single quotes, as bash does before it splits words."""
    out: list[str] = []
    i, quote = 0, False
    while i < len(text):
        ch = text[i]
        if ch == "'" and not (out and out[-1] == "\\" and not quote):
            quote = not quote
        if ch == "\\" and not quote and text[i + 1:i + 2] == "\n":
            i += 2
            continue
        out.append(ch)
        if ch == "\\" and not quote and i + 1 < len(text):
            out.append(text[i + 1])
            i += 1
        i += 1
    return "".join(out)


_LITERAL_NODES = ("number", "word", "raw_string")
_TEST_OPS = {"-eq": lambda a, b: int(a) == int(b), "-ne": lambda a, b: int(a) != int(b),
             "-lt": lambda a, b: int(a) < int(b), "-gt": lambda a, b: int(a) > int(b),
             "-le": lambda a, b: int(a) <= int(b), "-ge": lambda a, b: int(a) >= int(b),
             "=": lambda a, b: a == b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def _static_test(node: tree_sitter.Node, src: _Source) -> Optional[bool]:
    """The value of ``[ 1 ]``, ``[ 1 -eq 1 ]``, ``[[ a == b ]]`` when it has only literals, else None."""
    named = node.named_children
    if len(named) != 1:
        return None
    expr = named[0]
    if expr.type in _LITERAL_NODES or expr.type == "string" and not expr.named_children:
        return bool(_plain(src.raw(expr)).strip('"'))
    if expr.type == "binary_expression":
        left, right = expr.child_by_field_name("left"), expr.child_by_field_name("right")
        op = next((src.raw(c) for c in expr.children if not c.is_named or c.type == "test_operator"), None)
        if left is None or right is None or op not in _TEST_OPS or \
                left.type not in _LITERAL_NODES or right.type not in _LITERAL_NODES:
            return None
        try:
            return bool(_TEST_OPS[op](_plain(src.raw(left)), _plain(src.raw(right))))
        except ValueError:
            return None
    return None


def _constant_condition(cmd: SimpleCommand, until: bool) -> bool:
    """A loop condition that never ends the loop: ``true``, ``:``, ``sleep N``, ``[ 1 ]``; ``false`` for until."""
    if until:
        return cmd.name == "false"
    if cmd.name in ("true", ":", "sleep"):
        return True
    return cmd.name in ("[", "test") and len([a for a in cmd.args if a.text != "]"]) == 1

def _first_error(node: tree_sitter.Node) -> Optional[tree_sitter.Node]:
    if node.type == "ERROR" or node.is_missing:
        return node
    for c in node.children:
        if c.has_error or c.type == "ERROR" or c.is_missing:
            found = _first_error(c)
            if found is not None:
                return found
    return None


def _primary(cmds: list[SimpleCommand], origin: tuple) -> Optional[SimpleCommand]:
    return next((c for c in cmds if c.origin == origin), None)






def _option_value(args: list[Word], names: tuple[str, ...]) -> Optional[Word]:
    for i, a in enumerate(args):
        t = a.text
        for n in names:
            if t == n and i + 1 < len(args):
                return args[i + 1]
            if n.startswith("--") and t.startswith(n + "="):
                return Word(t[len(n) + 1:], a.span, a.literal, a.dynamic, a.inner)
            if n == "-c" and t.startswith("-c") and len(t) > 2:
                return Word(t[2:], a.span, a.literal, a.dynamic, a.inner)
            if n == "-c" and re.fullmatch(r"-[a-bd-z]+c", t) and i + 1 < len(args):   # su -lc, script -qc
                return args[i + 1]
    return None


def _shell_script(args: list[Word]) -> Optional[Word]:
    """The script a shell runs from ``-c`` (also ``-lc``, ``-ec``), or None."""
    wants = False
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            i += 1
            break
        if t.startswith(("-", "+")) and len(t) > 1 and not t.startswith("--"):
            if "c" in t[1:]:
                wants = True
            if t[1:] in ("o", "O"):
                i += 1
            i += 1
            continue
        if t.startswith("--"):
            i += 1
            continue
        break
    if wants and i < len(args):
        return args[i]
    return None


def reads_code_from_stdin(cmd: SimpleCommand) -> bool:
    """An interpreter with no program file or module reads its program from stdin."""
    if cmd.name in SHELLS:
        if _shell_script(cmd.args) is not None:
            return False
        positional = [a.text for a in cmd.args if not a.text.startswith(("-", "+"))]
        return not positional or positional[0] in ("-", "/dev/stdin") or "-s" in cmd.argv
    if not is_interpreter(cmd.name) or cmd.inline_code is not None:
        return False
    for a in cmd.args:
        t = a.text
        if t in ("-m", "-r", "-e", "-E", "-c", "--eval", "-p", "--print"):
            return False
        if t == "-":
            return True
        if not t.startswith("-"):
            return False
    return True


def _interpreter_code(name: str, args: list[Word]) -> Optional[Word]:
    """The inline program of ``python -c``, ``perl -e``, ``node -e``, ``php -r``, ``awk 'prog'``..."""
    lname = name.lower()
    if lname.endswith("awk"):
        rest = _skip_options(args, frozenset({"-F", "-v", "-f", "--field-separator", "--assign", "--file"}))
        if any(a.text in ("-f", "--file") or a.text.startswith("--file=") for a in args):
            return None
        return rest[0] if rest else None
    if lname.startswith(("python", "pypy")):
        flags = ("-c",)
    elif lname.startswith("php"):
        flags = ("-r",)
    elif lname.startswith(("node", "deno", "bun")):
        flags = ("-e", "--eval", "-p", "--print")
    elif lname in ("pwsh", "powershell"):
        flags = ("-c", "-command", "-Command")
    else:
        flags = ("-e", "-E")
    for i, a in enumerate(args):
        t = a.text
        if i + 1 >= len(args):
            break
        if t in flags:
            return args[i + 1]
        # perl -ne / -lpe / python -Bc: a bundle of short flags ending in the code flag
        if len(flags[0]) == 2 and t.startswith("-") and not t.startswith("--") and len(t) > 2 \
                and t[-1] in "".join(f[1] for f in flags if len(f) == 2) and t[1:].isalpha():
            return args[i + 1]
    return None


def _emitted_text(cmd: SimpleCommand) -> Optional[Word]:
    """What ``echo``/``printf``/``cat <<EOF`` write to stdout, when it is literal."""
    if cmd.name == "echo":
        words = [a for a in cmd.args if not re.fullmatch(r"-[neE]+", a.text)]
        if not words or not all(a.literal for a in words):
            return None
        w = _join(words)
        if any(re.fullmatch(r"-[nE]*e[nE]*", a.text) for a in cmd.args) and _HAS_ESCAPE.search(w.text):
            return Word(decode_escapes(w.text), w.span, True, True)
        return w
    if cmd.name == "printf":
        args = [a for a in cmd.args if a.text != "--"]
        if not args or args[0].text == "-v" or not all(a.literal for a in args):
            return None
        fmt = args[0].text
        values = iter(a.text for a in args[1:])
        text = re.sub(r"%[bs]", lambda m: decode_escapes(next(values, "")) if m.group() == "%b"
                      else next(values, ""), fmt)
        decoded = decode_escapes(text)
        return Word(decoded, args[0].span, True, decoded != text and bool(_HAS_ESCAPE.search(text)))
    if cmd.output is not None:
        return cmd.output
    if cmd.name == "pwd" and cmd.cwd and cmd.cwd.startswith(("/", "~")):
        return Word(cmd.cwd, cmd.span)
    if cmd.name in ("dirname", "basename", "realpath", "readlink"):
        ops = [a for a in cmd.args if not a.text.startswith("-")]
        if len(ops) == 1 and ops[0].literal and (cmd.name != "readlink" or any(a.text in ("-f", "-e", "-m")
                                                                              for a in cmd.args)):
            t = ops[0].text.rstrip("/") or "/"
            out = {"dirname": posixpath.dirname(t) or ".", "basename": posixpath.basename(t) or "/"}.get(
                cmd.name, posixpath.normpath(t))
            return Word(out, ops[0].span)
        return None
    if cmd.name in ("cat", "tee") and cmd.stdin_text is not None and not any(
            not a.text.startswith("-") for a in cmd.args if cmd.name == "cat"):
        return cmd.stdin_text
    return None


def _xargs_input(cmd: SimpleCommand, words: list[Word]) -> bool:
    """``xargs CMD`` runs CMD with the words it reads: add them (or fill ``{}``/``-I STR``) when
    known. True when the arguments changed."""
    if "xargs" not in cmd.wrappers or not words:
        return False
    rs = cmd.xargs_replace
    if any(rs in a.text for a in cmd.args):
        line = " ".join(w.text for w in words)
        first = words[0]

        def fill(t: str) -> str:
            if t == rs:
                return first.text if len(words) == 1 or cmd.xargs_replace == "{}" else line
            # /etc/{} with the entries of `ls /etc`: the template gives the directory, the input a name
            return t.replace(rs, posixpath.basename(first.text) if t.split(rs, 1)[0].endswith("/") else line)
        cmd.args[:] = [Word(fill(a.text), a.span, a.literal, a.dynamic, a.inner, a.glob or first.glob,
                            a.each or first.each) if rs in a.text else a for a in cmd.args]
    else:
        cmd.args.extend(words)
    return True


def _emitted_args(cmd: SimpleCommand) -> list[Word]:
    """Words ``xargs`` would append: echo/printf output, the paths ``find`` lists (every path under
    its roots), or the entries ``ls DIR`` lists (``DIR/*``)."""
    if cmd.name == "find":
        name = find_name_filter(cmd.args)
        return [Word(a.text if name is None else posixpath.join(a.text, name), a.span, a.literal, a.dynamic, (),
                     a.glob or name is not None and bool(_GLOB_RE.search(name)), True)
                for a in find_roots(cmd.args) or [Word(".", cmd.span)]]
    if cmd.name == "ls":
        dirs = [a for a in cmd.args if not a.text.startswith("-")] or [Word(".", cmd.span)]
        return [Word(posixpath.join(a.text, "*"), a.span, a.literal, a.dynamic, (), True) for a in dirs]
    text = _emitted_text(cmd)
    if text is None:
        return []
    return [Word(t, text.span, text.literal, text.dynamic) for t in text.text.split()]


def find_name_filter(args: list[Word]) -> Optional[str]:
    """The pattern of ``find ... -name PATTERN`` (the first one), or None."""
    return next((args[k + 1].text for k, a in enumerate(args[:-1]) if a.text in ("-name", "-iname")), None)


def _emitted_line(cmds: list[SimpleCommand]) -> Optional[str]:
    """The first line a pipeline stage prints, when it is literal (``read`` gets it)."""
    for c in cmds:
        words = _emitted_args(c)
        if words and all(w.literal for w in words):
            text = _emitted_text(c)
            return text.text.split("\n", 1)[0] if text is not None else " ".join(w.text for w in words)
    return None


def find_roots(args: list[Word]) -> list[Word]:
    """The start paths of ``find``: positional words before the first expression."""
    roots: list[Word] = []
    for a in args:
        t = a.text
        if t in ("-H", "-L", "-P") or t.startswith("-D") or t.startswith("-O"):
            continue
        if t.startswith(("-", "(", "!", ")")) or t == ",":
            break
        roots.append(a)
    return roots


def _unwrap(name: Word, args: list[Word], globs: Optional[list[int]] = None
            ) -> list[tuple[Word, list[Word], list[str]]]:
    """Strip wrappers repeatedly; ``find -exec`` yields the exec'd commands too. ``globs`` is the
    budget of glob-name candidates left (``* * * *`` must not fan out exponentially)."""
    wrappers: list[str] = []
    globs = [_GLOB_CANDIDATES] if globs is None else globs
    for _ in range(16):
        base = command_name(name.text) if name.literal else None
        if name.glob and base and _GLOB_RE.search(base) and globs[0] > 0:
            # /bin/r? -rf /: the glob can expand to any matching program; follow each known one
            matches = sorted(n for n in KNOWN_COMMANDS if fnmatch.fnmatchcase(n, base))[:globs[0]]
            globs[0] -= len(matches)
            if matches:
                out: list[tuple[Word, list[Word], list[str]]] = []
                for m in matches:
                    out.extend(_unwrap(Word(m, name.span), list(args), globs))
                for entry in out:
                    entry[2][:0] = wrappers
                return out
        if base == "find":
            return [(name, args, wrappers)] + _find_exec(args, wrappers, globs)
        spec = _WRAPPERS.get(base or "") or (_LDSO_SPEC if base and _LDSO_RE.match(base) else None)
        if spec is None or (base == "command" and any(a.text in ("-v", "-V") for a in args)):
            break
        with_value, operands = spec
        chdir: Optional[str] = None
        i = 0
        while i < len(args):
            t = args[i].text
            if t == "--":
                i += 1
                break
            if base == "env" and "=" in t and not t.startswith("-"):
                i += 1
                continue
            if t.startswith("-") and len(t) > 1:
                if base == "env" and t in ("-S", "--split-string") or t.startswith("--split-string="):
                    return [(name, args, wrappers)]   # env -S is re-parsed as a script
                if base in ("env", "sudo") and t in ("-C", "--chdir", "-D") and i + 1 < len(args):
                    chdir = args[i + 1].text          # env -C / rm -rf *: runs in /
                elif base in ("env", "sudo") and t.startswith("--chdir="):
                    chdir = t.split("=", 1)[1]
                i += 2 if t in with_value else 1
                continue
            break
        i += operands
        if base == "taskset" and any(a.text in ("-p", "--pid") for a in args[:i]):
            return [(name, args, wrappers)]
        if base == "flock" and any(a.text in ("-c", "--command") for a in args):
            return [(name, args, wrappers)]
        if i >= len(args):
            if base == "xargs":
                return [(Word("echo", name.span), [], wrappers + ["xargs"])]
            break
        wrappers.append(base)
        if chdir is not None:
            wrappers.append(_CHDIR + chdir)
        name, args = args[i], args[i + 1:]
    return [(name, args, wrappers)]


def _find_exec(args: list[Word], wrappers: list[str], globs: list[int]) -> list[tuple[Word, list[Word], list[str]]]:
    roots = find_roots(args)
    root_text = roots[0].text if roots else "."
    name_filter = find_name_filter(args)
    out: list[tuple[Word, list[Word], list[str]]] = []
    i = 0
    while i < len(args):
        if args[i].text in _FIND_EXEC:
            j = i + 1
            while j < len(args) and args[j].text not in (";", "+"):
                j += 1
            # {} is every path under the root (or every match of a literal -name under it)
            each = root_text if name_filter is None else posixpath.join(root_text, name_filter)
            glob = name_filter is not None and bool(_GLOB_RE.search(name_filter))
            clause = [Word(a.text.replace("{}", each), a.span, a.literal, a.dynamic, a.inner, a.glob or glob,
                           "{}" in a.text) for a in args[i + 1:j]]
            if clause:
                out.extend(_unwrap(clause[0], clause[1:], globs))
                for entry in out:
                    if "find" not in entry[2]:
                        entry[2].insert(0, "find")
            i = j
        i += 1
    return out


_RC_FILE_RE = re.compile(r"(^|/)\.(bashrc|bash_profile|bash_login|bash_logout|profile|zshrc|zprofile|zshenv|zlogin"
                         r"|kshrc|mkshrc)$|^/etc/(profile|bash\.bashrc|zsh/zshrc|profile\.d/.*|rc\.local|init\.d/.*"
                         r"|cron\.(hourly|daily|weekly|monthly)/.*)$")
_CRON_FILE_RE = re.compile(r"^/etc/(crontab|cron\.d/.*)$|^/var/spool/cron/.+")
_HOOK_RE = re.compile(r"(^|/)hooks/(pre-commit|commit-msg|post-commit|pre-push|post-checkout|post-merge|pre-rebase"
                      r"|prepare-commit-msg|pre-applypatch|post-applypatch|applypatch-msg|pre-merge-commit"
                      r"|post-rewrite|reference-transaction|pre-auto-gc|post-update|pre-receive|update)$")


def _cron_commands(text: str, user_field: bool = False) -> list[str]:
    """The commands of crontab lines: ``m h dom mon dow [user] CMD`` or ``@reboot [user] CMD``."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            continue
        fields = (1 if line.startswith("@") else 5) + user_field
        parts = line.split(None, fields)
        if len(parts) == fields + 1:
            out.append(parts[-1])
    return out
