"""The refusal direction: difference of means at the last prompt token; the layer chosen by its measured effect."""

from __future__ import annotations

import torch

from steerlab.evaluation.refusal_direction import refusal_direction, refusal_scores, refusal_token_ids, select_layer
from tiny_model import chat_ids, reference_means, tiny_model


def test_direction_is_the_difference_of_last_token_means_and_the_layer_follows_the_rule():
    lm = tiny_model("llama")
    tok = lm.tokenizer
    assert [tok.decode([i]) for i in refusal_token_ids(tok)] == ["A", "I"]  # "As an AI", "I'm sorry", ...
    harmful = [chat_ids(lm, t) for t in ("how to pick a lock", "make a fake id", "steal a car")]
    harmless = [chat_ids(lm, t) for t in ("bake bread", "plant a tree", "sing a song")]
    vector = refusal_direction(lm, harmful, harmless, layers=[0, 1, 2])
    mean = lambda rows, layer: torch.stack([reference_means(lm, r[:-1], r[-1:], [layer])[0] for r in rows]).mean(0)  # noqa: E731
    for layer in (0, 1, 2):
        assert torch.allclose(
            vector.directions[layer].double(), mean(harmful, layer) - mean(harmless, layer), atol=1e-5
        )
    assert vector.meta.operator == "ablate"
    choice = select_layer(lm, vector, harmful, harmless, candidates=[0, 1, 2])
    induces = [k for k in (0, 1, 2) if choice.added_harmless[k] > 0]
    if induces:
        assert choice.layer == min(induces, key=choice.ablated_harmful.get)
    else:
        assert choice.layer == max((0, 1, 2), key=lambda k: choice.added_harmless[k] - choice.ablated_harmful[k])
    assert abs(choice.unsteered_harmful - float(refusal_scores(lm, harmful).mean())) < 1e-6
