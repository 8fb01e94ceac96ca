"""Strict reading of text and JSON for every file reader: UTF-8 (a BOM is accepted), no duplicate keys, no
NaN or Infinity, bounded nesting; every problem is raised as the caller's own error class, naming the file
and, where there is one, the line and column."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeGuard

MAX_DEPTH = 64  # far deeper than any steerlab file; deeper input is refused before anything recurses on it


def read_text(path: str | Path, error: type[Exception]) -> str:
    """The file's text as UTF-8 (a leading BOM dropped); other encodings are refused naming the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode(data, str(path), error)


def decode(data: bytes, source: str, error: type[Exception]) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise error(
                f"{source}:1: not UTF-8 (byte 0x{data[0]:02x} at offset 0); it is UTF-16 (it starts with a UTF-16 "
                "byte-order mark): save the file as UTF-8"
            ) from None
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{source}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def loads(text: str, source: str, error: type[Exception], *, line: int | None = None) -> Any:
    """Parse JSON strictly. `source` names where the text came from; `line` is the line `text` starts on
    in that file (JSON lines), so errors say "FILE: line N: ..."."""
    text = text.removeprefix("\ufeff")
    if line is not None:
        source = f"{source}: line {line}"

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise error(f"{source}: duplicate key '{key}'")
            out[key] = value
        return out

    def constant(name: str) -> float:
        raise error(f"{source}: {name} is not allowed; numbers must be finite")

    def number(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise error(f"{source}: the number {literal[:40]} is too large for a float")
        return value

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError as exc:
        if line is None:
            raise error(f"{source}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") from None
        raise error(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply (the limit is {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        if isinstance(exc, error):
            raise
        raise error(f"{source}: not valid JSON ({exc})") from None
    check_depth(value, source, error)
    return value


def check_depth(value: Any, source: str, error: type[Exception], limit: int = MAX_DEPTH) -> None:
    """Refuse containers nested deeper than `limit` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > limit:
                raise error(f"{source}: nested too deeply (the limit is {limit} levels)")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def is_number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float, and not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so what we write our readers accept."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
