"""Typed method configs built from dicts/YAML/--set pairs: unknown keys and wrong types are errors.

YAML is read strictly: a number in any notation is a number (`1e-4` too, which PyYAML leaves a string),
duplicate keys and non-finite numbers are refused, and every error is one line naming the file and line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .errors import SteerlabError
from .textio import MAX_DEPTH, read_text

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # configs are dataclasses
MAX_NODES = 100_000  # a config or task file is small; anchors and aliases must not expand it past this


class ConfigError(SteerlabError, ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus numbers in exponent notation without a dot, and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode):
        # PyYAML assumes an explicit !!timestamp always matches its pattern, and fails with AttributeError.
        if not isinstance(node.value, str) or self.timestamp_regexp.match(node.value) is None:
            raise yaml.constructor.ConstructorError(None, None, "not a date or timestamp", node.start_mark)
        return super().construct_yaml_timestamp(node)


# YAML 1.1 (PyYAML) reads 1e-4 and 2E5 as strings: its floats need a dot and a signed exponent.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def parse_yaml(
    text: str, source: str, error: type[Exception] = ConfigError, *, positions: bool = True
) -> tuple[Any, dict[str, int]]:
    """The YAML document in `text` and the line of each top-level key; errors are one line naming `source`
    (and the line and column in it, unless `positions` is off: a one-line --set value has none worth giving)."""
    loader = None
    try:
        text = text.removeprefix("\ufeff")
        _check_nesting(text, source, error)
        loader = _Loader(text)  # refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_size(node, source, error)
        value = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error(_yaml_message(exc, source, positions)) from None
    except RecursionError:
        raise error(f"{source}: nested too deeply (the limit is {MAX_DEPTH} levels)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date such as 2024-13-45
        if isinstance(exc, error):
            raise
        raise error(f"{source}: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return value, lines


_OPEN = (
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_nesting(text: str, source: str, error: type[Exception]) -> None:
    """Stop at the first token past MAX_DEPTH levels: PyYAML's scanner slows quadratically with open brackets."""
    depth = 0
    for token in yaml.scan(text, Loader=_Loader):
        depth += isinstance(token, _OPEN) - isinstance(token, _CLOSE)
        if depth > MAX_DEPTH:
            raise error(f"{source}:{token.start_mark.line + 1}: nested too deeply (the limit is {MAX_DEPTH} levels)")


def _check_size(root: yaml.Node, source: str, error: type[Exception]) -> None:
    """Refuse documents nested deeper than MAX_DEPTH or expanding (through aliases) past MAX_NODES nodes."""
    depth: dict[int, int] = {}
    size: dict[int, int] = {}
    stack = [(root, 1, False)]
    while stack:
        node, level, done = stack.pop()
        if level > MAX_DEPTH:
            raise error(f"{source}:{node.start_mark.line + 1}: nested too deeply (the limit is {MAX_DEPTH} levels)")
        children = (
            [c for pair in node.value for c in pair]
            if isinstance(node, yaml.MappingNode)
            else (node.value if isinstance(node, yaml.SequenceNode) else [])
        )
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_NODES:
                raise error(f"{source}: the document expands to more than {MAX_NODES} values")
            continue
        if id(node) in size or depth.get(id(node), 0) >= level:
            continue
        depth[id(node)] = level
        stack.append((node, level, True))
        stack.extend((c, level + 1, False) for c in children if id(c) not in size)


def _yaml_message(exc: yaml.YAMLError, source: str, positions: bool) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None and positions else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context and problem != str(exc) else problem
    return f"{where}: not valid YAML ({' '.join(str(text).split())})"


def build_config(
    cls: type[T], values: dict[str, Any] | None = None, source: str = "config", lines: dict[str, int] | None = None
) -> T:
    """Make `cls` from a dict, refusing unknown keys (a typo must not silently fall back to a default).

    `lines` (key -> line in `source`) lets an error point at the line of the key it is about.
    """
    lines = lines if lines is not None else getattr(values, "lines", {})
    values = dict(values or {})
    at = lambda key: f"{source}:{lines[key]}" if key in lines else source  # noqa: E731
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in allowed:
            raise ConfigError(f"{at(key)}: unknown key {key!r} for {cls.__name__}; allowed keys: {', '.join(allowed)}")
    required = [
        f.name
        for f in allowed.values()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init
    ]
    missing = [key for key in required if key not in values]
    if missing:
        raise ConfigError(
            f"{source}: missing key{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}; {cls.__name__} needs {', '.join(required)}"
        )
    hints = typing.get_type_hints(cls)
    coerced = {key: _coerce(hints[key], value, f"{at(key)}: key '{key}'") for key, value in values.items()}
    try:
        return cls(**coerced)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML config file (optional) and apply `key=value` overrides, then validate."""
    values, source = read_config_values(path, overrides)
    return build_config(cls, values, source)


def read_config_values(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], str]:
    """The raw values of a YAML config file (optional) with `key=value` overrides applied, and where they came from."""
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        loaded, lines = parse_yaml(read_text(path, ConfigError), str(path))
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of key: value")
        values.update(loaded)
        source = str(path)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        shown = item.encode("unicode_escape").decode("ascii") if not item.isprintable() else item
        if not sep or not key.strip():
            raise ConfigError(f"--set {shown}: expected key=value")
        values[key.strip()] = parse_yaml(raw, f"--set {shown}", positions=False)[0]
        lines.pop(key.strip(), None)
    return ConfigValues(values, lines), source


class ConfigValues(dict):
    """Values read from a config file that remember the line of each key, so build_config can name it."""

    def __init__(self, values: dict[str, Any], lines: dict[str, int]):
        super().__init__(values)
        self.lines = lines


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
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value
