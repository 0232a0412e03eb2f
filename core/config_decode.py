"""Describing, checking and decoding the configuration's structures (those live in ``config_schema``).

A field's description and the bounds msgspec cannot hold (Decimal amounts, the venue a key belongs
to) sit in its ``Meta``: :func:`doc` builds one, :func:`field_info` reads them back (the loader's
key checks, the README test), :func:`check_amounts` applies the Decimal bounds. :func:`decode_table`
turns a TOML table into a structure, and any problem into one :class:`ConfigError` naming the
dotted key. Nothing here names a configuration key, so the structures can grow without touching it.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from core.errors import XtbError

T = TypeVar("T")


class ConfigError(XtbError):
    """A configuration problem: ``<file>: <key>: <what is expected>``."""

    def __init__(self, key: str, message: str, path: str | None = None) -> None:
        # Keys and values come from the user's file; escape them so the error stays one line.
        self.key = _one_line(key)
        self.message = _one_line(message)
        self.path = path
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"

    def with_path(self, path: str) -> ConfigError:
        return ConfigError(self.key, self.message, path)


def _one_line(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


#: Largest magnitude a configured amount may have (sizes, tolerances, collateral).
DECIMAL_LIMIT = Decimal(10) ** 12
# ASCII digits only: Decimal() and float() also read other scripts' digits ("١" is 1).
_DECIMAL_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def parse_decimal(text: str) -> Decimal | None:
    """``text`` as a Decimal when it is a plain ASCII decimal number below DECIMAL_LIMIT, else None."""
    if not _DECIMAL_TEXT.fullmatch(text):
        return None
    number = Decimal(text)
    return number if abs(number) < DECIMAL_LIMIT else None


# --------------------------------------------------------------------------------------------
# Field metadata and amounts


def doc(description: str, **extra: Any) -> Meta:
    """A field's description, and bounds msgspec cannot check (``gt``/``ge``/``le`` on Decimals, ``venue``)."""
    return Meta(description=description, extra=extra or None)


def _metas(tp: Any) -> list[Meta]:
    if typing.get_origin(tp) is not Annotated:
        return []
    inner, *metas = typing.get_args(tp)
    return [m for m in metas if isinstance(m, Meta)] + _metas(inner)


def _bare(tp: Any) -> Any:
    # The field's type without Annotated and None: Decimal, an Enum, int...
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _bare(args[0]) if len(args) == 1 and typing.get_origin(tp) is not None else tp


@functools.cache
def field_info(cls: type) -> dict[str, tuple[Any, str | None, dict[str, Any]]]:
    """Each field's bare type, description and ``extra`` metadata, in declaration order."""
    out = {}
    for f in msgspec.structs.fields(cls):
        metas = _metas(f.type)
        # The outermost Meta wins: a field's own description over its alias's.
        description = next((m.description for m in reversed(metas) if m.description), None)
        extra: dict[str, Any] = {}
        for m in metas:
            extra.update(m.extra or {})
        out[f.name] = (_bare(f.type), description, extra)
    return out


def check_amounts(obj: msgspec.Struct) -> None:
    """Every Decimal field of ``obj`` finite, below DECIMAL_LIMIT and within its ``doc`` bounds."""
    for name, (tp, _, extra) in field_info(type(obj)).items():
        value = getattr(obj, name)
        if tp is not Decimal or value is None:
            continue
        if not value.is_finite():
            raise ConfigError(name, f"expected a finite decimal number, got {value}")
        if abs(value) >= DECIMAL_LIMIT:
            # 1e999 is a finite Decimal, but no venue amount is near it and quantizing it overflows.
            raise ConfigError(name, f"expected a decimal number below {DECIMAL_LIMIT:,}, got {value}")
        if "gt" in extra and not value > extra["gt"]:
            raise ConfigError(name, f"expected a decimal number > {extra['gt']}, got {value}")
        if "ge" in extra and not value >= extra["ge"]:
            raise ConfigError(name, f"expected a decimal number >= {extra['ge']}, got {value}")
        if "le" in extra and not value <= extra["le"]:
            raise ConfigError(name, f"expected a decimal number <= {extra['le']}, got {value}")


def check_url(key: str, value: str | None, schemes: tuple[str, ...]) -> str | None:
    """``value`` without a trailing slash when it has one of ``schemes``; else a ConfigError on ``key``."""
    if value is None:
        return None
    if not value.startswith(tuple(f"{s}://" for s in schemes)):
        raise ConfigError(key, f"expected a {'/'.join(schemes)} URL, got {value!r}")
    # The Lighter SDK requests //api/v1/... with a trailing slash.
    return value.rstrip("/")


def normalise(obj: msgspec.Struct, **values: Any) -> None:
    # Frozen structs normalise their own fields once, while being built.
    for name, value in values.items():
        msgspec.structs.force_setattr(obj, name, value)


# --------------------------------------------------------------------------------------------
# Decoding a table, and turning msgspec's errors into one-line ConfigErrors


def _path_hook(base_dir: Path | None) -> Callable[[type, Any], Any]:
    def hook(tp: type, obj: Any) -> Any:
        if tp is not Path:
            raise NotImplementedError(tp)
        if not isinstance(obj, str):
            raise TypeError(f"expected a string, got {type(obj).__name__} {obj!r}")
        path = Path(obj).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path

    return hook


def join_key(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def decode_table(cls: type[T], raw: Any, prefix: str = "", base_dir: Path | None = None) -> T:
    """``raw`` (one TOML table) as ``cls``; any problem is a ConfigError naming ``<prefix>.<key>``."""
    fields = field_info(typing.cast(type, cls))
    for name, value in raw.items() if isinstance(raw, Mapping) else ():
        if isinstance(value, str) and fields.get(name, (None,))[0] is Decimal and not _DECIMAL_TEXT.fullmatch(value):
            raise ConfigError(join_key(prefix, name), f"expected a decimal number in ASCII digits, got {value!r}")
    try:
        return msgspec.convert(raw, cls, strict=True, dec_hook=_path_hook(base_dir))
    except msgspec.ValidationError as exc:
        raise _translate(cls, raw, prefix, str(exc)) from None
    except ConfigError as exc:  # from a __post_init__, keyed relative to the structure
        raise ConfigError(join_key(prefix, exc.key), exc.message) from None
    except UnicodeError:
        raise ConfigError(prefix, "expected text without unpaired surrogates") from None


_AT = re.compile(r"(?s)(.*?)(?: - at `\$\.(\w+)`)?")
_EXPECTED = re.compile(r"Expected `([^`]*)`(, got `[^`]*`)?(.*)")
_PHRASES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
            "decimal": "a decimal number or string", "object": "a table", "array": "an array"}


def _phrase(msgspec_types: str) -> str:
    names = [t for t in msgspec_types.split(" | ") if t != "null"] or ["null"]
    return " or ".join(_PHRASES.get(t, t) for t in names)


def _translate(cls: type, raw: Any, prefix: str, text: str) -> ConfigError:
    match = _AT.fullmatch(text)
    message, name = (match[1], match[2]) if match else (text, None)
    fields = field_info(cls)
    table = raw if isinstance(raw, Mapping) else {}
    if name is None and message.startswith("Object contains unknown field"):
        unknown = next((k for k in table if k not in fields), "")
        allowed = ", ".join(sorted(set(fields) - {"name"}))
        return ConfigError(join_key(prefix, str(unknown)), f"unknown key; expected one of {allowed}")
    if name is None and message.startswith("Object missing required field"):
        missing = next((k for k in fields if k not in table), "")
        description = fields[missing][1] if missing else None
        return ConfigError(join_key(prefix, missing), f"missing; expected {description}" if description else "missing")
    value = table.get(name, raw) if name else raw
    key = join_key(prefix, name or "")
    expected = _EXPECTED.fullmatch(message)
    if expected and expected[2]:
        return ConfigError(key, f"expected {_phrase(expected[1])}, got {type(value).__name__} {value!r}")
    if expected:
        return ConfigError(key, f"expected {_phrase(expected[1])}{expected[3]}, got {value!r}")
    tp = fields[name][0] if name in fields else None
    if message.startswith("Invalid enum value") and isinstance(tp, type) and issubclass(tp, Enum):
        return ConfigError(key, f"expected one of {', '.join(repr(m.value) for m in tp)}, got {value!r}")
    if message.startswith("expected"):  # our own, from a decode hook
        return ConfigError(key, message)
    return ConfigError(key, f"{message[:1].lower()}{message[1:]}, got {value!r}")
