"""LM-Steer (Han et al., ACL 2024, "Word Embeddings Are Steers for Language Models").

A steer is a low-rank linear map of the output embedding space: with the final hidden state h (the input
of the LM head), the logits become (h + epsilon * sum_k s_k * P1_k P2_k^T h) E^T, where s_k is the steer
value (+1 towards the positive side, -1 towards the negative side, 0 = off). It is trained on positive
texts at s = +1 and negative texts at s = -1 with the base model frozen (lm_steer_train), saved and
applied as an LMSteer (lm_steer_artifact) through the same generation API as steering vectors.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from ..data import ContrastiveDataset
from ..models import LoadedModel
from ..vector import VectorMeta
from .lm_steer_artifact import METHOD, LMSteer, LMSteerHandle, steered_hidden
from .lm_steer_train import InsufficientMemoryError, LabelledTexts, TrainingSet, check_memory, encode_examples, train

__all__ = ["LMSteerConfig", "LMSteer", "LMSteerHandle", "LabelledTexts", "InsufficientMemoryError", "fit",
           "steered_hidden"]


@dataclass
class LMSteerConfig:
    """LM-Steer training settings, documented in configs/lm_steer.yaml (rank, epsilon, init_var as in the paper's code).

    rank: columns of P1 and P2; num_steers: independent steers, one training set each; epsilon: scale of
    the steer's change to h; init_var: standard deviation of P1/P2's random start; lr: Adam learning rate;
    steps: optimiser steps; batch_size: texts per step; max_length: tokens per text (longer ones are cut);
    chunk_size: tokens whose logits exist at once (bounds the [tokens, vocab] logits and their gradient);
    cache_hidden_states: run each text through the frozen model once and keep its final hidden states
    (fast when steps * batch_size exceeds the number of texts) instead of once per step; max_memory_gb:
    cap on the memory training may use (None = what the device has free); seed: init and batch order.
    """

    rank: int = 1000
    num_steers: int = 1
    epsilon: float = 1e-3
    init_var: float = 1e-2
    lr: float = 1e-2
    steps: int = 1000
    batch_size: int = 32
    max_length: int = 256
    chunk_size: int = 2048
    cache_hidden_states: bool = True
    max_memory_gb: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "num_steers", "steps", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (a context token and a predicted one), got {self.max_length}")
        for name in ("epsilon", "init_var", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ValueError(f"max_memory_gb must be positive (or null for no cap), got {self.max_memory_gb}")


def fit(lm: LoadedModel, data: ContrastiveDataset | LabelledTexts | Sequence[ContrastiveDataset | LabelledTexts],
        config: LMSteerConfig | None = None, *, task: str = "", progress: Callable[[int], None] | None = None,
        report: Callable[[str], None] | None = None) -> LMSteer:
    """Train an LM-Steer: positive texts at value +1, negative texts at -1, base model frozen.

    `data` is contrastive pairs (loss on each answer's tokens; the prompt and chat template are masked) or
    LabelledTexts (stand-alone positive/negative texts), or a list of those, one per steer when
    num_steers > 1. The memory estimate goes to `report` (default: printed to stderr) before training,
    and training stops with InsufficientMemoryError, proposing smaller settings, when it would not fit.
    `progress` is called once per optimiser step (config.steps in all).
    """
    config = config or LMSteerConfig()
    report = report or (lambda message: print(message, file=sys.stderr))
    sets = [TrainingSet.of(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
    if len(sets) != config.num_steers:
        raise ValueError(f"num_steers is {config.num_steers} but {len(sets)} training set(s) were given; "
                         "give one set per steer")
    examples = encode_examples(lm, sets, config.max_length, report=report)
    check_memory(lm, examples, config, report)
    p1, p2, stats = train(lm, examples, config, progress=progress)
    params = {**asdict(config), **stats}
    dataset = sets[0].describe() if len(sets) == 1 else {"sets": [s.describe() for s in sets]}
    meta = VectorMeta.for_model(lm, METHOD, params=params, dataset=dataset, task=task, recommended={"value": 1.0})
    return LMSteer(p1, p2, meta)
