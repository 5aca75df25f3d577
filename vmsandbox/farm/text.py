"""Text that came from a guest or a job file, made safe to show: terminal-safe escaping and tails.

The guest controls every byte it prints; before a terminal sees any of it, control characters
(escape sequences, carriage returns, bidi overrides) become visible ``\\xNN`` escapes.
"""
from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab shown as an escape."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                       text)


def one_line(text: str, width: int = 100) -> str:
    """A terminal-safe single line: newlines and tabs become spaces, cut to ``width``."""
    s = printable(text).replace("\n", " ").replace("\t", " ").strip()
    return s if len(s) <= width else s[: width - 1] + "…"


def tail(text: str, max_chars: int = 4000, max_lines: int = 50) -> str:
    """The last lines of ``text`` (what a report shows of a job's output)."""
    lines = text.splitlines()[-max_lines:]
    out = "\n".join(lines)
    return out[-max_chars:]
