"""The paired bootstrap interval and the per-direction recommendation on synthetic effects with a known truth."""

from __future__ import annotations

import pytest
import torch

from steerlab.evaluation.stats import paired_interval
from steerlab.evaluation.sweep import NO_EFFECT, SweepResult, recommend


def _result(base: torch.Tensor, up: torch.Tensor, down: torch.Tensor, *, fluent=(True, True)) -> SweepResult:
    """A one-layer sweep with cells -1 and +1 whose per-item scores are given; intervals as the sweep computes them."""
    cells = [paired_interval(x.tolist(), base.tolist(), seed=k) for k, x in enumerate((down, up))]
    effect = [[float(down.mean() - base.mean()), float(up.mean() - base.mean())]]
    return SweepResult(
        "t",
        "generation",
        "val",
        "raw",
        [5],
        [-1.0, 1.0],
        [[-1.0, 1.0]],
        score=[[0.0, 0.0]],
        fluency=[[1.0, 1.0]],
        effect=effect,
        base_score=float(base.mean()),
        base_fluency=1.0,
        score_name="s",
        fluency_name="f",
        fluency_bound=0.1,
        items=len(base),
        train_pairs=1,
        recommended=None,
        interval=[[[c.low, c.high] for c in cells]],
        wrong_way=[[cells[0].rose, cells[1].fell]],
        fluent=[list(fluent)],
    )


def test_a_true_zero_effect_is_not_recommended_in_at_least_95_percent_of_seeds():
    recommended = 0
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        base = torch.randn(40, generator=gen)
        up, down = base + 0.3 * torch.randn(40, generator=gen), base + 0.3 * torch.randn(40, generator=gen)
        result = _result(base, up, down)
        recommend(result)
        recommended += result.directions["up"] is not None or result.directions["down"] is not None
        if result.directions["up"] is None:
            assert result.recommended is None or result.recommended.layer is None
    assert recommended <= 10, f"a zero effect was recommended in {recommended} of 200 seeds"


def test_a_clear_effect_is_recommended_in_each_direction_with_its_interval():
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        base = torch.randn(40, generator=gen)
        up_scores, down_scores = (
            base + 0.4 + 0.3 * torch.randn(40, generator=gen),
            base - 0.4 + 0.3 * torch.randn(40, generator=gen),
        )
        result = _result(base, up_scores, down_scores)
        recommend(result)
        up, down = result.directions["up"], result.directions["down"]
        assert up.value == 1.0 and up.interval[0] > 0 and result.recommended.layer == 5
        assert down.value == -1.0 and down.interval[1] < 0 and result.recommended.down == down
        # Wrong way: items that fell when steered up, rose when steered down.
        assert up.wrong_way == pytest.approx(float((up_scores < base).double().mean()))
        assert down.wrong_way == pytest.approx(float((down_scores > base).double().mean()))
        assert NO_EFFECT not in result.verdict


def test_an_effect_outside_the_fluency_bound_or_in_one_direction_only_is_not_recommended():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(40, generator=gen)
    result = _result(base, base + 0.5, base + 0.01 * torch.randn(40, generator=gen), fluent=(True, False))
    recommend(result)
    assert result.directions == {"up": None, "down": None} and result.recommended is None
    assert result.verdict == f"up: {NO_EFFECT}; down: {NO_EFFECT}" and "no default" in result.note
    result.fluent = [[True, True]]
    recommend(result)
    assert result.directions["up"].value == 1.0 and result.directions["down"] is None
    assert result.recommended.down is None and result.verdict.endswith(f"down: {NO_EFFECT}")


def test_a_consistent_but_negligible_effect_is_not_recommended():
    """+0.004 on every item excludes zero, yet is below the smallest effect worth steering for."""
    gen = torch.Generator().manual_seed(2)
    base = torch.rand(50, generator=gen)
    result = _result(base, base + 0.004 + 0.001 * torch.randn(50, generator=gen), base - 0.05)
    result.min_effect = 0.02
    assert result.interval[0][1][0] > 0
    recommend(result)
    assert result.directions["up"] is None and result.directions["down"].value == -1.0
    assert result.recommended.layer is None and result.note.startswith(NO_EFFECT)


def test_paired_interval_matches_the_mean_change_and_counts_wrong_way_items():
    base = [0.1, 0.2, 0.3, 0.4]
    iv = paired_interval([0.2, 0.1, 0.5, 0.6], base)
    assert iv.mean == pytest.approx(0.1) and iv.low <= iv.mean <= iv.high
    assert (iv.fell, iv.rose) == (0.25, 0.75)
    flipped = iv.signed(-1)
    assert (flipped.mean, flipped.low, flipped.high, flipped.fell) == (-iv.mean, -iv.high, -iv.low, iv.rose)
    # Pairing matters: a constant shift on items that vary a lot is still certain.
    spread = torch.linspace(-5, 5, 30)
    assert paired_interval((spread + 0.05).tolist(), spread.tolist()).low == pytest.approx(0.05)
    # Yes/No groups: the statistic is the mean of the two group means, resampled within groups.
    grouped = paired_interval([1.0, 1.0, 1.0, 0.0], [0.0] * 4, groups=[True, True, True, False])
    assert grouped.mean == pytest.approx(0.5) and grouped.low == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one steered and one unsteered"):
        paired_interval([1.0], [1.0, 2.0])
