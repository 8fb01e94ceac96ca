"""Operators are plain functions; rows and positions a steer does not use keep their hidden state bit for bit,
and steering acts only in the thread that attached it."""

from __future__ import annotations

import threading

import pytest
import torch

from steerlab.operators import OPERATORS, add, get_operator
from steerlab.steering import SteeringSpec, VectorSteering, steer
from steerlab.vector import SteeringVector, VectorMeta


def _vector(lm, value: float = 1.0, layers=(1,)) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    return SteeringVector({layer: torch.randn(lm.hidden_size, generator=g) * value for layer in layers},
                          VectorMeta.for_model(lm, "test"))


def _block_output(lm, layer: int, ids: torch.Tensor, spec=None) -> torch.Tensor:
    """Block `layer`'s output as the next block receives it (after any steering hook)."""
    seen = {}

    def read(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

    hook = lm.layers[layer + 1].register_forward_pre_hook(read, with_kwargs=True)
    try:
        with torch.no_grad():
            if spec is None:
                lm.model(input_ids=ids)
            else:
                with VectorSteering(spec).attach(lm):
                    lm.model(input_ids=ids)
    finally:
        hook.remove()
    return seen["h"]


def test_add_is_hidden_plus_coefficient_times_direction():
    hidden, direction = torch.randn(2, 3, 4), torch.randn(4)
    coef = torch.tensor([2.0, -0.5])[:, None, None]
    torch.testing.assert_close(add(hidden, direction, coef), hidden + coef * direction, rtol=0, atol=0)
    assert get_operator("add") is add and set(OPERATORS) >= {"add"}
    with pytest.raises(ValueError, match="unknown operator 'twist'; available: add"):
        get_operator("twist")


def test_steered_block_output_is_exactly_the_operator_applied(tiny_llama):
    lm = tiny_llama
    ids = torch.tensor([[5, 6, 7, 8]])
    vector = _vector(lm)
    plain = _block_output(lm, 1, ids)
    # the steered hook sits on block 1, so its output is the operator applied to the plain output
    steered = _block_output(lm, 1, ids, SteeringSpec(vector, 3.0, [1]))
    torch.testing.assert_close(steered, add(plain, vector.directions[1], torch.tensor(3.0)), rtol=0, atol=0)


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_rows_at_zero_get_exactly_nothing_even_from_a_nan_vector(tiny_llama, positions):
    """0 * NaN is NaN: a row that does not use a steer must not be multiplied by it at all."""
    lm = tiny_llama
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    bad = SteeringVector({1: torch.full((lm.hidden_size,), float("nan"))}, VectorMeta.for_model(lm, "test"))
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with steer(lm, bad, multiplier=[1.0, 0.0], layers=[1], positions=positions):
            mixed = lm.model(input_ids=ids).logits
    assert torch.isnan(mixed[0]).any()
    assert torch.equal(mixed[1], plain[1])


def test_steering_applies_only_in_the_thread_that_attached_it(tiny_llama):
    """Two threads share one model: one steers, the other's forwards stay plain, interleaved both ways."""
    lm = tiny_llama
    ids = torch.tensor([[5, 6, 7, 8]])
    vector = _vector(lm, 4.0, layers=(1, 2))
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with steer(lm, vector, multiplier=2.0):
            expected = lm.model(input_ids=ids).logits
    assert not torch.allclose(plain, expected)
    attached, checked, results = threading.Event(), threading.Event(), {}

    def steering_thread():
        with torch.no_grad(), steer(lm, vector, multiplier=2.0):
            attached.set()
            checked.wait(30)
            results["steered"] = lm.model(input_ids=ids).logits

    def plain_thread():
        attached.wait(30)
        with torch.no_grad():
            results["plain"] = [lm.model(input_ids=ids).logits for _ in range(5)]
            generated = lm.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False,
                                          pad_token_id=lm.tokenizer.pad_token_id)
            results["generated"] = generated
        checked.set()

    threads = [threading.Thread(target=steering_thread), threading.Thread(target=plain_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(torch.equal(p, plain) for p in results["plain"])
    torch.testing.assert_close(results["steered"], expected, rtol=0, atol=0)
    with torch.no_grad():
        alone = lm.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert torch.equal(results["generated"], alone)
    # and nothing stays behind once the steering thread is done
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, plain)
