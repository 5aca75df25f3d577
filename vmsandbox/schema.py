"""The validation machinery every vmsandbox schema is built from (the config file, the
per-sandbox request, policy patterns, rollback options, provider settings).

Owns: the ``section`` decorator (a frozen pydantic dataclass that rejects unknown keys), the
``ProviderSettings`` base model, the value types (sizes, CPU counts, bounded numbers, absolute
paths, choices), and ``validate``, which turns the first pydantic error into one ``ConfigError``
naming the key path in a human sentence, never a pydantic dump.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Annotated, Any, Callable, Mapping, NoReturn, Optional, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic import model_validator
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError

from .exceptions import ConfigError

T = TypeVar("T")

# Unknown keys are errors; no NaN or infinity in any float, anywhere.
SCHEMA_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

MAX_SECONDS = 365 * 86400            # far below what socket/threading timeouts overflow at (~292 years)
MAX_SIZE = 1 << 50                   # 1024T: larger is a typo, not a machine
MAX_CPUS = 1024
LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")   # safety.models.RiskLevel names (checked by a test)


# -- errors ------------------------------------------------------------------------------------

def fail(message: str) -> NoReturn:
    """Reject the value being validated with ``message`` (a sentence, shown after the key path)."""
    raise PydanticCustomError("vmsandbox", "{message}", {"message": message})


def show(value: Any) -> str:
    """repr() of a value for an error message, cut short: hostile input can be huge."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _sentence(err: Mapping[str, Any]) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("vmsandbox", "vmsandbox_at", "unknown_key", "unknown_key_here"):
        return err["msg"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return "unknown key"
    if kind in ("dataclass_type", "dataclass_exact_type", "model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {type(value).__name__} {show(value)}"
    if kind == "missing":
        return "required key is missing"
    if kind == "bool_type":
        return f"{show(value)} must be true or false"
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing"):
        return f"{show(value)} must be a number"
    if kind == "int_from_float":
        return f"{show(value)} must be a whole number"
    if kind == "finite_number":
        return f"{show(value)} must be a finite number"
    if kind == "string_type":
        return f"{show(value)} must be a string"
    if kind == "literal_error":
        return f"{show(value)} is not one of {ctx.get('expected', '?')}"
    if kind in ("list_type", "tuple_type", "set_type"):
        return f"{show(value)} must be a list"
    if kind == "greater_than":
        return f"{show(value)} must be above {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"{show(value)} must be at least {ctx.get('ge')}"
    if kind == "less_than":
        return f"{show(value)} must be below {ctx.get('lt')}"
    if kind == "less_than_equal":
        return f"{show(value)} must be at most {ctx.get('le')}"
    if kind == "string_pattern_mismatch":
        return f"{show(value)} does not match {ctx.get('pattern')}"
    msg = str(err.get("msg", "is not valid"))
    return f"{show(value)} is not valid ({msg[:1].lower()}{msg[1:]})"


def fail_at(key: Any, message: str) -> NoReturn:
    """Like ``fail``, for the entry ``key`` below the value being validated (a mapping)."""
    raise PydanticCustomError("vmsandbox_at", "{message}", {"message": message, "key": key})


def config_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    """The first error of ``exc`` as a ConfigError whose path starts with ``prefix``."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    if err["type"] in ("unknown_key", "vmsandbox_at"):
        loc += (err["ctx"]["key"],)
    return ConfigError(_sentence(err), _join(prefix, loc))


def message_of(exc: ConfigError) -> str:
    """A ConfigError's sentence without its key path."""
    text = str(exc)
    return text[len(exc.path) + 2:] if exc.path and text.startswith(exc.path + ": ") else text


_ADAPTERS: dict[Any, TypeAdapter] = {}


def validate(kind: type[T], data: Any, path: str = "") -> T:
    """Validate ``data`` as ``kind`` (a section, a ProviderSettings model or any type).
    Raises ConfigError naming the first bad key below ``path``."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise config_error(exc, path) from None


# -- sections: frozen pydantic dataclasses that name unknown keys -----------------------------

def _known_keys(cls: type) -> list[str]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return [f.name for f in dataclasses.fields(cls)]


def check_keys(cls: type, data: Any, *, key_in_message: bool = False) -> Any:
    """Before-validation of a section: None is an empty section, anything but a mapping is an
    error, and an unknown key is reported with the keys that exist."""
    if data is None:
        return {}
    if isinstance(data, cls):
        return data
    keys = (data.kwargs or {}) if isinstance(data, ArgsKwargs) else data
    if not isinstance(keys, Mapping):
        fail(f"expected a mapping, got {type(data).__name__} {show(data)}")
    known = _known_keys(cls)
    for key in keys:
        if key not in known:
            listing = ", ".join(sorted(known)) or "none"
            if key_in_message:
                raise PydanticCustomError("unknown_key_here", "unknown key {key} (known: {known})",
                                          {"key": show(key), "known": listing})
            raise PydanticCustomError("unknown_key", "unknown key (known: {known})", {"key": key, "known": listing})
    return data


def section(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, validated dataclass: constructing it (also through
    ``dataclasses.replace``) validates every field and raises ConfigError; unknown keys are
    errors. Optional hooks: ``_before(data) -> data`` (e.g. a string shorthand) and
    ``_unknown_key_in_message = True`` (report an unknown key at the entry, naming it)."""
    key_in_message = getattr(cls, "_unknown_key_in_message", False)
    before = cls.__dict__.get("_before")

    def _keys(klass, data):
        if before is not None and not isinstance(data, (klass, ArgsKwargs)):
            data = before(data)
        return check_keys(klass, data, key_in_message=key_in_message)
    cls._check_keys = model_validator(mode="before")(classmethod(_keys))
    built = _pydantic_dataclass(frozen=True, config=SCHEMA_CONFIG)(cls)
    init = built.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise config_error(exc) from None
    __init__.__doc__ = init.__doc__
    built.__init__ = __init__
    return built


class ProviderSettings(BaseModel):
    """Settings of one provider, the ``providers.<name>`` section of the config. A provider
    subclasses this as its ``Settings`` class attribute; the default has no keys. Strict: no
    'yes' for a boolean, no '10' for a number; NaN and infinity are errors too."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        return check_keys(cls, data)


class FrozenMap(Mapping):
    """A read-only, hashable mapping (config values must not change after validation)."""

    def __init__(self, data: Mapping = ()) -> None:
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


# -- value types -------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_bytes(value: Any) -> int:
    """'4G' / '256M' / '1.5G' / 1048576 -> bytes (binary units); ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{show(value)} is not a size (use e.g. '512M', '4G')")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.fullmatch(value)
        if not m:
            raise ValueError(f"{show(value)} is not a size (use e.g. '512M', '4G')")
        f = float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
        n = int(f) if math.isfinite(f) else MAX_SIZE + 1
    if n <= 0:
        raise ValueError(f"{show(value)} is not a positive size")
    if n > MAX_SIZE:
        raise ValueError(f"{show(value)} is too large (at most 1024T)")
    return n


def cpu_count(value: Any) -> float:
    """'2' / 2 / '0.5' -> float CPUs in (0, 1024]; ValueError says what is wrong."""
    try:
        if isinstance(value, bool):
            raise ValueError
        n = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{show(value)} is not a CPU count (use e.g. '1', '2', '0.5')") from None
    if not (n > 0 and math.isfinite(n)) or n > MAX_CPUS:
        raise ValueError(f"{show(value)} must be a CPU count above 0 and at most {MAX_CPUS}")
    return n


def _as_text(check: Callable[[Any], Any]) -> Callable[[Any], str]:
    def run(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            check(value)
        except ValueError as exc:
            fail(str(exc))
        return value.strip() if isinstance(value, str) else str(value)
    return run


Size = Annotated[str, BeforeValidator(_as_text(size_bytes))]        # kept as written: '4G'
Cpu = Annotated[str, BeforeValidator(_as_text(cpu_count))]          # kept as written: '0.5'


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def number(*, whole: bool = False, above: Optional[float] = None, at_least: Optional[float] = None,
           at_most: Optional[float] = None, what: str = "") -> Any:
    """A number type: no strings, no booleans, finite, within the bounds (``what`` names the unit
    in messages, e.g. 'seconds')."""
    unit = f" {what}" if what else ""

    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"{show(v)} must be a number{unit and ' of' + unit}")
        if isinstance(v, float) and not math.isfinite(v):
            fail(f"{show(v)} must be a finite number")
        if whole and v != int(v):
            fail(f"{show(v)} must be a whole number")
        if above is not None and not v > above:
            fail(f"{show(v)} must be above {_num(above)}")
        if at_least is not None and v < at_least:
            fail(f"{show(v)} must be at least {_num(at_least)}")
        if at_most is not None and v > at_most:
            fail(f"{show(v)} must be at most {_num(at_most)}{unit}")
        return int(v) if whole else float(v)
    return Annotated[int if whole else float, BeforeValidator(check)]


Seconds = number(above=0, at_most=MAX_SECONDS, what="seconds")
WholeSeconds = number(whole=True, above=0, at_most=MAX_SECONDS, what="seconds")


def text(*, pattern: Optional[str] = None, hint: str = "", empty: bool = False) -> Any:
    """A string type (no numbers or booleans taken as strings), full-matching ``pattern`` if given."""
    compiled = re.compile(pattern) if pattern else None

    def check(v: Any) -> str:
        if not isinstance(v, str):
            fail(f"{show(v)} must be a string")
        if not v and empty:
            return v
        if not v.strip():
            fail(f"{show(v)} must not be empty")
        if compiled is not None and not compiled.fullmatch(v):
            fail(f"{show(v)} {hint or 'is not valid'}")
        return v
    return Annotated[str, BeforeValidator(check)]


def _absolute(v: Any) -> str:
    if not isinstance(v, str):
        fail(f"{show(v)} must be a string")
    if v and not v.startswith("/"):
        fail(f"{show(v)} must be an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in v):
        fail(f"{show(v)} contains control characters")
    return v


AbsolutePath = Annotated[str, BeforeValidator(_absolute), AfterValidator(lambda v: v or fail("must not be empty"))]
OptionalAbsolutePath = Annotated[str, BeforeValidator(_absolute)]       # "" means "not set"


def choice(*allowed: str, hint: str = "") -> Any:
    """One of ``allowed`` (exact strings)."""
    def check(v: Any) -> str:
        if v not in allowed or not isinstance(v, str):
            fail(f"{show(v)} is not one of {', '.join(allowed)}{hint}")
        return v
    return Annotated[str, BeforeValidator(check)]


def _level(v: Any) -> str:
    if isinstance(v, str) and v.upper() in LEVELS:
        return v.upper()
    if hasattr(v, "name") and getattr(v, "name") in LEVELS:         # a RiskLevel
        return v.name
    fail(f"{show(v)} is not a level ({', '.join(LEVELS)})")


Level = Annotated[str, BeforeValidator(_level)]                      # case-insensitive, kept upper-case
Flag = Annotated[bool, BeforeValidator(lambda v: v if isinstance(v, bool) else fail(f"{show(v)} must be true or false"))]


def items(of: Any) -> Any:
    """A list (YAML sequence) of ``of``, kept as a tuple; a string is not a list of characters."""
    def check(v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (list, tuple)):
            fail(f"{show(v)} must be a list")
        return v
    return Annotated[tuple[of, ...], BeforeValidator(check)]


__all__ = ["AbsolutePath", "Cpu", "Flag", "FrozenMap", "LEVELS", "Level", "MAX_SECONDS", "MAX_SIZE", "OptionalAbsolutePath",
           "ProviderSettings", "SCHEMA_CONFIG", "Seconds", "Size", "WholeSeconds", "check_keys", "choice",
           "config_error", "cpu_count", "fail", "fail_at", "message_of", "items", "number", "section", "show", "size_bytes",
           "text", "validate"]
