"""Typed method configs built from dicts/YAML/--set pairs: unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""


def build_config(cls: type[T], values: dict[str, Any] | None = None, source: str = "config") -> T:
    """Make `cls` from a dict, refusing unknown keys (a typo must not silently fall back to a default)."""
    values = dict(values or {})
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in allowed:
            raise ConfigError(f"{source}: unknown key '{key}' for {cls.__name__}; allowed keys: {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    coerced = {key: _coerce(hints[key], value, f"{source}: key '{key}'") for key, value in values.items()}
    try:
        return cls(**coerced)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML config file (optional) and apply `key=value` overrides, then validate."""
    values, source = read_config_values(path, overrides)
    return build_config(cls, values, source)


def read_config_values(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """The raw values of a YAML config file (optional) with `key=value` overrides applied, and where they came from."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of key: value")
        values.update(loaded)
        source = str(path)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected key=value")
        values[key.strip()] = yaml.safe_load(raw)
    return values, source


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(inner, v, where) for v in value]
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value
