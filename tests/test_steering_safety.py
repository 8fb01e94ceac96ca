"""Steering through the public API under abuse: rows that do not use a steer get exactly nothing added
(a NaN vector cannot empty its neighbours), only float32-finite multipliers and strengths are accepted,
and two threads sharing one model never see each other's steering."""

from __future__ import annotations

import threading

import pytest
import torch

import steerlab
from steerlab.generation import GenerationConfig
from steerlab.strength import StrengthError, multiplier_for, strength_of
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model


def vector_for(lm, value: float = 1.0, layers=(1, 2)) -> SteeringVector:
    gen = torch.Generator().manual_seed(3)
    directions = {layer: torch.randn(lm.hidden_size, generator=gen) * 6 for layer in layers}
    vector = SteeringVector(directions, VectorMeta.for_model(lm, "caa"))
    if value != 1.0:  # poison one value in place, past any check a constructor or reader makes
        vector.directions[layers[0]][0] = value
    return vector


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_the_original_beside_a_non_finite_steer_is_the_plain_generation(poison):
    lm = tiny_model("llama")
    config = GenerationConfig(max_new_tokens=8)
    plain = steerlab.generate(lm, ["hello there"], config=config)[0].steered
    spec = steerlab.SteeringSpec(vector_for(lm, poison), multiplier=2.0)
    result = steerlab.generate(lm, ["hello there"], spec, generate_orig_output=True, config=config)[0]
    assert result.original == plain


def test_a_row_with_multiplier_zero_gets_nothing_from_a_nan_vector():
    lm = tiny_model("llama")
    ids = torch.tensor([lm.tokenizer("hello there")["input_ids"]] * 2)
    with torch.no_grad():
        plain = lm.model(ids).logits[0]
        with steerlab.steer(lm, vector_for(lm, float("nan")), multiplier=[1.0, 0.0]):
            steered = lm.model(ids).logits
    assert torch.equal(steered[1], plain)


def test_multipliers_beyond_float32_are_refused():
    lm = tiny_model("llama")
    vector = vector_for(lm)
    for multiplier in (1e39, -1e39, float("nan"), [1.0, float("inf")]):
        with pytest.raises(ValueError, match="multiplier"):
            steerlab.steer(lm, vector, multiplier=multiplier)


def test_a_multiplier_that_overflows_float32_once_weighted_is_refused():
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="multiplier"):
        steerlab.steer(lm, vector_for(lm), multiplier=1e38, layers={1: 10.0})


@pytest.mark.parametrize("strength", [1e39, float("nan"), float("inf")])
def test_strengths_beyond_float32_are_refused(strength):
    lm = tiny_model("llama")
    vector = vector_for(lm)
    vector.meta.residual_norms = {"1": 5.0}
    with pytest.raises(StrengthError):
        multiplier_for(vector, 1, strength)
    with pytest.raises(StrengthError):
        strength_of(vector, 1, strength)


def test_two_threads_sharing_a_model_see_only_their_own_steering():
    lm = tiny_model("llama")
    ids = torch.tensor([lm.tokenizer("hello there")["input_ids"]])
    vector = vector_for(lm)
    with torch.no_grad():
        plain = lm.model(ids).logits
        with steerlab.steer(lm, vector, multiplier=4.0):
            steered = lm.model(ids).logits
    assert not torch.equal(plain, steered)
    rounds, start = 40, threading.Barrier(2)
    seen: dict[str, list] = {"plain": [], "steered": [], "errors": []}

    def plain_worker():
        start.wait()
        for _ in range(rounds):
            with torch.no_grad():
                seen["plain"].append(torch.equal(lm.model(ids).logits, plain))

    def steered_worker():
        start.wait()
        try:
            for _ in range(rounds):
                with steerlab.steer(lm, vector, multiplier=4.0), torch.no_grad():
                    seen["steered"].append(torch.equal(lm.model(ids).logits, steered))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            seen["errors"].append(exc)

    threads = [threading.Thread(target=plain_worker), threading.Thread(target=steered_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert seen["errors"] == []
    assert seen["plain"] == [True] * rounds, f"{seen['plain'].count(False)} plain forwards came back steered"
    assert seen["steered"] == [True] * rounds


def test_an_unsteered_generate_in_one_thread_is_untouched_by_a_steered_one_in_another():
    lm = tiny_model("llama")
    config = GenerationConfig(max_new_tokens=10)
    plain = steerlab.generate(lm, ["hello there"], config=config)[0].steered
    spec = steerlab.SteeringSpec(vector_for(lm), multiplier=4.0)
    steered = steerlab.generate(lm, ["hello there"], spec, config=config)[0].steered
    assert plain != steered
    results: dict[str, list[str]] = {"plain": [], "steered": []}
    start = threading.Barrier(2)

    def run(name, steering):
        start.wait()
        for _ in range(4):
            results[name].append(steerlab.generate(lm, ["hello there"], steering, config=config)[0].steered)

    threads = [threading.Thread(target=run, args=("plain", None)), threading.Thread(target=run, args=("steered", spec))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"plain": [plain] * 4, "steered": [steered] * 4}
