"""Vector-prompt: the distilled vector against an independent computation, configs, files, and its effect on SmolLM2."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from steerlab.config import ConfigError, build_config, load_config
from steerlab.data import ContrastiveDataset, ContrastivePair, demo_dataset_path, load_pairs, pairs_from_texts
from steerlab.generation import GenerationConfig, generate
from steerlab.methods import METHODS, vector_prompt
from steerlab.methods.prompt import PromptSteering
from steerlab.methods.vector_prompt import VectorPromptConfig
from steerlab.steering import SteeringSpec, steer
from steerlab.vector import SteeringVector
from tiny_model import chat_ids, reference_means, tiny_lm

INSTRUCTION = "Always be upbeat."
PAIRS = ContrastiveDataset(
    [
        ContrastivePair("How was the film?", "A delight.", "A bore."),
        ContrastivePair("Rate the hotel.", "Spotless and kind.", "Dirty and rude."),
        ContrastivePair("Your commute?", "Quick and calm today.", "Slow and awful today."),
        ContrastivePair("The new phone?", "I love it.", "I hate it!"),
        ContrastivePair("Dinner?", "Tasty.", "Bland, never again."),
    ],
    "tiny-sentiment",
    "0" * 64,
)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(num_layers=5, hidden=16, seed=2)


def reference_vector(lm, placement, layers):
    """mean over pairs and answers of [mean over answer tokens of act(instruction + x + y) - act(x + y)]."""
    diffs = []
    for pair in PAIRS.pairs:
        plain = chat_ids(lm, pair.prompt)
        if placement == "system":
            instructed = chat_ids(lm, pair.prompt, system=INSTRUCTION)
        else:
            instructed = chat_ids(lm, f"{INSTRUCTION}\n\n{pair.prompt}")
        for answer in (pair.positive, pair.negative):
            ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
            diffs.append(reference_means(lm, instructed, ids, layers) - reference_means(lm, plain, ids, layers))
    return torch.stack(diffs).mean(0)


@pytest.mark.parametrize("placement", ["system", "prefix"])
def test_vector_is_the_mean_shift_the_instruction_causes(lm, placement):
    layers = [1, 3]
    config = VectorPromptConfig(instruction=INSTRUCTION, placement=placement, layers=layers, batch_size=3)
    vector = vector_prompt.fit(lm, PAIRS, config, task="sentiment")
    expected = reference_vector(lm, placement, layers)
    assert vector.layers == layers
    for i, layer in enumerate(layers):
        got = vector.directions[layer].double()
        assert torch.allclose(got, expected[i], atol=2e-5, rtol=1e-4), (layer, (got - expected[i]).abs().max())
        assert got.norm() > 0.1  # the instruction does shift the residual stream
    assert vector.meta.method == "vector_prompt" and vector.meta.task == "sentiment"
    assert build_config(VectorPromptConfig, vector.meta.config) == config
    assert vector.meta.dataset["pairs"] == len(PAIRS)
    assert set(vector.meta.residual_norms) == {"1", "3"}


def test_default_layer_is_the_middle_one(lm):
    vector = vector_prompt.fit(lm, PAIRS, VectorPromptConfig(instruction=INSTRUCTION))
    assert vector.layers == [lm.default_layer()] == [2]
    assert METHODS["vector_prompt"].config_cls is VectorPromptConfig


def test_progress_counts_both_passes(lm):
    seen = []
    vector_prompt.fit(lm, PAIRS, VectorPromptConfig(instruction=INSTRUCTION, batch_size=2), progress=seen.append)
    assert sum(seen) == 2 * len(PAIRS)


def test_config_errors():
    with pytest.raises(ConfigError) as err:
        build_config(VectorPromptConfig, {"instruction": "Be kind.", "layer": [3]})
    assert str(err.value) == (
        "config: unknown key 'layer' for VectorPromptConfig; allowed keys: "
        "instruction, placement, layers, batch_size, batch_tokens"
    )
    with pytest.raises(ConfigError) as err:
        build_config(VectorPromptConfig, {"instruction": "  "})
    assert (
        str(err.value) == "config: instruction must be a non-empty text, e.g. instruction='Always answer cheerfully.'"
    )
    with pytest.raises(ConfigError) as err:
        build_config(VectorPromptConfig, {"instruction": "Be kind.", "batch_size": 0})
    assert str(err.value) == "config: batch_size must be at least 1, got 0"
    path = resources.files("steerlab") / "methods" / "configs" / "vector_prompt.yaml"
    assert load_config(VectorPromptConfig, path, ["instruction=Be kind."]) == VectorPromptConfig("Be kind.")
    with pytest.raises(ValueError, match="vector_prompt needs a config with an instruction"):
        vector_prompt.fit(None, PAIRS)


def test_save_load_apply_round_trip(lm, tmp_path):
    vector = vector_prompt.fit(lm, PAIRS, VectorPromptConfig(instruction=INSTRUCTION, layers=[2]))
    path = vector.save(tmp_path / "vp.safetensors")
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.directions[2], vector.directions[2]) and loaded.meta == vector.meta
    assert loaded.meta.config["instruction"] == INSTRUCTION
    ids = torch.tensor([chat_ids(lm, "Hi there")])
    with torch.inference_mode():
        plain = lm.model(input_ids=ids).logits
        with steer(lm, vector, multiplier=3.0):
            first = lm.model(input_ids=ids).logits
        with steer(lm, loaded, multiplier=3.0):
            second = lm.model(input_ids=ids).logits
    assert torch.equal(first, second) and not torch.allclose(first, plain)


@pytest.mark.real_model
def test_vector_moves_vader_the_way_the_instruction_does_on_smollm2(shared_data):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from steerlab.models import load_model

    lm = load_model(None)
    instruction = "Always answer in a very positive, cheerful way."
    pairs = load_pairs(demo_dataset_path()).subset(range(24))
    vector = vector_prompt.fit(lm, pairs, VectorPromptConfig(instruction=instruction))  # middle layer, 15
    lines = (shared_data / "sentiment" / "neutral_prompts.jsonl").read_text().splitlines()[:20]
    prompts = [json.loads(line)["prompt"]["text"] for line in lines]
    cfg = GenerationConfig(max_new_tokens=24)
    by_prompt = generate(
        lm, prompts, PromptSteering(instruction), config=cfg, batch_size=len(prompts), generate_orig_output=True
    )
    by_vector = generate(lm, prompts, SteeringSpec(vector, multiplier=6.0), config=cfg, batch_size=len(prompts))
    vader = SentimentIntensityAnalyzer()
    mean = lambda texts: float(np.mean([vader.polarity_scores(t)["compound"] for t in texts]))  # noqa: E731
    unsteered = mean([r.original for r in by_prompt])
    prompted, vectored = mean([r.steered for r in by_prompt]), mean([r.steered for r in by_vector])
    assert prompted > unsteered + 0.1, (unsteered, prompted, vectored)
    assert vectored > unsteered + 0.1, (unsteered, prompted, vectored)


def test_stand_alone_texts_without_a_template_follow_the_shared_lead():
    """With no prompt and no chat template, both sides read the texts after the lead every prompt-less pair gets
    (a newline), never at position 0."""
    lm = tiny_lm(num_layers=5, hidden=16, seed=2, chat=False)
    data = pairs_from_texts(["A delight.", "I love it."], ["A bore.", "I hate it!"])
    vector = vector_prompt.fit(lm, data, VectorPromptConfig(instruction=INSTRUCTION, layers=[1]))
    instructed = lm.tokenizer(f"{INSTRUCTION}\n\n\n", add_special_tokens=True)["input_ids"]
    plain = lm.tokenizer("\n", add_special_tokens=True)["input_ids"]
    assert plain and plain != [lm.tokenizer.bos_token_id]
    diffs = []
    for text in ("A delight.", "A bore.", "I love it.", "I hate it!"):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        diffs.append(reference_means(lm, instructed, ids, [1]) - reference_means(lm, plain, ids, [1]))
    torch.testing.assert_close(vector.directions[1].double(), torch.stack(diffs).mean(0)[0], atol=2e-5, rtol=1e-4)
