"""CAA (Rimsky et al. 2024): the mean of (positive - negative) residual activations, one vector per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..activations import PairActivations, record_pair_activations
from ..data import ContrastiveDataset
from ..models import LoadedModel
from ..vector import SteeringVector, VectorMeta


@dataclass
class CAAConfig:
    """layers: decoder blocks to build for (empty = the model's middle layer, where CAA steers best);
    batch_size: pairs per forward pass."""

    layers: list[int] = field(default_factory=list)
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


def fit(lm: LoadedModel, data: ContrastiveDataset, config: CAAConfig | None = None, *, task: str = "",
        progress: Callable[[int], None] | None = None) -> SteeringVector:
    """Build a CAA vector from contrastive pairs at the configured layers."""
    config = config or CAAConfig()
    layers = config.layers or [lm.default_layer()]
    acts = record_pair_activations(lm, data.pairs, layers, batch_size=config.batch_size, progress=progress)
    return vector_from_activations(lm, acts, data, task=task, params={"layers": acts.layers, "batch_size": config.batch_size})


def vector_from_activations(lm: LoadedModel, acts: PairActivations, data: ContrastiveDataset, *, task: str,
                            params: dict) -> SteeringVector:
    """Mean difference per layer, with each layer's typical residual norm kept for norm-relative strengths."""
    diff = (acts.positive - acts.negative).mean(0)  # [n_layers, hidden]
    meta = VectorMeta.for_model(lm, "caa", params=params, dataset=data.describe(), task=task,
                                residual_norms=residual_norms(acts.layers, acts.positive, acts.negative))
    return SteeringVector({layer: diff[i] for i, layer in enumerate(acts.layers)}, meta)


def residual_norms(layers: list[int], *acts: torch.Tensor) -> dict[str, float]:
    """Mean L2 norm per layer of activations [n, n_layers, hidden] (the metadata's residual_norms)."""
    norms = torch.cat(acts).norm(dim=-1).mean(0)  # [n_layers]
    return {str(layer): round(float(n), 4) for layer, n in zip(layers, norms)}
