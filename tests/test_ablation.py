"""Directional ablation at every layer: no block sees the direction, and the weight-orthogonalised export equals it."""

from __future__ import annotations

import pytest
import torch

from steerlab.ablation import DirectionalAblation, export_orthogonalized, orthogonalize
from steerlab.generation import GenerationConfig, generate_tokens
from steerlab.models import LoadedModel
from steerlab.operators import project
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model

IDS = [[5, 9, 12, 30, 41, 7], [8, 3, 22]]


def _vector(lm: LoadedModel, layer: int = 1) -> SteeringVector:
    g = torch.Generator().manual_seed(3)
    return SteeringVector({layer: torch.randn(lm.hidden_size, generator=g)}, VectorMeta.for_model(lm, "test"))


def _logits(lm: LoadedModel, steer=None, rows=IDS) -> torch.Tensor:
    from steerlab.batching import pad, positions_from_mask

    ids, mask = pad(rows, lm.tokenizer.pad_token_id, left=True)
    with torch.no_grad():
        if steer is None:
            return lm.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        with steer.attach(lm):
            return lm.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_no_block_sees_the_direction_and_unscaled_rows_are_untouched(arch):
    lm = tiny_model(arch)
    vector = _vector(lm)
    direction = vector.directions[1]
    seen = []
    ids = torch.tensor([IDS[0], IDS[0]])
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with DirectionalAblation(vector).attach(lm, row_scale=torch.tensor([1.0, 0.0])):
            # Registered after the ablation's own hooks, so these read what each block really receives.
            hooks = [
                block.register_forward_pre_hook(
                    lambda m, a, k: seen.append(a[0] if a else k["hidden_states"]), with_kwargs=True
                )
                for block in lm.layers
            ]
            try:
                steered = lm.model(input_ids=ids).logits
            finally:
                for hook in hooks:
                    hook.remove()
    assert len(seen) == lm.num_layers
    for hidden in seen:
        assert project(hidden[:1], direction).abs().max() < 1e-4 * hidden[:1].norm(dim=-1).max()
        assert project(hidden[1:], direction).abs().max() > 1e-2
    assert torch.equal(steered[1], plain[1].detach()) and not torch.allclose(steered[0], plain[0])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_orthogonalised_weights_equal_run_time_ablation(arch):
    lm = tiny_model(arch)
    vector = _vector(lm)
    ablated = _logits(lm, DirectionalAblation(vector))
    orthogonalize(lm, vector)
    assert torch.allclose(_logits(lm), ablated, atol=1e-4, rtol=1e-4)


def test_tied_embeddings_are_untied_so_only_the_stream_loses_the_direction():
    lm = tiny_model("qwen2")
    lm.model.config.tie_word_embeddings = True
    lm.model.tie_weights()
    assert lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    vector = _vector(lm)
    ablated = _logits(lm, DirectionalAblation(vector))
    orthogonalize(lm, vector)
    assert lm.model.get_output_embeddings().weight is not lm.model.get_input_embeddings().weight
    assert torch.allclose(_logits(lm), ablated, atol=1e-4, rtol=1e-4)


def test_export_loads_with_transformers_and_generates_like_run_time_ablation_with_and_without_cache(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = tiny_model("llama")
    vector = _vector(lm)
    config = GenerationConfig(max_new_tokens=6)
    steered = generate_tokens(lm, IDS, DirectionalAblation(vector), config=config)
    export_orthogonalized(lm, vector, tmp_path / "ortho")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ortho").eval()
    loaded = LoadedModel(model, AutoTokenizer.from_pretrained(tmp_path / "ortho"), name="ortho")
    assert torch.equal(generate_tokens(loaded, IDS, None, config=config), steered)
    model.generation_config.use_cache = False
    assert torch.equal(generate_tokens(loaded, IDS, None, config=config), steered)


def test_an_architecture_that_normalises_its_writes_is_refused():
    lm = tiny_model("gemma2")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained post-norms scale each feature differently (random init scales them all by 1)
        for module in lm.model.modules():
            if "Norm" in type(module).__name__:
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))
    with pytest.raises(ValueError, match="post-norms"):
        orthogonalize(lm, _vector(lm))


@pytest.mark.real_model
def test_smollm2_export_equals_run_time_ablation(smollm2, tmp_path):
    """The real model (GGUF-loaded, tied embeddings): the exported folder's logits equal run-time ablation."""
    from transformers import AutoModelForCausalLM

    from steerlab.models import load_model

    vector = SteeringVector(
        {12: torch.randn(smollm2.hidden_size, generator=torch.Generator().manual_seed(0))},
        VectorMeta.for_model(smollm2, "test"),
    )
    rows = [smollm2.tokenizer("The weather today is")["input_ids"], smollm2.tokenizer("Hi")["input_ids"]]
    ablated = _logits(smollm2, DirectionalAblation(vector), rows)
    export_orthogonalized(load_model(), vector, tmp_path / "ortho")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ortho").eval()
    exported = _logits(LoadedModel(model, smollm2.tokenizer, name="ortho"), rows=rows)
    plain = _logits(smollm2, rows=rows)
    assert torch.allclose(exported, ablated, atol=2e-3, rtol=1e-3)
    assert (plain - ablated).abs().max() > 100 * (exported - ablated).abs().max()
