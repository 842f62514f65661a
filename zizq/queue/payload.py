"""What a payload may be: the JSON data model, nested at most MAX_DEPTH levels.

Allowed: null, booleans, integers that fit 64 bits, finite floats, strings,
arrays, and maps whose keys are strings. Everything else either body format can
carry is refused at enqueue, so a stored payload always encodes in JSON and in
MessagePack for every reader (responses wrap a payload in at most three more
levels; orjson writes at most 254).

Some checks are left to the parsers, which already guarantee them:
- integers: orjson reads anything past 64 bits as a float, MessagePack has no
  wider integers, and msgpack.packb refuses a wider Python int (OverflowError);
- strings: both parsers decode strictly (no invalid UTF-8, no lone surrogates);
- JSON bodies cannot hold NaN, Infinity, binary data or non-string keys.
A MessagePack body can (bin, ext, timestamps, NaN, integer or binary map keys),
and either format can nest deeper than we allow; the walk below finds those.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import orjson

MAX_DEPTH = 128  # containers nested inside one another, the payload itself counting as 1

_SCALARS = frozenset({str, int, bool, type(None)})
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_PATH_CHARS = 200


class PayloadError(ValueError):
    """A value outside the payload data model; `path` leads from the payload to it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []  # innermost first, filled in while unwinding

    def describe(self, root: str) -> str:
        """`<root>.a[3].b: <reason>`, the path cut short if it is very long."""
        path = root + "".join(_step(part) for part in reversed(self.path))
        if len(path) > _MAX_PATH_CHARS:
            path = path[:_MAX_PATH_CHARS] + "..."
        return f"{path}: {self.reason}"


def _step(part: str | int) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    if _PLAIN_KEY.fullmatch(part):
        return f".{part}"
    shown = part if len(part) <= 40 else part[:40] + "..."
    return f"[{orjson.dumps(shown).decode()}]"


def _kind(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "binary data (MessagePack bin) is not allowed; send a string (e.g. base64)"
    if isinstance(value, msgpack.ExtType | msgpack.Timestamp):
        return "MessagePack extension types (ext, timestamps) are not allowed"
    if isinstance(value, float):
        return "NaN and infinite numbers are not allowed (JSON cannot carry them)"
    return f"values of type {type(value).__name__} are not allowed"


def _check_scalar(value: Any) -> None:
    if type(value) is float and math.isfinite(value):
        return
    raise PayloadError(_kind(value))


def _walk(container: dict | list, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"nested deeper than {MAX_DEPTH} levels")
    if type(container) is dict:
        for key, value in container.items():
            if type(key) is not str:
                raise PayloadError(f"map keys must be strings (found {_key_kind(key)})")
            kind = type(value)
            if kind in _SCALARS:
                continue
            try:
                if kind is dict or kind is list:
                    _walk(value, depth + 1)
                else:
                    _check_scalar(value)
            except PayloadError as error:
                error.path.append(key)
                raise
        return
    for index, value in enumerate(container):
        kind = type(value)
        if kind in _SCALARS:
            continue
        try:
            if kind is dict or kind is list:
                _walk(value, depth + 1)
            else:
                _check_scalar(value)
        except PayloadError as error:
            error.path.append(index)
            raise


def _key_kind(key: Any) -> str:
    if isinstance(key, bytes | bytearray):
        return "a binary key"
    if isinstance(key, msgpack.ExtType | msgpack.Timestamp):
        return "an extension-type key"
    return f"a key of type {type(key).__name__}"


def check(value: Any, from_json: bool = False) -> None:
    """Raise PayloadError unless `value` is inside the payload data model.

    `from_json`: the value comes from orjson, so only its depth can be wrong;
    a walk that looks at containers alone is about three times cheaper. Only
    when it finds a payload too deep does the full walk run, for the path.
    """
    kind = type(value)
    if kind is dict or kind is list:
        if from_json and _shallow(value, 1):
            return
        _walk(value, 1)
    elif kind not in _SCALARS:
        _check_scalar(value)


def _shallow(container: dict | list, depth: int) -> bool:
    """True if no container inside nests deeper than MAX_DEPTH (JSON values only)."""
    if depth > MAX_DEPTH:
        return False
    for value in container.values() if type(container) is dict else container:
        kind = type(value)
        if (kind is dict or kind is list) and not _shallow(value, depth + 1):
            return False
    return True
