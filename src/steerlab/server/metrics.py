"""Metrics the playground can chart across multipliers, each a function of one generated text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..evaluation import distinct_n, is_refusal, repetition_rate, vader_compound, weighted_ngram_entropy


@dataclass(frozen=True)
class Metric:
    label: str
    description: str
    score: Callable[[str], float]
    low: float
    high: float | None  # None: no fixed upper bound


METRICS: dict[str, Metric] = {
    "sentiment": Metric("sentiment (VADER)", "VADER compound score: -1 negative .. +1 positive", vader_compound, -1.0, 1.0),
    "distinct_2": Metric("distinct-2", "unique bigrams / bigrams: 1 = no repeated bigram", lambda t: distinct_n(t, 2), 0.0, 1.0),
    "repetition": Metric("repetition", "share of tokens inside a repeated trigram: 0 varied .. 1 a loop", repetition_rate, 0.0, 1.0),
    "fluency": Metric("n-gram entropy", "EasyEdit's weighted bigram/trigram entropy in bits", weighted_ngram_entropy, 0.0, None),
    "refusal": Metric("refusal", "1 when the text contains a refusal phrase, else 0", lambda t: float(is_refusal(t)), 0.0, 1.0),
}


def describe() -> list[dict]:
    return [{"id": name, "label": m.label, "description": m.description, "min": m.low, "max": m.high}
            for name, m in METRICS.items()]
