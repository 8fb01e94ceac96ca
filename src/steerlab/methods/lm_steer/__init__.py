"""LM-Steer (Han et al., ACL 2024, "Word Embeddings Are Steers for Language Models").

A steer is a low-rank linear map of the output embedding space: with the final hidden state h (the input
of the LM head), the logits become (h + epsilon * sum_k s_k * P1_k P2_k^T h) E^T, where s_k is the steer
value (+1 towards the positive side, -1 towards the negative side, 0 = off). It is trained on positive
texts at s = +1 and negative texts at s = -1 with the base model frozen (train.py), saved and
applied as an LMSteer (artifact.py) through the same generation API as steering vectors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

from ...data import ContrastiveDataset
from ...errors import UsageError
from ...meta import Recommendation, VectorMeta
from ...models import LoadedModel
from .artifact import METHOD, LMSteer, LMSteerHandle, steered_hidden
from .config import LMSteerConfig
from .train import InsufficientMemoryError, LabelledTexts, TrainingSet, check_memory, encode_examples, train

__all__ = [
    "LMSteerConfig",
    "LMSteer",
    "LMSteerHandle",
    "LabelledTexts",
    "InsufficientMemoryError",
    "fit",
    "steered_hidden",
]


def fit(
    lm: LoadedModel,
    data: ContrastiveDataset | LabelledTexts | Sequence[ContrastiveDataset | LabelledTexts],
    config: LMSteerConfig | None = None,
    *,
    task: str = "",
    progress: Callable[[int], object] | None = None,
    report: Callable[[str], None] | None = None,
) -> LMSteer:
    """Train an LM-Steer: positive texts at value +1, negative texts at -1, base model frozen.

    `data` is contrastive pairs (loss on each answer's tokens; the prompt and chat template are masked) or
    LabelledTexts (stand-alone positive/negative texts), or a list of those, one per steer when
    num_steers > 1. The memory estimate goes to `report` (default: printed to stderr) before training,
    and training stops with InsufficientMemoryError, proposing smaller settings, when it would not fit.
    `progress` is called once per optimiser step (config.steps in all).
    """
    config = config or LMSteerConfig()
    report = report or (lambda message: print(message, file=sys.stderr))
    sets = [TrainingSet.of(d) for d in ([data] if isinstance(data, (ContrastiveDataset, LabelledTexts)) else data)]
    if len(sets) != config.num_steers:
        raise UsageError(
            f"num_steers is {config.num_steers} but {len(sets)} training set(s) were given; give one set per steer"
        )
    examples = encode_examples(lm, sets, config.max_length, report=report)
    check_memory(lm, examples, config, report)
    p1, p2, stats = train(lm, examples, config, progress=progress)
    dataset = sets[0].describe() if len(sets) == 1 else {"sets": [s.describe() for s in sets]}
    meta = VectorMeta.for_model(
        lm,
        METHOD,
        config=asdict(config),
        fit_stats=stats,
        dataset=dataset,
        task=task,
        recommended=Recommendation(multiplier=1.0),
    )
    return LMSteer(p1, p2, meta)
