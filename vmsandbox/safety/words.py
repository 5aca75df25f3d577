"""Shell words of the command policy: ``Word`` (one word after normalisation) and the small helpers
that build and read words and options. Shared by ``parser.py`` and ``optexec.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
    glob: bool = False      # holds an unquoted * ? [..]: the shell expands it to matching paths
    each: bool = False      # stands for every path under it (find ROOT -exec CMD {}, find | xargs)


def join_words(words: list[Word]) -> Word:
    """Several words as one (``eval a b``, ``sg group cmd args``): the text joined by spaces."""
    span = None
    spans = [w.span for w in words if w.span]
    if spans:
        span = (min(s[0] for s in spans), max(s[1] for s in spans))
    inner = tuple(c for w in words for c in w.inner)
    return Word(" ".join(w.text for w in words), span, all(w.literal for w in words),
                any(w.dynamic for w in words), inner)


def skip_options(args: list[Word], with_value: frozenset) -> list[Word]:
    """The words after the leading options (``with_value`` options take the next word too)."""
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return args[i + 1:]
        if not t.startswith("-") or t == "-":
            break
        i += 2 if t in with_value else 1
    return args[i:]


def sub_word(w: Word, text: str) -> Word:
    """``w`` with other text (same span and flags of origin)."""
    return Word(text, w.span, w.literal, w.dynamic, w.inner)


def option_values(args: list[Word], names: tuple[str, ...], attached: tuple[str, ...] = ()) -> list[Word]:
    """Values of ``--opt=V``, ``--opt V``, ``-o V`` and, for ``attached`` short options, ``-oV``."""
    out: list[Word] = []
    for i, a in enumerate(args):
        t = a.text
        for n in names:
            if t == n and i + 1 < len(args):
                out.append(args[i + 1])
            elif n.startswith("--") and t.startswith(n + "="):
                out.append(sub_word(a, t[len(n) + 1:]))
        for n in attached:
            if t.startswith(n) and len(t) > len(n) and not t.startswith("--"):
                out.append(sub_word(a, t[len(n):]))
    return out
