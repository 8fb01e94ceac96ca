"""Paired statistics for steering effects: a bootstrap interval of the change against unsteered on the same items.

Every steered cell is scored on the same items as the unsteered model, so the effect of a cell is the mean
per-item change, and its uncertainty comes from resampling items (Efron's percentile bootstrap). Yes/No
items are resampled within their two groups (matching answer "Yes" or "No") and the statistic is the mean
of the two group means, the same balance the debiased A/B score uses. An effect is called reliable only
when its 95% interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UsageError

DRAWS = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean paired change (steered - unsteered), its bootstrap interval, and the shares of items that fell or rose."""

    mean: float
    low: float
    high: float
    fell: float  # share of items whose score went down (strictly) against unsteered
    rose: float

    def signed(self, sign: float) -> Interval:
        """The same interval for the change times `sign` (+1 or -1): the wanted direction becomes positive."""
        if sign >= 0:
            return self
        return Interval(-self.mean, -self.high, -self.low, self.rose, self.fell)


def _group_mean(diff: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last axis, or the mean of the two group means when `groups` splits the items."""
    if groups is None:
        return diff.mean(-1)
    return (diff[..., groups].mean(-1) + diff[..., ~groups].mean(-1)) / 2


def paired_interval(
    steered: Sequence[float],
    base: Sequence[float],
    *,
    groups: Sequence[bool] | None = None,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """Bootstrap `level` interval of the mean change steered - base over the same items (resampled in pairs)."""
    s = torch.as_tensor(list(steered), dtype=torch.float64)
    b = torch.as_tensor(list(base), dtype=torch.float64)
    if s.shape != b.shape or s.ndim != 1 or s.numel() == 0:
        raise UsageError(
            f"need one steered and one unsteered score per item; got {tuple(s.shape)} and {tuple(b.shape)}"
        )
    diff = s - b
    g = torch.as_tensor(list(groups), dtype=torch.bool) if groups is not None else None
    if g is not None and (g.all() or not g.any()):
        g = None
    gen = torch.Generator().manual_seed(seed)
    if g is None:
        idx = torch.randint(len(diff), (draws, len(diff)), generator=gen)
        stats = diff[idx].mean(-1)
    else:
        parts = []
        for members in (torch.nonzero(g).flatten(), torch.nonzero(~g).flatten()):
            pick = torch.randint(len(members), (draws, len(members)), generator=gen)
            parts.append(diff[members[pick]].mean(-1))
        stats = (parts[0] + parts[1]) / 2
    tail = (1 - level) / 2
    low, high = torch.quantile(stats, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(
        float(_group_mean(diff, g)), low, high, float((diff < 0).double().mean()), float((diff > 0).double().mean())
    )
