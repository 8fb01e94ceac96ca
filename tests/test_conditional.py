"""Conditional steering (CAST): each row's own prompt decides; rows of one batch never influence each other."""

from __future__ import annotations

import pytest
import torch

from steerlab.conditional import Condition, ConditionalSteering, fit_condition, last_token_scores
from steerlab.generation import GenerationConfig, generate_tokens
from steerlab.steering import CombinedSteering, SpecSteering, SteeringSpec
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import chat_ids, tiny_model

CONFIG = GenerationConfig(max_new_tokens=8)


def _setup():
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(5)
    # Layer 0 comes before the condition layer: the decision needs its own pass.
    behaviour = SteeringVector(
        {k: torch.randn(lm.hidden_size, generator=g) * 4 for k in (0, 2)}, VectorMeta.for_model(lm, "test")
    )
    prompts = [chat_ids(lm, "tell me a story about cats"), chat_ids(lm, "zz"), chat_ids(lm, "what is 2+2?")]
    direction = torch.randn(lm.hidden_size, generator=g)
    scores = last_token_scores(lm, prompts, {1: direction})[1]
    # A threshold between the scores, so that rows decide differently.
    order = scores.argsort()
    threshold = float((scores[order[0]] + scores[order[1]]) / 2)
    return lm, behaviour, prompts, Condition(direction, 1, threshold, ">="), scores


def _cast(behaviour, condition, multiplier=1.0):
    return ConditionalSteering(SteeringSpec(behaviour, multiplier, [0, 2]), condition)


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_row_of_a_mixed_batch_equals_that_row_alone(use_cache):
    lm, behaviour, prompts, condition, scores = _setup()
    lm.model.generation_config.use_cache = use_cache
    decided = condition.decide(scores)
    assert decided.any() and not decided.all()
    batch = generate_tokens(lm, prompts, _cast(behaviour, condition), config=CONFIG)
    plain = generate_tokens(lm, prompts, None, config=CONFIG)
    always = generate_tokens(lm, prompts, _cast(behaviour, Condition(condition.direction, 1, -2.0)), config=CONFIG)
    for i, prompt in enumerate(prompts):
        alone = generate_tokens(lm, [prompt], _cast(behaviour, condition), config=CONFIG)[0]
        assert torch.equal(batch[i], alone)
        assert torch.equal(batch[i], always[i] if decided[i] else plain[i])
    assert not torch.equal(always, plain)  # the behaviour does change text, so equality above is not vacuous


def test_cache_and_no_cache_agree_and_per_row_multipliers_still_apply():
    lm, behaviour, prompts, condition, scores = _setup()
    cast = _cast(behaviour, condition, multiplier=[1.0, -1.0, 0.5])
    cached = generate_tokens(lm, prompts, cast, config=CONFIG)
    lm.model.generation_config.use_cache = False
    assert torch.equal(generate_tokens(lm, prompts, cast, config=CONFIG), cached)
    lm.model.generation_config.use_cache = True
    decided = condition.decide(scores)
    for i, mult in enumerate([1.0, -1.0, 0.5]):
        own = generate_tokens(
            lm, [prompts[i]], SpecSteering(SteeringSpec(behaviour, mult, [0, 2])) if decided[i] else None, config=CONFIG
        )
        assert torch.equal(cached[i], own[0])


@pytest.mark.parametrize("beside", [False, True])
def test_the_decision_pass_is_unsteered_and_made_once_per_generation(beside):
    """Also with another steer on an earlier layer attached beside it (CombinedSteering, as the server batches)."""
    lm, behaviour, prompts, condition, scores = _setup()
    cast = _cast(behaviour, condition)
    other = SpecSteering(SteeringSpec(behaviour, 5.0, [0]))
    steering = CombinedSteering([other, cast]) if beside else cast
    handle = steering.attach(lm)
    combined, handle = handle, handle.handles[1] if beside else handle
    try:
        from steerlab.batching import pad

        ids, mask = pad(prompts, lm.tokenizer.pad_token_id, left=True)
        with torch.no_grad():
            lm.model(input_ids=ids, attention_mask=mask)
        first = handle.decisions.clone()
        assert torch.allclose(handle.scores, scores, atol=1e-5)
        with torch.no_grad():
            lm.model(input_ids=ids[:, -1:], attention_mask=mask)  # a later step never re-decides
        assert torch.equal(handle.decisions, first)
    finally:
        combined.remove()
    assert not lm.model._forward_pre_hooks and not any(layer._forward_hooks for layer in lm.layers)


def test_fit_condition_finds_a_separating_layer_threshold_and_comparison(tmp_path):
    lm = tiny_model("llama")
    steer = [chat_ids(lm, "x" * n) for n in range(3, 9)]
    keep = [chat_ids(lm, "hello world " * (n % 3 + 1) + str(n)) for n in range(6)]
    from steerlab.evaluation.refusal_direction import last_token_means

    diff = last_token_means(lm, steer, [1, 2]) - last_token_means(lm, keep, [1, 2])
    condition = fit_condition(lm, {1: diff[0], 2: diff[1]}, steer, keep)
    assert condition.fit["f1"] == 1.0 and set(condition.fit["per_layer"]) == {"1", "2"}
    scores = last_token_scores(lm, steer + keep, {condition.layer: condition.direction})[condition.layer]
    assert condition.decide(scores).tolist() == [True] * len(steer) + [False] * len(keep)
    # The negated direction separates the same prompts with the other comparison.
    flipped = fit_condition(lm, {condition.layer: -condition.direction}, steer, keep)
    assert flipped.comparison != condition.comparison and flipped.fit["f1"] == 1.0
    path = condition.save(tmp_path / "cond.safetensors", lm)
    again = Condition.load(path)
    assert (again.layer, again.threshold, again.comparison) == (
        condition.layer,
        condition.threshold,
        condition.comparison,
    )
