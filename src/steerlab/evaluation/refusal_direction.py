"""The refusal direction (Arditi et al. 2024): difference of means at the last prompt token, and its layer.

The direction at each layer is mean(harmful) - mean(harmless) of the block output at the last prompt
token (the end of the chat template's assistant header). The layer is chosen on a validation split by
the effect it has, as the paper does: for each candidate layer (the first 80% of the model), ablating
its direction at every layer should make refusal unlikely on harmful prompts, and adding it at its own
layer should make refusal likely on harmless prompts. Refusal likelihood is read from the first answer
token's logits (log-odds of the tokens that start a refusal phrase), so selection needs one forward per
prompt and layer, no generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..ablation import DirectionalAblation
from ..activations import record_activations
from ..batching import pad, positions_from_mask
from ..models import LoadedModel
from ..steering import SpecSteering, SteeringSpec
from ..vector import SteeringVector, VectorMeta
from .refusal import REFUSAL_PHRASES

TokenIds = list[int]


def refusal_token_ids(tokenizer) -> list[int]:
    """The first token of each refusal phrase as it starts an answer ("I", "As", ...)."""
    return sorted({tokenizer(p, add_special_tokens=False)["input_ids"][0] for p in REFUSAL_PHRASES})


@torch.inference_mode()
def refusal_scores(lm: LoadedModel, prompts: Sequence[TokenIds], steer=None, *, batch_size: int = 16) -> torch.Tensor:
    """Per prompt, log-odds that the answer starts a refusal phrase: log p / (1 - p) at the first answer token."""
    refusal = torch.tensor(refusal_token_ids(lm.tokenizer))
    scores = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad(prompts[start : start + batch_size], lm.tokenizer.pad_token_id, left=True)
        handle = steer.attach(lm) if steer is not None else None
        try:
            logits = (
                lm.model(
                    input_ids=ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    position_ids=positions_from_mask(mask).to(lm.device),
                )
                .logits[:, -1]
                .float()
                .cpu()
            )
        finally:
            if handle is not None:
                handle.remove()
        logp = logits.log_softmax(-1)
        p_refuse = logp[:, refusal].logsumexp(-1)
        scores.append(p_refuse - torch.log1p(-p_refuse.exp().clamp(max=1 - 1e-7)))
    return torch.cat(scores)


def last_token_means(lm: LoadedModel, prompts: Sequence[TokenIds], layers: Sequence[int]) -> torch.Tensor:
    """Mean block output at each prompt's last token, per layer: [n_layers, hidden]."""
    acts = record_activations(lm, [(list(p[:-1]), [[p[-1]]]) for p in prompts], layers)
    return acts[:, 0].mean(0)


def refusal_direction(
    lm: LoadedModel, harmful: Sequence[TokenIds], harmless: Sequence[TokenIds], layers: Sequence[int] | None = None
) -> SteeringVector:
    """Difference of means (harmful - harmless) at the last prompt token, at every layer (or `layers`)."""
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    diff = last_token_means(lm, harmful, layers) - last_token_means(lm, harmless, layers)
    meta = VectorMeta.for_model(
        lm,
        "refusal_direction",
        operator="ablate",
        config={"position": "last prompt token", "layers": layers},
        fit_stats={"n_harmful": len(harmful), "n_harmless": len(harmless)},
    )
    return SteeringVector({layer: diff[i] for i, layer in enumerate(layers)}, meta)


@dataclass
class LayerChoice:
    """The chosen layer and, per candidate, the mean refusal log-odds it gives on the validation prompts."""

    layer: int
    ablated_harmful: dict[int, float]
    added_harmless: dict[int, float]
    unsteered_harmful: float
    unsteered_harmless: float
    rule: str


def select_layer(
    lm: LoadedModel,
    vector: SteeringVector,
    harmful_val: Sequence[TokenIds],
    harmless_val: Sequence[TokenIds],
    *,
    candidates: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LayerChoice:
    """The layer whose direction, ablated everywhere, most lowers refusal on harmful validation prompts,
    among those whose direction, added at its layer, makes refusal more likely than not on harmless ones."""
    if candidates is None:
        candidates = [layer for layer in vector.layers if layer < 0.8 * lm.num_layers]
    ablated, added = {}, {}
    for i, layer in enumerate(candidates):
        ablated[layer] = float(refusal_scores(lm, harmful_val, DirectionalAblation(vector, layer)).mean())
        added[layer] = float(
            refusal_scores(lm, harmless_val, SpecSteering(SteeringSpec(vector, 1.0, [layer], operator="add"))).mean()
        )
        if progress:
            progress(i + 1, len(candidates))
    induces = [layer for layer in candidates if added[layer] > 0]
    if induces:
        layer, rule = (
            min(induces, key=lambda k: ablated[k]),
            "lowest ablated harmful log-odds among layers whose addition makes harmless refusal log-odds > 0",
        )
    else:
        layer, rule = (
            max(candidates, key=lambda k: added[k] - ablated[k]),
            "no layer's addition passed 0: largest added-minus-ablated log-odds",
        )
    return LayerChoice(
        layer,
        ablated,
        added,
        float(refusal_scores(lm, harmful_val).mean()),
        float(refusal_scores(lm, harmless_val).mean()),
        rule,
    )
