"""Norm-relative strength: residual norms against transformers' own hidden states, and exact conversions."""

from __future__ import annotations

import pytest
import torch

from steerlab.strength import (
    NORM_SOURCE_KEY,
    StrengthError,
    multiplier_for,
    neutral_texts,
    residual_norms,
    strength_of,
    with_neutral_norms,
)
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm


@torch.inference_mode()
def _reference_norms(lm, texts, layers):
    """Mean token norm per layer from output_hidden_states, one unpadded text at a time, first token left out."""
    totals, count = dict.fromkeys(layers, 0.0), 0
    for text in texts:
        ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in layers:
            totals[layer] += hidden[layer + 1][0, 1:].norm(dim=-1).sum().item()
        count += ids.shape[1] - 1
    return {layer: totals[layer] / count for layer in layers}


def test_residual_norms_match_transformers_hidden_states_with_padding():
    lm = tiny_lm(num_layers=4)
    texts = ["a short one", "a much longer neutral sentence about the weather", "mid length text"]
    got = residual_norms(lm, [0, 1, 2], texts, batch_size=2)  # a padded batch and a single row
    want = _reference_norms(lm, texts, [0, 1, 2])
    assert got.keys() == want.keys()
    for layer in want:
        assert got[layer] == pytest.approx(want[layer], rel=1e-5)


def test_default_text_is_the_shipped_neutral_prompts():
    texts = neutral_texts()
    assert len(texts) == 8 and texts[0] == "Tell me about your weekend."


def _vector(norm_at_2=2.0, residual=None):
    meta = VectorMeta(
        model_name="m",
        hidden_size=4,
        num_layers=4,
        method="caa",
        residual_norms=residual if residual is not None else {"2": 50.0},
    )
    return SteeringVector({2: torch.tensor([norm_at_2, 0.0, 0.0, 0.0])}, meta)


def test_a_strength_is_the_added_vectors_norm_over_the_residual_norm():
    vector = _vector()
    m = multiplier_for(vector, 2, 0.1)
    assert m == pytest.approx(2.5)  # 0.1 * 50 / 2
    assert float((m * vector.directions[2]).norm()) == pytest.approx(0.1 * 50.0)
    assert strength_of(vector, 2, -2.5) == pytest.approx(-0.1)


def test_conversion_without_a_residual_norm_says_how_to_measure_it():
    with pytest.raises(StrengthError, match=r"no residual norm for layer 2, .* steerlab\.strength\.with_neutral_norms"):
        multiplier_for(_vector(residual={}), 2, 0.1)
    with pytest.raises(StrengthError, match=r"no direction for layer 5; it has layers \[2\]"):
        multiplier_for(_vector(), 5, 0.1)
    with pytest.raises(StrengthError, match="direction at layer 2 is zero"):
        multiplier_for(_vector(norm_at_2=0.0), 2, 0.1)


def test_with_neutral_norms_stores_the_norms_and_their_source():
    lm = tiny_lm(num_layers=3)
    meta = VectorMeta.for_model(lm, "caa", residual_norms={"1": 999.0})
    vector = SteeringVector({1: torch.ones(lm.hidden_size)}, meta)
    measured = with_neutral_norms(lm, vector)
    assert measured.meta.residual_norms == {"1": round(residual_norms(lm, [1])[1], 4)}
    assert measured.meta.fit_stats[NORM_SOURCE_KEY] == "steerlab demo prompts"
    assert vector.meta.residual_norms == {"1": 999.0}  # the input is left alone
