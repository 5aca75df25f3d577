"""Shell parsing for the command policy: a command line -> normalised ``SimpleCommand`` records.

Owns the cached tree-sitter-bash grammar, the walk over every command node (pipelines, lists,
subshells, groups, loop/if/case/function bodies, command and process substitutions, heredocs and
here-strings), word normalisation (quotes, backslashes, ANSI-C strings, ``$IFS``, variables assigned
earlier in the same script), wrapper stripping (sudo, env, timeout, xargs, find -exec, ...) and the
re-parsing of nested scripts (``sh -c``, ``eval``, ``su -c``, text fed to a shell's stdin, shell
strings inside inline interpreter code) up to ``MAX_DEPTH``. Rules never see tree-sitter nodes.
"""
from __future__ import annotations

import posixpath
import re
import threading
from dataclasses import dataclass, field
from typing import Optional

import tree_sitter
import tree_sitter_bash

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
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})


@dataclass(eq=False)
class Word:
    """One shell word after normalisation.

    ``text``: quotes and backslashes removed, ANSI-C decoded, known variables substituted;
    unresolved expansions stay as written (``$HOME``). ``literal``: text is exactly what runs.
    ``dynamic``: built from a variable, ``$IFS`` or an escape, so it hides its real text.
    ``inner``: commands run by substitutions inside the word. ``span``: in the original command.
    """
    text: str
    span: Optional[tuple[int, int]]
    literal: bool = True
    dynamic: bool = False
    inner: tuple = ()


@dataclass(eq=False)
class Redirect:
    op: str
    target: Word
    owner: Optional["SimpleCommand"] = None

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
class Script:
    """Everything the walk found in one command line, nested scripts included."""
    source: str
    commands: list[SimpleCommand] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    functions: list[FunctionDef] = field(default_factory=list)
    problems: list[tuple[str, Optional[tuple[int, int]], str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)        # every script text parsed


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
            return chr(int(e[1:], 16))
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

    # --- entry points ---------------------------------------------------------------------------

    def run(self, text: str, depth: int, base: Optional[int], fallback: Optional[tuple[int, int]]
            ) -> list[SimpleCommand]:
        if depth > MAX_DEPTH:
            self.script.problems.append(("evasion.nesting-too-deep", fallback,
                                         f"Scripts are nested more than {MAX_DEPTH} levels deep"))
            return []
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
        value = self._word(value_node, src)
        if value.literal:
            self.vars[name] = value.text
        else:
            self.vars.pop(name, None)
        return list(value.inner)

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
        return cmds

    def _pipeline(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        stages = [c for c in node.children if c.type not in ("|", "|&")]
        out: list[SimpleCommand] = []
        previous: list[SimpleCommand] = []
        for stage in stages:
            cmds = self._walk(stage, src)
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
                _xargs_input(c, _emitted_args(f))
            for f in feeders:
                text = _emitted_text(f)
                if text is not None:
                    cmds.extend(self._feed(c, text, src))

    def _redirected(self, node: tree_sitter.Node, src: _Source) -> list[SimpleCommand]:
        body = node.child_by_field_name("body")
        cmds = self._walk(body, src) if body is not None else []
        owners = [c for c in cmds if body is not None and c.origin == (id(src), body.start_byte, body.end_byte)]
        owner = owners[0] if owners else None
        extra: list[SimpleCommand] = []
        for child in node.children:
            if child == body:
                continue
            extra.extend(self._redirect(child, src, owner, cmds))
        return cmds + extra

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
            red = Redirect(op, target, owner)
            self.script.redirects.append(red)
            if owner is not None:
                owner.redirects.append(red)
                if op == "<" and target.inner:           # sh < <(curl ...)
                    self._link([], list(target.inner), [owner], src)
        elif t == "herestring_redirect":
            word_nodes = [c for c in node.children if c.is_named]
            if word_nodes:
                w = self._word(word_nodes[0], src)
                out.extend(w.inner)
                if owner is not None:
                    owner.stdin_text = w
                    _xargs_input(owner, [Word(t, w.span, w.literal, w.dynamic) for t in w.text.split()])
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
                if value is not None:
                    other.extend(self._word(value, src).inner)
            elif t == "command_name":
                inner = child.children[0] if child.children else child
                name_word = self._word(inner, src)
            elif t == "herestring_redirect":
                herestrings.append(child)
            elif t in ("file_redirect", "heredoc_redirect"):
                pass   # handled by _redirected
            elif child.is_named:
                args.append(self._word(child, src))
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
        for name_w, argv, wrappers in _unwrap(name_word, args):
            name = command_name(name_w.text) if name_w.literal else None
            primary.append(SimpleCommand(name, name_w, argv, src.span(node), src.depth,
                                         tuple(wrappers), origin=origin))
        out: list[SimpleCommand] = []
        for cmd in primary:
            self.script.commands.append(cmd)
            out.append(cmd)
            out.extend(self._nested_of(cmd, src))
        for h in herestrings:
            out.extend(self._redirect(h, src, primary[0], primary))
        return out + other

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
            if code is not None:
                cmd.inline_code = code
                return self._code_strings(code, src)
            return []
        if script is None:
            return []
        cmd.script_word = script
        if name in SHELLS:   # sh -c 'script' $0 $1 ...: the positional parameters are known
            after = cmd.args[next(i for i, a in enumerate(cmd.args) if a is script) + 1:]
            saved = dict(self.vars)
            self.vars.update({str(i): a.text for i, a in enumerate(after) if a.literal})
            try:
                return self.nested(script, script.text, src)
            finally:
                self.vars = saved
        return self.nested(script, script.text, src)

    def _feed(self, cmd: SimpleCommand, text: Word, src: _Source) -> list[SimpleCommand]:
        """Literal text arrives on ``cmd``'s stdin: parse it if ``cmd`` runs it as code."""
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
        return Word("".join(parts), src.span(node), state["literal"], state["dynamic"], tuple(inner))

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
            if simple and name == "IFS":
                parts.append(" ")
                state["dynamic"] = True
            elif simple and name in self.vars:
                parts.append(self.vars[name])
                state["dynamic"] = True
            else:
                parts.append(src.raw(node))
                state["literal"] = False
                inner.extend(self._walk(node, src))
        elif t in ("command_substitution", "process_substitution", "arithmetic_expansion"):
            parts.append(src.raw(node))
            state["literal"] = False
            inner.extend(self._walk(node, src))
        else:
            parts.append(src.raw(node))
            if node.child_count:
                inner.extend(self._walk(node, src))


# --- helpers on words ---------------------------------------------------------------------------

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


def _join(words: list[Word]) -> Word:
    span = None
    spans = [w.span for w in words if w.span]
    if spans:
        span = (min(s[0] for s in spans), max(s[1] for s in spans))
    inner = tuple(c for w in words for c in w.inner)
    return Word(" ".join(w.text for w in words), span, all(w.literal for w in words),
                any(w.dynamic for w in words), inner)


def _skip_options(args: list[Word], with_value: frozenset) -> list[Word]:
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return args[i + 1:]
        if not t.startswith("-") or t == "-":
            break
        i += 2 if t in with_value else 1
    return args[i:]


def _option_value(args: list[Word], names: tuple[str, ...]) -> Optional[Word]:
    for i, a in enumerate(args):
        t = a.text
        for n in names:
            if t == n and i + 1 < len(args):
                return args[i + 1]
            if n.startswith("--") and t.startswith(n + "="):
                return Word(t[len(n) + 1:], a.span, a.literal, a.dynamic, a.inner)
            if not n.startswith("--") and t.startswith(n) and len(t) > len(n) and n == "-c":
                return Word(t[2:], a.span, a.literal, a.dynamic, a.inner)
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
    if cmd.name in ("cat", "tee") and cmd.stdin_text is not None and not any(
            not a.text.startswith("-") for a in cmd.args if cmd.name == "cat"):
        return cmd.stdin_text
    return None


def _xargs_input(cmd: SimpleCommand, words: list[Word]) -> None:
    """``xargs CMD`` runs CMD with the words it reads: add them (and fill ``{}``) when known."""
    if "xargs" not in cmd.wrappers or not words:
        return
    if any(a.text == "{}" for a in cmd.args):
        cmd.args[:] = [Word(words[0].text, a.span, a.literal, a.dynamic) if a.text == "{}" else a for a in cmd.args]
    else:
        cmd.args.extend(words)


def _emitted_args(cmd: SimpleCommand) -> list[Word]:
    """Words ``xargs`` would append: echo/printf output, or the roots that ``find`` lists."""
    if cmd.name == "find":
        return [a for a in find_roots(cmd.args)]
    text = _emitted_text(cmd)
    if text is None:
        return []
    return [Word(t, text.span, text.literal, text.dynamic) for t in text.text.split()]


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


def _unwrap(name: Word, args: list[Word]) -> list[tuple[Word, list[Word], list[str]]]:
    """Strip wrappers repeatedly; ``find -exec`` yields the exec'd commands too."""
    wrappers: list[str] = []
    for _ in range(16):
        base = command_name(name.text) if name.literal else None
        if base == "find":
            return [(name, args, wrappers)] + _find_exec(args, wrappers)
        if base not in _WRAPPERS or (base == "command" and any(a.text in ("-v", "-V") for a in args)):
            break
        with_value, operands = _WRAPPERS[base]
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
        name, args = args[i], args[i + 1:]
    return [(name, args, wrappers)]


def _find_exec(args: list[Word], wrappers: list[str]) -> list[tuple[Word, list[Word], list[str]]]:
    roots = find_roots(args)
    root_text = roots[0].text if roots else "."
    out: list[tuple[Word, list[Word], list[str]]] = []
    i = 0
    while i < len(args):
        if args[i].text in _FIND_EXEC:
            j = i + 1
            while j < len(args) and args[j].text not in (";", "+"):
                j += 1
            clause = [Word(a.text.replace("{}", root_text), a.span, a.literal, a.dynamic, a.inner)
                      for a in args[i + 1:j]]
            if clause:
                out.extend(_unwrap(clause[0], clause[1:]))
                for entry in out:
                    if "find" not in entry[2]:
                        entry[2].insert(0, "find")
            i = j
        i += 1
    return out
