"""PCA / RepE control vectors: the first principal component of contrastive activations, one direction per layer.

Two ways to build the rows PCA runs on, named as in repeng (Vogel 2024) after RepE (Zou et al. 2023):
- "pca_diff": the pairs' differences (positive - negative), centred on their mean as PCA does. The
  component is the axis along which the differences vary most around the mean difference.
- "pca_center": both sides of every pair, each centred on its pair's mean, so the rows are
  +-(positive - negative) / 2. Their mean is zero, so the component is the dominant axis of the
  differences themselves, mean difference included (the CAA direction when the pairs agree).
PCA leaves the sign open: it is chosen so that positives project higher than their negatives in most
pairs. Directions are unit norm unless asked to scale them to the layer's residual stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch

from ..activations import PairActivations, record_pair_activations
from ..batching import DEFAULT_BATCH_TOKENS, check_batch
from ..data import ContrastiveDataset, DatasetError
from ..errors import UsageError
from ..models import LoadedModel
from ..strength import norms_metadata
from ..vector import SteeringVector, VectorMeta

MODES = ("pca_diff", "pca_center")


@dataclass
class PCAConfig:
    """Settings for PCA vectors; every default is what an empty config gives.

    mode: "pca_center" (default; the axis pairs split along, mean difference included) or "pca_diff"
    (the axis differences vary along around their mean, as repeng's default; needs 2+ pairs).
    layers: decoder blocks to build for; empty (default) = the model's middle layer.
    batch_size: most pairs per forward pass (default 16); batch_tokens: most tokens per forward pass
    (pairs x longest pair; default 4096).
    scale_to_residual_norm: false (default) keeps unit-norm directions, as repeng does, so a
    multiplier is an absolute length (SmolLM2-135M's middle residual norm is ~110, so useful
    multipliers are tens); true scales each layer to residual_fraction x that layer's mean residual
    norm, so one multiplier means the same relative push at every layer.
    residual_fraction: that fraction (default 0.1).
    """

    mode: Literal["pca_diff", "pca_center"] = "pca_center"
    layers: list[int] = field(default_factory=list)
    batch_size: int = 16
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    scale_to_residual_norm: bool = False
    residual_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        check_batch(self.batch_size, self.batch_tokens)
        if not self.residual_fraction > 0:
            raise UsageError(f"residual_fraction must be positive, got {self.residual_fraction}")


def fit(
    lm: LoadedModel,
    data: ContrastiveDataset,
    config: PCAConfig | None = None,
    *,
    task: str = "",
    progress: Callable[[int], object] | None = None,
) -> SteeringVector:
    """Build a PCA vector (method "pca_diff" or "pca_center") from contrastive pairs at the configured layers."""
    config = config or PCAConfig()
    if config.mode == "pca_diff" and len(data) < 2:
        raise DatasetError(
            "mode pca_diff needs at least 2 pairs (one difference has no variance); add pairs or use mode pca_center"
        )
    layers = config.layers or [lm.default_layer()]
    acts = record_pair_activations(
        lm, data.pairs, layers, batch_size=config.batch_size, batch_tokens=config.batch_tokens, progress=progress
    )
    return vector_from_activations(lm, acts, data, config, task=task)


def vector_from_activations(
    lm: LoadedModel, acts: PairActivations, data: ContrastiveDataset, config: PCAConfig, *, task: str
) -> SteeringVector:
    """First component per layer, signed by the pairs' vote, optionally scaled to the residual norm."""
    norms = norms_metadata(lm, acts.layers)
    directions, explained, agreement = {}, {}, {}
    for layer in acts.layers:
        pos, neg = acts.layer(layer)
        direction, ratio = first_component(pos, neg, config.mode)
        direction, agree = orient(direction, pos, neg)
        if config.scale_to_residual_norm:
            direction = direction * (config.residual_fraction * norms[str(layer)])
        directions[layer] = direction
        explained[str(layer)] = round(ratio, 4)
        agreement[str(layer)] = round(agree, 4)
    meta = VectorMeta.for_model(
        lm,
        config.mode,
        config=asdict(replace(config, layers=list(acts.layers))),
        fit_stats={"explained_variance_ratio": explained, "pairs_agreeing": agreement},
        dataset=data.describe(),
        task=task,
        residual_norms=norms,
    )
    return SteeringVector(directions, meta)


def first_component(pos: torch.Tensor, neg: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
    """(unit first principal component, share of variance it explains) of one layer's [n_pairs, hidden] activations."""
    pos, neg = pos.double(), neg.double()
    if mode == "pca_diff":
        diff = pos - neg
        rows = diff - diff.mean(0)
    elif mode == "pca_center":
        mid = (pos + neg) / 2
        rows = torch.cat([pos - mid, neg - mid])  # already mean zero: nothing left to centre
    else:
        raise UsageError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    total = float((singular**2).sum())
    if total <= 1e-12 * max(1.0, float(pos.norm() ** 2)):
        raise DatasetError(
            f"mode {mode}: the rows PCA would run on are all zero (every pair has the same "
            "difference, or positives equal negatives); use more varied pairs or mode pca_center"
        )
    return vh[0].float(), float(singular[0] ** 2) / total


def orient(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Flip `direction` unless most pairs' positive projects higher than their negative; return it and that share.

    A tie is broken by the mean projected difference.
    """
    gap = (pos.float() - neg.float()) @ direction
    higher, lower = int((gap > 0).sum()), int((gap < 0).sum())
    if lower > higher or (lower == higher and float(gap.mean()) < 0):
        direction, higher = -direction, lower
    return direction, higher / len(gap)
