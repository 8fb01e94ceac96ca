"""Features from contrastive pairs: which SAE features fire differently on the two sides, and on what text.

Each side of a pair is read token by token at the SAE's layer (its answer tokens only, after the shared
prompt, as `vector build` reads them), encoded, and averaged: one activation per feature and side. A
feature's AUROC (evaluation.auroc, as `vector diagnose` has one per layer) is P(its activation on a positive
side > on a negative side); 0.5 is no difference, 0 or 1 separate the sides completely. Features rank by
|AUROC - 0.5|, then by the size of the mean difference. A feature's top activating snippets come from a text
set: the tokens where it fires most, with a few tokens of context on each side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from ..activations import token_activations, tokenize_pair
from ..data import ContrastivePair
from ..errors import UsageError
from ..evaluation.auroc import auroc
from ..models import LoadedModel
from .model import SAE
from .train import text_sequences


@dataclass(frozen=True)
class FeatureScore:
    """How one feature separates the pairs' sides: its AUROC and mean activation on each side."""

    feature: int
    auroc: float
    mean_positive: float
    mean_negative: float

    @property
    def difference(self) -> float:
        return self.mean_positive - self.mean_negative

    @property
    def sign(self) -> int:
        """+1 when the positive side fires the feature more (steer up by adding it), else -1."""
        return 1 if self.auroc >= 0.5 else -1

    def to_json(self) -> dict:
        return {**asdict(self), "difference": self.difference, "sign": self.sign}


@dataclass(frozen=True)
class Snippet:
    """Where a feature fired: its activation, the text's index, and the text around the token (the token in «»)."""

    activation: float
    text: int
    snippet: str


@torch.no_grad()
def pair_feature_means(
    lm: LoadedModel, sae: SAE, pairs: Sequence[ContrastivePair], progress: Callable[[int], object] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_pairs, d_sae] mean feature activations over the answer tokens of the positive and the negative sides."""
    sae.check_model(lm)
    if not pairs:
        raise UsageError("no pairs to rank features with")
    seqs, answers = [], []
    for pair in pairs:
        prefix, pos, neg = tokenize_pair(lm, pair)
        seqs += [prefix + pos, prefix + neg]
        answers += [len(pos), len(neg)]
    acts = token_activations(lm, seqs, sae.layer, progress=progress)
    means = torch.stack([sae.encode(a[len(a) - n :]).mean(0) for a, n in zip(acts, answers, strict=True)])
    return means[0::2], means[1::2]


def rank_features(positive: torch.Tensor, negative: torch.Tensor, top: int | None = None) -> list[FeatureScore]:
    """Features that fire on either side, best separating first (|AUROC - 0.5|, then |mean difference|)."""
    labels = [True] * len(positive) + [False] * len(negative)
    both = torch.cat([positive, negative])
    scores = []
    for feature in torch.nonzero(both.abs().sum(0) > 0).flatten().tolist():
        column = both[:, feature].tolist()
        scores.append(
            FeatureScore(
                feature, auroc(column, labels), float(positive[:, feature].mean()), float(negative[:, feature].mean())
            )
        )
    scores.sort(key=lambda s: (-abs(s.auroc - 0.5), -abs(s.difference), s.feature))
    return scores[:top] if top is not None else scores


@torch.no_grad()
def top_snippets(
    lm: LoadedModel,
    sae: SAE,
    features: Sequence[int],
    texts: Sequence[str],
    *,
    per_feature: int = 5,
    context: int = 6,
    max_tokens: int = 128,
) -> dict[int, list[Snippet]]:
    """For each feature, the `per_feature` tokens of `texts` where it fires most (at most one per text)."""
    sae.check_model(lm)
    seqs = text_sequences(lm, texts, max_tokens)
    acts = token_activations(lm, seqs, sae.layer)
    index = torch.tensor(list(features), dtype=torch.long)
    best: dict[int, list[tuple[float, int, int]]] = {f: [] for f in features}
    for t, hidden in enumerate(acts):
        codes = sae.encode(hidden[1:])[:, index]  # the start token left out, as in training
        values, positions = codes.max(0)
        for j, feature in enumerate(features):
            if values[j] > 0:
                best[feature].append((float(values[j]), t, int(positions[j]) + 1))

    def snippet(ids: list[int], pos: int) -> str:
        """The tokens around `pos`, decoded together (tokens decoded one by one lose their leading spaces)."""
        start = max(1, pos - context)
        left, through = (str(lm.tokenizer.decode(ids[start:end])) for end in (pos, pos + 1))
        whole = str(lm.tokenizer.decode(ids[start : pos + 1 + context]))
        return f"{left}«{through[len(left) :]}»{whole[len(through) :]}"

    out = {}
    for feature, hits in best.items():
        hits.sort(key=lambda h: -h[0])
        out[feature] = [Snippet(round(value, 3), t, snippet(seqs[t], pos)) for value, t, pos in hits[:per_feature]]
    return out
