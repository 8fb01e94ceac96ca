"""Norm-relative steering strength: the added vector's norm as a fraction of its layer's typical residual norm.

A raw multiplier (CAA's -1/0/+1) means different things on different models: a mean-difference vector
can be tiny next to one model's residual stream and large next to another's. A norm-relative strength
s adds a vector of norm s * (mean residual norm at that layer), so s = 0.1 nudges every model by about
a tenth of its own residual stream. Residual norms are measured on neutral text (steerlab's demo
prompts unless told otherwise) and stored in the vector's metadata, so any later run can convert.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources

import torch

from .activations import BlockReader
from .batching import pad, positions_from_mask
from .errors import SteerlabError, UsageError
from .models import LoadedModel, check_layers
from .vector import SteeringVector

NEUTRAL_TEXTS_FILE = "demo_prompts.txt"
NORM_SOURCE_KEY = "residual_norms_text"
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class StrengthError(SteerlabError, ValueError):
    """A norm-relative strength cannot be converted; the message says what to measure first."""


def neutral_texts() -> list[str]:
    """steerlab's shipped neutral prompts (written for steerlab): the default text residual norms are measured on."""
    path = resources.files("steerlab") / "resources" / NEUTRAL_TEXTS_FILE
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@torch.inference_mode()
def residual_norms(
    lm: LoadedModel, layers: Sequence[int] | None = None, texts: Sequence[str] | None = None, *, batch_size: int = 16
) -> dict[int, float]:
    """Mean L2 norm of each layer's output (the residual stream) over the tokens of neutral text.

    Each text's first token is left out: many models park a huge activation there (an attention
    sink), which would make the "typical" norm many times larger than any other token's.
    """
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    texts = list(texts) if texts is not None else neutral_texts()
    rows = [lm.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    rows = [r for r in rows if len(r) > 1]
    if not rows:
        raise UsageError("residual norms need at least one text of two or more tokens")
    sums = dict.fromkeys(layers, 0.0)
    count = 0
    keep = torch.zeros(0)

    def add_norms(layer: int, hidden: torch.Tensor) -> None:
        sums[layer] += float((hidden.float().norm(dim=-1) * keep).sum())

    with BlockReader(lm, layers, add_norms) as reader:
        for start in range(0, len(rows), batch_size):
            ids, mask = pad(rows[start : start + batch_size], lm.tokenizer.pad_token_id, left=True)
            positions = positions_from_mask(mask)
            keep = (mask * (positions > 0)).to(lm.device, torch.float32)
            reader.run(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=positions.to(lm.device),
                use_cache=False,
            )
            count += int(keep.sum())
    return {layer: sums[layer] / count for layer in layers}


def norms_metadata(lm: LoadedModel, layers: Sequence[int]) -> dict[str, float]:
    """residual_norms as a vector's metadata stores them ({"layer": norm}, 4 decimals): what every fit records."""
    return {str(k): round(v, 4) for k, v in residual_norms(lm, layers).items()}


def with_neutral_norms(
    lm: LoadedModel, vector: SteeringVector, texts: Sequence[str] | None = None, source: str = "steerlab demo prompts"
) -> SteeringVector:
    """A copy of `vector` whose metadata holds residual norms measured on neutral text at its layers."""
    norms = residual_norms(lm, vector.layers, texts)
    stats = dict(vector.meta.fit_stats, **{NORM_SOURCE_KEY: source if texts is None else f"{len(texts)} given texts"})
    meta = replace(vector.meta, residual_norms={str(k): round(v, 4) for k, v in norms.items()}, fit_stats=stats)
    return SteeringVector(dict(vector.directions), meta)


def _norms(vector: SteeringVector, layer: int) -> tuple[float, float]:
    if layer not in vector.directions:
        raise StrengthError(f"the vector has no direction for layer {layer}; it has layers {vector.layers}")
    residual = vector.meta.residual_norms.get(str(layer))
    if residual is None:
        raise StrengthError(
            f"the vector has no residual norm for layer {layer}, so a norm-relative strength cannot be converted; "
            "measure it with steerlab.strength.with_neutral_norms(lm, vector) (steerlab sweep does this)"
        )
    direction = float(vector.directions[layer].norm())
    if direction == 0.0:
        raise StrengthError(f"the vector's direction at layer {layer} is zero; no multiplier gives it a strength")
    return float(residual), direction


def multiplier_for(vector: SteeringVector, layer: int, strength: float) -> float:
    """The raw multiplier that adds a vector of norm `strength` * (layer's residual norm)."""
    residual, direction = _norms(vector, layer)
    return _float32("strength", strength, strength * residual / direction)


def strength_of(vector: SteeringVector, layer: int, multiplier: float) -> float:
    """The norm-relative strength of a raw multiplier at `layer`: ||multiplier * v|| / residual norm (signed)."""
    residual, direction = _norms(vector, layer)
    return _float32("multiplier", multiplier, multiplier * direction / residual)


def _float32(what: str, given: float, converted: float) -> float:
    """Refuse a value (given or converted) that is not finite in float32, where the model would use it."""
    if not all(math.isfinite(x) and abs(x) <= FLOAT32_MAX for x in (given, converted)):
        raise StrengthError(
            f"{what} {given} is not a finite float32 number once converted ({converted}); "
            f"give one within |x| <= {FLOAT32_MAX:.4g}"
        )
    return converted
