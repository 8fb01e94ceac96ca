"""Operators are plain functions; rows and positions a steer does not use keep their hidden state bit for bit,
and steering acts only in the thread that attached it."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from steerlab.operators import OPERATORS, add, get_operator
from steerlab.steering import SpecSteering, SteeringSpec, steer
from steerlab.vector import SteeringVector, VectorMeta


def _vector(lm, value: float = 1.0, layers=(1,)) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    return SteeringVector(
        {layer: torch.randn(lm.hidden_size, generator=g) * value for layer in layers}, VectorMeta.for_model(lm, "test")
    )


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
                with SpecSteering(spec).attach(lm):
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
            generated = lm.model.generate(
                input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
            )
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
        alone = lm.model.generate(
            input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
        )
    assert torch.equal(results["generated"], alone)
    # and nothing stays behind once the steering thread is done
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, plain)


def _hidden(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 5, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)


def test_ablate_leaves_no_component_and_keeps_the_orthogonal_part():
    from steerlab.operators import ablate, project

    hidden, direction = _hidden()
    out = ablate(hidden, direction * 7.0, torch.ones(3, 1, 1, dtype=torch.float64))
    assert project(out, direction).abs().max() < 1e-12
    assert torch.allclose(hidden - out, project(hidden, direction) * direction / direction.norm(), atol=1e-12)


def test_clamp_sets_the_component_per_row():
    from steerlab.operators import clamp, project

    hidden, direction = _hidden(1)
    target = torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)[:, None, None]
    out = clamp(hidden, direction, target)
    assert torch.allclose(project(out, direction), target.expand(3, 5, 1), atol=1e-12)
    assert torch.allclose(
        out - project(out, direction) * direction / direction.norm(),
        hidden - project(hidden, direction) * direction / direction.norm(),
        atol=1e-12,
    )


def test_rotate_zero_is_identity_180_flips_the_component_and_norms_are_kept():
    from steerlab.operators import project, rotate

    hidden, direction = _hidden(2)
    h32, d32 = hidden.float(), direction.float()
    assert torch.equal(rotate(h32, d32, torch.zeros(3, 1, 1)), h32)
    flipped = rotate(h32, d32, torch.full((3, 1, 1), 180.0))
    assert torch.allclose(project(flipped, d32), -project(h32, d32), atol=1e-5)
    assert torch.allclose(flipped, -h32, atol=1e-5)  # the turn by 180 degrees in the plane of u and h
    for angle in (30.0, 90.0, -45.0):
        turned = rotate(h32, d32, torch.full((3, 1, 1), angle))
        assert torch.allclose(turned.norm(dim=-1), h32.norm(dim=-1), rtol=1e-5)
    phi = torch.arccos(project(h32, d32) / h32.norm(dim=-1, keepdim=True))  # angle to the direction
    towards = rotate(h32, d32, torch.full((3, 1, 1), 20.0))
    far = phi > math.radians(20)
    cos_after = project(towards, d32) / towards.norm(dim=-1, keepdim=True)
    assert bool(far.any()) and torch.allclose(cos_after[far], torch.cos(phi - math.radians(20))[far], atol=1e-5)


@pytest.mark.parametrize("name", ["ablate", "clamp", "rotate"])
def test_each_operator_steers_only_selected_rows_and_equals_its_function_in_the_model(tiny_llama, name):
    lm = tiny_llama
    vector = _vector(lm)
    ids = torch.tensor([[5, 9, 12, 30, 41]] * 2)
    plain = _block_output(lm, 1, ids)
    spec = SteeringSpec(vector, [0.0, 2.0], layers=[1], operator=name)
    out = _block_output(lm, 1, ids, spec)
    assert torch.equal(out[0], plain[0])
    direction = vector.directions[1]
    expected = OPERATORS[name](plain[1:], direction, torch.tensor(2.0))
    assert torch.allclose(out[1:], expected, atol=1e-5)
    if name == "ablate":
        from steerlab.operators import project

        assert project(out[1:], direction).abs().max() < 1e-4


def test_the_file_states_the_default_operator_and_old_files_add(tiny_llama, tmp_path):
    from steerlab.vector import SteeringVector as SV

    vector = _vector(lm := tiny_llama)
    assert vector.meta.operator == "add" and SteeringSpec(vector).operator_name() == "add"
    vector.meta.operator = "ablate"
    path = vector.save(tmp_path / "v.safetensors")
    loaded = SV.load(path)
    assert loaded.meta.operator == "ablate"
    assert (
        SteeringSpec(loaded).operator_name() == "ablate"
        and SteeringSpec(loaded, operator="add").operator_name() == "add"
    )
    ids = torch.tensor([[5, 9, 12, 30]])
    out = _block_output(lm, 1, ids, SteeringSpec(loaded, layers=[1]))
    from steerlab.operators import project

    assert project(out, loaded.directions[1]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="operator must be one of"):
        SpecSteering(SteeringSpec(vector, operator="scale"))


@pytest.mark.parametrize("name", ["ablate", "clamp", "rotate"])
def test_each_operator_generates_the_same_with_and_without_cache(tiny_llama, name):
    from steerlab.generation import GenerationConfig, generate_tokens

    lm = tiny_llama
    rows = [[5, 9, 12, 30, 41], [8, 3]]
    steer = SpecSteering(
        SteeringSpec(_vector(lm, 3.0, layers=(1, 2)), [2.0, 45.0], operator=name, positions="generated")
    )
    config = GenerationConfig(max_new_tokens=6)
    cached = generate_tokens(lm, rows, steer, config=config)
    assert not torch.equal(cached, generate_tokens(lm, rows, None, config=config))
    lm.model.generation_config.use_cache = False
    assert torch.equal(generate_tokens(lm, rows, steer, config=config), cached)


def test_steer_takes_an_operator(tiny_llama):
    lm = tiny_llama
    vector = _vector(lm)
    ids = torch.tensor([[5, 9, 12, 30]])
    seen = {}

    def read(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

    hook = lm.layers[2].register_forward_pre_hook(read, with_kwargs=True)
    try:
        with torch.no_grad(), steer(lm, vector, layers=[1], operator="ablate"):
            lm.model(input_ids=ids)
    finally:
        hook.remove()
    from steerlab.operators import project

    assert project(seen["h"], vector.directions[1]).abs().max() < 1e-4
