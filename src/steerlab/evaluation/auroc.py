"""Threshold-free metrics for comparing a scorer with reference labels."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError


def midranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of `values`, ties sharing the mean of their positions, so AUROC counts a tie as half a win."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared = (start + end) / 2 + 1
        for k in range(start, end + 1):
            ranks[order[k]] = shared
        start = end + 1
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic: P(score of a positive > score of a negative), ties 1/2."""
    if len(scores) != len(labels):
        raise UsageError(f"{len(scores)} scores but {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UsageError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = midranks(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=False) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
