"""Sentiment of generated text: VADER's lexicon score by default, a local classifier folder as the alternative."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-untyped]  # ships no stubs or py.typed

from steerlab.evaluation.classifier import LocalTextClassifier


@lru_cache(maxsize=1)
def _vader() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes ~0.1 s; do it once per process.
    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER compound score in [-1, 1] (negative to positive): fast, offline, no model needed."""
    return float(_vader().polarity_scores(text)["compound"])


def vader_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound score for each text, in order."""
    return [vader_compound(t) for t in texts]


class ClassifierSentimentScorer:
    """Sentiment from a local HF classifier folder, as 2 * P(positive) - 1 so it shares VADER's [-1, 1] scale."""

    def __init__(self, path: str | Path, positive_label: str | None = None, device: str = "cpu") -> None:
        self.classifier = LocalTextClassifier(path, device=device)
        self.positive = self.classifier.label_index(positive_label, aliases=("positive", "pos"))

    def positive_probabilities(self, texts: Sequence[str], batch_size: int = 32) -> list[float]:
        """P(positive) for each text."""
        return [p[self.positive] for p in self.classifier.probabilities(texts, batch_size)]

    def scores(self, texts: Sequence[str], batch_size: int = 32) -> list[float]:
        """Sentiment in [-1, 1] for each text."""
        return [2.0 * p - 1.0 for p in self.positive_probabilities(texts, batch_size)]
