"""CAA (Rimsky et al. 2024): the mean of (positive - negative) residual activations, one vector per layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from ..activations import PairActivations, record_pair_activations
from ..batching import DEFAULT_BATCH_TOKENS, check_batch
from ..data import ContrastiveDataset
from ..models import LoadedModel
from ..strength import norms_metadata
from ..vector import SteeringVector, VectorMeta


@dataclass
class CAAConfig:
    """layers: decoder blocks to build for (empty = the model's middle layer, where CAA steers best);
    batch_size: most pairs per forward pass; batch_tokens: most tokens per forward pass (pairs x longest
    pair), so short pairs share large batches and long ones small (raise both on a GPU)."""

    layers: list[int] = field(default_factory=list)
    batch_size: int = 16
    batch_tokens: int = DEFAULT_BATCH_TOKENS

    def __post_init__(self) -> None:
        check_batch(self.batch_size, self.batch_tokens)


def fit(
    lm: LoadedModel,
    data: ContrastiveDataset,
    config: CAAConfig | None = None,
    *,
    task: str = "",
    progress: Callable[[int], object] | None = None,
) -> SteeringVector:
    """Build a CAA vector from contrastive pairs at the configured layers."""
    config = config or CAAConfig()
    layers = config.layers or [lm.default_layer()]
    acts = record_pair_activations(
        lm, data.pairs, layers, batch_size=config.batch_size, batch_tokens=config.batch_tokens, progress=progress
    )
    return vector_from_activations(lm, acts, data, task=task, config=config)


def vector_from_activations(
    lm: LoadedModel, acts: PairActivations, data: ContrastiveDataset, *, task: str, config: CAAConfig
) -> SteeringVector:
    """Mean difference per layer, with each layer's residual norm on neutral text kept for norm-relative strengths.

    The metadata's config is `config` with the layers recorded, so `build_config(CAAConfig, meta.config)` rebuilds it."""
    diff = (acts.positive - acts.negative).mean(0)  # [n_layers, hidden]
    meta = VectorMeta.for_model(
        lm,
        "caa",
        config=asdict(replace(config, layers=list(acts.layers))),
        dataset=data.describe(),
        task=task,
        residual_norms=norms_metadata(lm, acts.layers),
    )
    return SteeringVector({layer: diff[i] for i, layer in enumerate(acts.layers)}, meta)
