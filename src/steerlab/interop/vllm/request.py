"""Per-request steering on vLLM: what a request may ask for, checked and made explicit before it is scheduled.

A request carries `SamplingParams.extra_args["steerlab"]`: one item or a list of items, each
`{"vector": NAME_OR_SHA256, "multiplier": 4.0, "layers": [15] or {"15": 0.5}, "positions": "all"}`, or that
JSON as a string (OpenAI clients: `extra_body={"vllm_xargs": {"steerlab": json.dumps(item)}}`, since
`vllm_xargs` values must be strings or numbers). The front end resolves it once into the explicit form the
workers apply (content hash, per-layer coefficient, positions) and derives the request's cache salt from
that form, so prefix caching never shares KV computed under different steering.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from ...errors import SteerlabError
from ...operators import OPERATORS
from ...steering import FLOAT32_MAX, SteeringError, SteeringSpec, check_float32
from ...textio import check_depth, loads
from .library import SteerLibrary, SteerNotFound

KEY = "steerlab"
RESOLVED = "steerlab_resolved"
ITEM_KEYS = ("vector", "multiplier", "strength", "layers", "positions", "operator")
# Chat roles, marker windows and until-marker segments read token ids on the HF engine; the workers know absolute
# positions only.
POSITIONS = ("all", "prompt", "generated")
MAX_ITEMS = 8  # items per request (the workers' plan holds this many per token and layer)


class SteeringRequestError(SteerlabError, ValueError):
    """A request's steering cannot be applied; the message names the field and the fix."""


@dataclass(frozen=True)
class Term:
    """One steer of one request, explicit: which directions, the coefficient per layer, which positions."""

    sha256: str
    layers: tuple[tuple[int, float], ...]  # (layer, coefficient = multiplier * layer weight, float32 value)
    positions: str
    operator: str = "add"  # a function of steerlab.operators

    def as_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "layers": [[layer, coef] for layer, coef in self.layers],
            "positions": self.positions,
            "operator": self.operator,
        }


def parse_items(raw: Any) -> list[dict[str, Any]]:
    """The user's items as a list of dicts with known keys only (a typo must not silently mean "unsteered")."""
    if isinstance(raw, str):
        raw = loads(raw, KEY, SteeringRequestError)  # strict: no NaN/Infinity, no duplicate keys, bounded depth
    else:
        check_depth(raw, KEY, SteeringRequestError)
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise SteeringRequestError(
            f'{KEY}: expected an item or a non-empty list of items like {{"vector": "happy", "multiplier": 4}}'
        )
    if len(items) > MAX_ITEMS:
        raise SteeringRequestError(f"{KEY}: {len(items)} items; a request takes at most {MAX_ITEMS}")
    for n, item in enumerate(items):
        unknown = sorted(map(str, set(item) - set(ITEM_KEYS)))
        if unknown:
            raise SteeringRequestError(
                f"{KEY}[{n}]: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(ITEM_KEYS)}"
            )
        if not isinstance(item.get("vector"), str) or not item["vector"]:
            raise SteeringRequestError(f"{KEY}[{n}].vector: give a steer's file stem or sha256")
    return items


def resolve(raw: Any, library: SteerLibrary, *, hidden_size: int, num_layers: int) -> list[Term]:
    """Check every item against the steer folder and the model; the library's defaults fill omitted fields.

    Every coefficient (multiplier, strength, layer weight and their product) must be finite in float32, the
    HF server's rule (`steering.check_float32`): a NaN or an overflow reaching the workers would be a NaN in
    the batch's arithmetic.
    """
    terms = []
    for n, item in enumerate(parse_items(raw)):
        try:
            terms.append(_term(item, f"{KEY}[{n}]", library, hidden_size, num_layers))
        except SteeringError as exc:  # the library's own checks (strength conversion, float32 ranges)
            text = str(exc)
            raise SteeringRequestError(text if text.startswith(KEY) else f"{KEY}[{n}]: {text}") from None
    return terms


def _term(item: dict[str, Any], where: str, library: SteerLibrary, hidden_size: int, num_layers: int) -> Term:
    try:
        entry = library.lookup(item["vector"])
    except SteerNotFound as exc:
        raise SteeringRequestError(f"{where}.vector: {exc}") from None
    if entry.refusal:
        raise SteeringRequestError(f"{where}.vector: {entry.refusal}")
    vector = entry.vector
    assert vector is not None and entry.sha256 is not None  # an entry without a refusal holds a vector
    if vector.meta.hidden_size != hidden_size:
        raise SteeringRequestError(
            f"{where}.vector: '{entry.name}' was built for {vector.meta.model_name} (hidden size "
            f"{vector.meta.hidden_size}); the served model has hidden size {hidden_size}"
        )
    positions = item.get("positions", "all")
    if positions not in POSITIONS:
        raise SteeringRequestError(
            f"{where}.positions: must be one of {', '.join(POSITIONS)} on vLLM (chat roles, "
            f"between:OPEN:CLOSE windows and until:MARKER segments need the HF engine), got {positions!r}"
        )
    multiplier, strength = (_coefficient(item.get(name), f"{where}.{name}") for name in ("multiplier", "strength"))
    if multiplier is not None and strength is not None:
        raise SteeringRequestError(f"{where}: give multiplier (raw) or strength (norm-relative), not both")
    operator = item.get("operator", "add")
    if operator not in OPERATORS:
        raise SteeringRequestError(
            f"{where}.operator: unknown operator {operator!r}; available: {', '.join(OPERATORS)}"
        )
    spec = SteeringSpec(vector, multiplier, _layers(item.get("layers"), where), positions, operator, strength)
    for layer in spec.layer_weights():
        if not 0 <= layer < num_layers:
            raise SteeringRequestError(
                f"{where}.layers: layer {layer} is out of range; the served model has layers 0..{num_layers - 1}"
            )
        if layer not in vector.directions:
            raise SteeringRequestError(
                f"{where}.layers: '{entry.name}' has no direction for layer {layer}; it has layers {vector.layers}"
            )
        if operator != "add" and not bool(vector.directions[layer].any()):
            raise SteeringRequestError(
                f"{where}.vector: '{entry.name}' is zero at layer {layer}; {operator} needs "
                "a direction (only add accepts a zero vector)"
            )
    coefs = []
    # The float32 products the HF hooks compute (steering.py's per-row coefficient, multiplier x layer weight).
    for layer, product in spec.layer_coefficients().items():
        if not (math.isfinite(product) and abs(product) <= FLOAT32_MAX):
            multiplier, weight = float(spec.row_multipliers(layer)[0]), spec.layer_weights()[layer]
            check_float32(product, f"{where}: multiplier x weight at layer {layer} ({multiplier:.4g} x {weight:.4g})")
        coefs.append((layer, product))
    return Term(entry.sha256, tuple(coefs), positions, operator)


def _coefficient(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SteeringRequestError(f"{where}: must be a number, got {value!r}")
    try:
        return check_float32(float(value), where)
    except OverflowError:
        raise SteeringRequestError(f"{where} must be within float32's finite range (|m| <= 3.4e38)") from None
    except SteeringError as exc:
        raise SteeringRequestError(str(exc)) from None


def _layers(raw: Any, where: str) -> list[int] | dict[int, float] | None:
    if raw is None:
        return None
    if isinstance(raw, dict) and raw:
        layers: dict[int, float] = {}
        for key, weight in raw.items():
            layer = _layer_number(key)
            if layer is None or layer in layers:
                break
            layers[layer] = _coefficient(weight, f"{where}.layers[{key!r}]")  # type: ignore[assignment]
        else:
            return layers
    elif (
        isinstance(raw, (list, tuple))
        and raw
        and all(_layer_number(x) is not None and not isinstance(x, str) for x in raw)
        and len(set(raw)) == len(raw)
    ):
        return [int(x) for x in raw]
    raise SteeringRequestError(
        f"{where}.layers: give a non-empty list of distinct layer numbers or {{layer: weight}}, got {_short(raw)}"
    )


def _layer_number(key: Any) -> int | None:
    """A layer given as an int or (a JSON object key) a string of ASCII digits."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 6:
        return int(key)
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def encode(terms: list[Term]) -> str:
    """The resolved form as canonical JSON: what workers read and what the cache salt is derived from."""
    return json.dumps([t.as_json() for t in terms], sort_keys=True, separators=(",", ":"))


def decode(text: str) -> list[Term]:
    return [
        Term(
            t["sha256"],
            tuple((int(layer), float(coef)) for layer, coef in t["layers"]),
            t["positions"],
            t.get("operator", "add"),
        )
        for t in json.loads(text)
    ]


def cache_salt(resolved: str, user_salt: str | None) -> str:
    """A salt that differs whenever the steering differs; the user's own salt is kept inside it."""
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:32]
    return f"steerlab:{digest}" + (f"|{user_salt}" if user_salt else "")
