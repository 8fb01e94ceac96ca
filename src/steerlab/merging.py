"""Combine several steering vectors of one model into one: a weighted sum, or TIES merging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import UsageError
from .vector import IncompatibleVectorError, SteeringVector, VectorMeta, content_hash, describe_model, same_model


def merge_linear(
    vectors: Sequence[SteeringVector], weights: Sequence[float], *, layers: Sequence[int] | None = None
) -> SteeringVector:
    """Weighted sum per layer: the plain way to mix concepts (weights may be negative to subtract)."""
    kept = _checked_layers(vectors, layers)
    weights = _checked_weights(vectors, weights)
    directions = {
        layer: torch.as_tensor(sum(w * v.directions[layer] for w, v in zip(weights, vectors, strict=False)))
        for layer in kept
    }
    return SteeringVector(directions, _merged_meta(vectors, kept, "merge-linear", {"weights": weights}))


def merge_ties(
    vectors: Sequence[SteeringVector],
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    *,
    layers: Sequence[int] | None = None,
) -> SteeringVector:
    """TIES (Yadav et al. 2023): trim, elect a sign, average the agreeing values, so vectors don't cancel out."""
    kept = _checked_layers(vectors, layers)
    weights = _checked_weights(vectors, [1.0] * len(vectors) if weights is None else weights)
    if any(w <= 0 for w in weights):
        raise UsageError(f"TIES weights must be positive, got {weights}; negate a vector (-v) to subtract it")
    if not 0.0 < density <= 1.0:
        raise UsageError(f"density is the fraction of values kept per layer, in (0, 1]; got {density}")
    directions = {
        layer: ties_layer(torch.stack([v.directions[layer] for v in vectors]), torch.tensor(weights), density)
        for layer in kept
    }
    params = {"weights": weights, "density": density}
    return SteeringVector(directions, _merged_meta(vectors, kept, "merge-ties", params))


def ties_layer(stacked: torch.Tensor, weights: torch.Tensor, density: float) -> torch.Tensor:
    """One layer of TIES: `stacked` is [n_vectors, hidden], `weights` is [n_vectors]; returns [hidden]."""
    trimmed = weights[:, None] * trim_by_magnitude(stacked, density)
    # sign(0) = 0: where the trimmed values cancel exactly, no sign is elected and the result is 0.
    elected = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = (trimmed * agree).sum(dim=0)
    weight_of_agreeing = (weights[:, None] * agree).sum(dim=0)
    return torch.where(agree.any(dim=0), total / weight_of_agreeing.clamp_min(1e-12), torch.zeros_like(total))


def trim_by_magnitude(stacked: torch.Tensor, density: float) -> torch.Tensor:
    """Keep each row's k = max(1, floor(density * hidden)) largest magnitudes; ties go to the lower index."""
    k = max(1, int(density * stacked.shape[-1]))
    order = torch.sort(stacked.abs(), dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(stacked, dtype=torch.bool).scatter_(-1, order[..., :k], True)
    return stacked * keep


def _checked_layers(vectors: Sequence[SteeringVector], layers: Sequence[int] | None) -> list[int]:
    """Refuse vectors of different models or layer sets; with `layers`, every vector must have them."""
    if not vectors:
        raise UsageError("nothing to merge: pass at least one vector")
    first = vectors[0]
    for i, other in enumerate(vectors[1:], start=1):
        _check_same_model(first, other, i)
    if layers is None:
        for i, other in enumerate(vectors[1:], start=1):
            if other.layers != first.layers:
                raise IncompatibleVectorError(
                    f"cannot merge vectors with different layers: vector 0 has layers {first.layers}, "
                    f"vector {i} has layers {other.layers}; pass layers=[...] to merge only some"
                )
        return first.layers
    kept = sorted({int(layer) for layer in layers})
    if not kept:
        raise UsageError("layers=[] keeps nothing; name at least one layer")
    for i, vector in enumerate(vectors):
        missing = [layer for layer in kept if layer not in vector.directions]
        if missing:
            raise IncompatibleVectorError(
                f"vector {i} has no direction for layer {missing[0]}; it has layers {vector.layers}"
            )
    return kept


def _check_same_model(first: SteeringVector, other: SteeringVector, index: int) -> None:
    if not same_model(first.meta, other.meta):
        raise IncompatibleVectorError(
            f"cannot merge vectors of different models: vector 0 is for "
            f"{describe_model(first.meta)}, vector {index} for {describe_model(other.meta)}"
        )


def _checked_weights(vectors: Sequence[SteeringVector], weights: Sequence[float]) -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != len(vectors):
        raise UsageError(f"got {len(weights)} weights for {len(vectors)} vectors; give one weight per vector")
    return weights


def _merged_meta(
    vectors: Sequence[SteeringVector], layers: list[int], method: str, params: dict[str, Any]
) -> VectorMeta:
    """The inputs' model identity, plus a record of every input so the merge can be traced back."""
    first = vectors[0].meta
    inputs = [{"method": v.meta.method, "task": v.meta.task, "sha256": content_hash(v)} for v in vectors]
    tasks = {v.meta.task for v in vectors}
    return VectorMeta(
        model_name=first.model_name,
        hidden_size=first.hidden_size,
        num_layers=first.num_layers,
        method=method,
        model_fingerprint=first.model_fingerprint,
        model_type=first.model_type,
        config={"inputs": inputs, **params, "layers": layers},
        task=tasks.pop() if len(tasks) == 1 else "",
        residual_norms=_residual_norms(vectors, layers),
    )


def _residual_norms(vectors: Sequence[SteeringVector], layers: list[int]) -> dict[str, float]:
    """Residual norms belong to the model's layers, not to a vector, so any input's value serves."""
    wanted = {str(layer) for layer in layers}
    norms: dict[str, float] = {}
    for vector in vectors:
        for key, value in vector.meta.residual_norms.items():
            if key in wanted:
                norms.setdefault(key, value)
    return norms
