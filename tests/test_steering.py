"""Steering hooks: same tokens with and without a KV cache, with left padding, per row; clean removal."""

from __future__ import annotations

import pytest
import torch

from steerlab.generation import GenerationConfig, encode_prompts, generate, generate_ids
from steerlab.steering import SpecSteering, SteeringError, SteeringSpec, steer
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model

PROMPTS = ["Hi.", "Tell me a long story about a cat.", "Why?"]


def random_vector(lm, layers=(1, 2), scale=8.0, seed=1) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(lm.hidden_size, generator=g) * scale / lm.hidden_size**0.5 for layer in layers}
    return SteeringVector(dirs, VectorMeta.for_model(lm, "test"))


def greedy(lm, rows, steering, use_cache=True, new=12):
    """Plain HF generate over left-padded rows inside a steering handle."""
    width = max(map(len, rows))
    ids = torch.tensor([[lm.tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    handle = steering.attach(lm, prompt_lengths=mask.sum(1)) if steering else None
    try:
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=None,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    finally:
        if handle:
            handle.remove()
    return out[:, width:]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_cache_and_padding_do_not_change_steered_tokens(arch, positions):
    lm = tiny_model(arch)
    rows = encode_prompts(lm, PROMPTS)
    spec = SpecSteering(SteeringSpec(random_vector(lm), 1.0, positions=positions))
    cached = greedy(lm, rows, spec, use_cache=True)
    uncached = greedy(lm, rows, spec, use_cache=False)
    assert torch.equal(cached, uncached)
    one_by_one = torch.cat([greedy(lm, [r], spec) for r in rows])
    assert torch.equal(cached, one_by_one)
    assert not torch.equal(cached, greedy(lm, rows, None)), (
        "the vector must change the output for this test to mean anything"
    )


def test_positions_select_prompt_or_generated_tokens(tiny_llama):
    lm = tiny_llama
    ids = torch.tensor([encode_prompts(lm, ["Tell me something."])[0]])
    n = ids.shape[1]
    vector = random_vector(lm, layers=(1,))
    with torch.no_grad():
        base = lm.model(ids).logits
        with steer(lm, vector, positions="prompt", prompt_lengths=torch.tensor([n - 3])):
            prompt_only = lm.model(ids).logits
        with steer(lm, vector, positions="generated", prompt_lengths=torch.tensor([n - 3])):
            generated_only = lm.model(ids).logits
    # "generated" starts at the last prompt token (it predicts the first new token): positions >= n - 4.
    torch.testing.assert_close(generated_only[:, : n - 4], base[:, : n - 4], rtol=0, atol=0)
    assert not torch.allclose(generated_only[:, n - 4 :], base[:, n - 4 :])
    assert not torch.allclose(prompt_only[:, 0], base[:, 0])


def test_per_row_multipliers_match_separate_runs(tiny_llama):
    lm = tiny_llama
    rows = encode_prompts(lm, PROMPTS)
    vector = random_vector(lm)
    mixed = greedy(lm, rows, SpecSteering(SteeringSpec(vector, [2.0, 0.0, -1.0])))
    for i, mult in enumerate([2.0, 0.0, -1.0]):
        alone = greedy(lm, [rows[i]], SpecSteering(SteeringSpec(vector, mult)) if mult else None)
        assert torch.equal(mixed[i : i + 1], alone)


def test_generate_orig_output_is_the_unsteered_output(tiny_llama):
    lm = tiny_llama
    vector = random_vector(lm)
    config = GenerationConfig(max_new_tokens=10)
    both = generate(lm, PROMPTS, SteeringSpec(vector, 2.0), generate_orig_output=True, config=config)
    plain = generate(lm, PROMPTS, None, config=config)
    assert [r.original for r in both] == [r.steered for r in plain]
    assert any(r.steered != r.original for r in both)


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_llama):
    lm = tiny_llama
    config = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95)
    rows = encode_prompts(lm, PROMPTS)
    together = generate_ids(lm, rows, None, config=config, row_seeds=[7, 8, 9])
    alone = [
        generate_ids(lm, [r], None, config=config, row_seeds=[s])[0] for r, s in zip(rows, [7, 8, 9], strict=False)
    ]
    assert together == alone
    assert generate_ids(lm, rows[:1], None, config=config, row_seeds=[10]) != alone[:1]


def test_several_vectors_add_up(tiny_llama):
    lm = tiny_llama
    a, b = random_vector(lm, seed=1), random_vector(lm, seed=2)
    ids = torch.tensor([encode_prompts(lm, ["Hello"])[0]])
    with torch.no_grad():
        with steer(lm, [SteeringSpec(a, 1.5), SteeringSpec(b, -0.5)]):
            two = lm.model(ids).logits
        with steer(lm, a * 1.5 - b * 0.5):
            summed = lm.model(ids).logits
    torch.testing.assert_close(two, summed, rtol=1e-5, atol=1e-5)


def test_per_layer_multipliers(tiny_llama):
    lm = tiny_llama
    v = random_vector(lm)
    ids = torch.tensor([encode_prompts(lm, ["Hello"])[0]])
    with torch.no_grad():
        with steer(lm, v, layers={1: 2.0, 2: 0.0}):
            weighted = lm.model(ids).logits
        with steer(lm, v * 2.0, layers=[1]):
            single = lm.model(ids).logits
    torch.testing.assert_close(weighted, single, rtol=0, atol=0)


def test_hooks_are_removed_after_normal_exit_and_after_an_error(tiny_llama):
    lm = tiny_llama
    ids = torch.tensor([encode_prompts(lm, ["Hello there"])[0]])
    with torch.no_grad():
        before = lm.model(ids).logits
        with steer(lm, random_vector(lm), multiplier=3.0, positions="generated"):
            during = lm.model(ids).logits
        assert torch.equal(lm.model(ids).logits, before)
        assert not torch.equal(during, before)
        with pytest.raises(RuntimeError, match="boom"), steer(lm, random_vector(lm), multiplier=3.0):
            raise RuntimeError("boom")
        assert torch.equal(lm.model(ids).logits, before)
        handle = steer(lm, random_vector(lm), multiplier=3.0)
        handle.remove()
        handle.remove()
        assert torch.equal(lm.model(ids).logits, before)
    assert all(not layer._forward_hooks for layer in lm.layers) and not lm.model._forward_pre_hooks


def test_generation_error_still_removes_hooks(tiny_llama):
    lm = tiny_llama
    with pytest.raises(SteeringError, match="2 per-row multipliers for a batch of 3 rows"):
        generate(lm, PROMPTS, SteeringSpec(random_vector(lm), [1.0, 2.0]), config=GenerationConfig(max_new_tokens=2))
    assert all(not layer._forward_hooks for layer in lm.layers)


def test_bad_steering_requests_are_refused(tiny_llama):
    lm = tiny_llama
    v = random_vector(lm)
    with pytest.raises(
        SteeringError,
        match="positions must be one of all, prompt, generated, system, user, assistant, between:OPEN:CLOSE or "
        "until:MARKER; got 'middle'",
    ):
        steer(lm, v, positions="middle")
    with pytest.raises(SteeringError, match="multiplier must be a finite number within float32's range"):
        steer(lm, v, multiplier=float("nan"))
    with pytest.raises(SteeringError, match=r"within float32's range \(\|m\| <= 3.403e\+38\), got 1e\+39"):
        steer(lm, v, multiplier=1e39)  # finite in float64, inf in float32
