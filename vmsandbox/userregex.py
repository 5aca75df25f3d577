"""User-written regular expressions (policy patterns) compiled with RE2, which matches in linear
time: a pattern such as ``(a+)+$`` cannot backtrack for ever. Patterns RE2 cannot run in linear
time (look-around, back-references) or that are too large are refused with the reason. Shared by
the config schema (which refuses them at load) and the policy (which runs them)."""
from __future__ import annotations

from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False          # the reason goes into the error, not onto stderr
_OPTIONS.max_mem = 8 << 20            # a pattern needing more is refused as too large


def compile_user_regex(text: str) -> Any:
    """The compiled pattern; ValueError with a sentence saying why it is refused."""
    try:
        return re2.compile(text, _OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"{text!r} is not a valid RE2 regular expression "
                         f"(linear-time matching: no look-around or back-references): {why}") from exc
