"""Text that came from a guest, a command or a file, made safe to show on a terminal.

The one place that decides how untrusted text looks to people: every C0/C1 control character,
DEL, Unicode format character (bidi overrides and isolates, zero-width characters, BOM), line
and paragraph separators, surrogates and private-use characters become a visible escape
(``\\x1b``, ``\\u202e``), and long lines are cut. So a guest cannot set the operator's window
title, clear the screen, reorder what is shown, or hide part of a command. Rich markup is a
separate concern of the CLI (``cli/_context.py`` prints untrusted text only as ``rich.text.Text``).

No dependencies: the core uses it too, for guest output it puts into error messages.
"""
from __future__ import annotations

import logging
import unicodedata

#: default cap per line (a table cell gets less: see ``cli/_context.py``)
MAX_LINE = 2000
_BAD_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_cache: dict[str, str] = {}


def _escape_char(ch: str) -> str:
    known = _cache.get(ch)
    if known is not None:
        return known
    if unicodedata.category(ch) not in _BAD_CATEGORIES or ch in "\n":
        out = ch
    elif ch == "\t":
        out = "\\t"
    elif ch == "\r":
        out = "\\r"
    else:
        code = ord(ch)
        out = f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    if len(_cache) < 4096:
        _cache[ch] = out
    return out


def visible(value: object, max_line: int = MAX_LINE, multiline: bool = False) -> str:
    """``value`` as a string with every control or format character escaped and each line cut at
    ``max_line`` characters. Newlines are kept with ``multiline``, otherwise shown as ``\\n``."""
    text = value if isinstance(value, str) else str(value)
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="backslashreplace")
    lines = text.split("\n") if multiline else [text]
    shown = []
    for line in lines:
        cut = ""
        if len(line) > max_line:
            cut = f"... ({len(line) - max_line} more characters)"
            line = line[:max_line]
        safe = line if line.isprintable() else "".join(_escape_char(c) for c in line)
        shown.append(safe.replace("\n", "\\n") + cut)
    return "\n".join(shown)


class SafeFormatter(logging.Formatter):
    """A logging formatter whose records cannot carry terminal escapes (log lines quote guests)."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), multiline=True)


__all__ = ["visible", "SafeFormatter", "MAX_LINE"]
