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

from ...operators import OPERATORS
from ...steering import SteeringSpec
from .library import SteerLibrary, SteerNotFound

KEY = "steerlab"
RESOLVED = "steerlab_resolved"
ITEM_KEYS = ("vector", "multiplier", "layers", "positions", "operator")
# Chat-role and marker-window positions read token ids on the HF engine; the workers know absolute positions only.
POSITIONS = ("all", "prompt", "generated")


class SteeringRequestError(ValueError):
    """A request's steering cannot be applied; the message names the field and the fix."""


@dataclass(frozen=True)
class Term:
    """One steer of one request, explicit: which directions, the coefficient per layer, which positions."""

    sha256: str
    layers: tuple[tuple[int, float], ...]  # (layer, coefficient = multiplier * layer weight, float32 value)
    positions: str
    operator: str = "add"  # a function of steerlab.operators

    def as_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "layers": [[layer, coef] for layer, coef in self.layers],
                "positions": self.positions, "operator": self.operator}


def parse_items(raw: Any) -> list[dict[str, Any]]:
    """The user's items as a list of dicts with known keys only (a typo must not silently mean "unsteered")."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SteeringRequestError(f"{KEY}: not valid JSON ({exc}); give an item like "
                                       '{"vector": "happy", "multiplier": 4}') from None
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SteeringRequestError(f"{KEY}: expected an item or a list of items like "
                                   '{"vector": "happy", "multiplier": 4}')
    for n, item in enumerate(items):
        unknown = sorted(set(item) - set(ITEM_KEYS))
        if unknown:
            raise SteeringRequestError(f"{KEY}[{n}]: unknown field(s) {', '.join(unknown)}; allowed: "
                                       f"{', '.join(ITEM_KEYS)}")
        if not isinstance(item.get("vector"), str) or not item["vector"]:
            raise SteeringRequestError(f"{KEY}[{n}].vector: give a steer's file stem or sha256")
    return items


def resolve(raw: Any, library: SteerLibrary, *, hidden_size: int, num_layers: int) -> list[Term]:
    """Check every item against the steer folder and the model; the library's defaults fill omitted fields."""
    terms = []
    for n, item in enumerate(parse_items(raw)):
        where = f"{KEY}[{n}]"
        try:
            entry = library.lookup(item["vector"])
        except SteerNotFound as exc:
            raise SteeringRequestError(f"{where}.vector: {exc}") from None
        if entry.refusal:
            raise SteeringRequestError(f"{where}.vector: {entry.refusal}")
        vector = entry.vector
        if vector.meta.hidden_size != hidden_size:
            raise SteeringRequestError(
                f"{where}.vector: '{entry.name}' was built for {vector.meta.model_name} (hidden size "
                f"{vector.meta.hidden_size}); the served model has hidden size {hidden_size}")
        positions = item.get("positions", "all")
        if positions not in POSITIONS:
            raise SteeringRequestError(f"{where}.positions: must be one of {', '.join(POSITIONS)} on vLLM (chat roles "
                                       f"and between:OPEN:CLOSE windows need the HF engine), got {positions!r}")
        multiplier = item.get("multiplier")
        if multiplier is not None and (isinstance(multiplier, bool) or not isinstance(multiplier, (int, float))
                                       or not math.isfinite(multiplier)):
            raise SteeringRequestError(f"{where}.multiplier: must be a finite number, got {multiplier!r}")
        operator = item.get("operator", "add")
        if operator not in OPERATORS:
            raise SteeringRequestError(f"{where}.operator: unknown operator {operator!r}; available: "
                                       f"{', '.join(OPERATORS)}")
        spec = SteeringSpec(vector, multiplier, _layers(item.get("layers"), where), positions, operator)
        weights = spec.layer_weights()
        for layer in weights:
            if not 0 <= layer < num_layers:
                raise SteeringRequestError(f"{where}.layers: layer {layer} is out of range; the served model has "
                                           f"layers 0..{num_layers - 1}")
            if layer not in vector.directions:
                raise SteeringRequestError(f"{where}.layers: '{entry.name}' has no direction for layer {layer}; "
                                           f"it has layers {vector.layers}")
        # The same float32 product as steering.py's per-row coefficient (multiplier * layer weight).
        rows = spec.row_multipliers()
        coefs = tuple((layer, float(rows[0] * weight)) for layer, weight in weights.items())
        terms.append(Term(entry.sha256, coefs, positions, operator))
    return terms


def _layers(raw: Any, where: str) -> list[int] | dict[int, float] | None:
    if raw is None:
        return None
    try:
        if isinstance(raw, dict):
            return {int(k): float(v) for k, v in raw.items()}
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            if len(set(raw)) != len(raw):
                raise ValueError
            return [int(x) for x in raw]
    except (TypeError, ValueError):
        pass
    raise SteeringRequestError(f"{where}.layers: give a non-empty list of distinct layer numbers or "
                               f"{{layer: weight}}, got {raw!r}")


def encode(terms: list[Term]) -> str:
    """The resolved form as canonical JSON: what workers read and what the cache salt is derived from."""
    return json.dumps([t.as_json() for t in terms], sort_keys=True, separators=(",", ":"))


def decode(text: str) -> list[Term]:
    return [Term(t["sha256"], tuple((int(layer), float(coef)) for layer, coef in t["layers"]), t["positions"],
                 t.get("operator", "add")) for t in json.loads(text)]


def cache_salt(resolved: str, user_salt: str | None) -> str:
    """A salt that differs whenever the steering differs; the user's own salt is kept inside it."""
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:32]
    return f"steerlab:{digest}" + (f"|{user_salt}" if user_salt else "")
