"""BiPO: only the vector trains, the objective's known optimum is reached on a model where it has a closed form,
bad settings are refused before model work, and a BiPO file steers every path exactly as a CAA file of the same
numbers does."""

from __future__ import annotations

import math
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from steerlab.config import ConfigError, build_config, load_config
from steerlab.data import ContrastiveDataset, ContrastivePair, DatasetError, pairs_from_texts
from steerlab.generation import GenerationConfig, generate
from steerlab.interop.gguf import export_control_vector, import_control_vector
from steerlab.methods import fit, get_method
from steerlab.methods.bipo import BiPOConfig
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.steering import SteeringSpec
from steerlab.vector import SteeringVector
from tiny_model import tiny_lm

PAIRS = pairs_from_texts(
    ["good day", "a fine walk", "so happy", "kind words", "bright sun", "warm tea"],
    ["bad day", "a grim walk", "so sad", "cruel words", "dark rain", "cold tea"],
    prompt="Say something.",
)


def test_shipped_config_file_is_the_defaults():
    path = Path(str(resources.files("steerlab") / "methods" / "configs" / "bipo.yaml"))
    assert load_config(BiPOConfig, path) == BiPOConfig()
    assert get_method("bipo").config_cls is BiPOConfig
    # the progress bar's total is the pairs trained on per epoch, times the epochs: 6 pairs hold 1 out at 0.2
    assert get_method("bipo").progress_total(6, BiPOConfig(epochs=3)) == 15


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": 0}, "config: epochs must be at least 1, got 0"),
        ({"lr": 0.0}, "config: lr must be a positive number, got 0.0"),
        ({"beta": -1.0}, "config: beta must be a positive number, got -1.0"),
        ({"weight_decay": -0.1}, "config: weight_decay must be 0 or more, got -0.1"),
        ({"val_fraction": 1.0}, "config: val_fraction must be at least 0 and below 1 (0 = no early stopping), got 1.0"),
        ({"init": "random"}, "config: key 'init': must be one of caa, zeros; got 'random'"),
        ({"batch_size": 0}, "config: batch_size must be at least 1, got 0"),
    ],
)
def test_bad_settings_are_one_line_errors(values, message):
    with pytest.raises(ConfigError) as err:
        build_config(BiPOConfig, values)
    assert str(err.value) == message


def test_too_few_pairs_is_refused_before_any_forward(tiny_llama):
    one = ContrastiveDataset(PAIRS.pairs[:1], "one.jsonl", "")
    calls = []
    hook = tiny_llama.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(DatasetError) as err:
            fit(tiny_llama, one, "bipo")
    finally:
        hook.remove()
    assert str(err.value) == (
        "one.jsonl: BiPO needs at least 2 pairs (val_fraction=0.2 holds some out); "
        "give more pairs or set val_fraction=0"
    )
    assert calls == []


def test_only_the_vector_trains_weights_stay_bit_identical(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    steps: list[int] = []
    vector = fit(tiny_llama, PAIRS, "bipo", layers=[1, 2], epochs=2, lr=0.05, progress=steps.append)
    after = tiny_llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and p.requires_grad for p in tiny_llama.model.parameters())
    stats = vector.meta.fit_stats
    assert (vector.meta.kind, vector.meta.method, vector.layers) == ("vector", "bipo", [1, 2])
    assert sum(steps) == stats["epochs_run"] * stats["train_pairs"] == 2 * 5
    assert len(stats["loss_train"]) == len(stats["loss_val"]) == 2
    assert set(stats["cosine_to_caa"]) == set(vector.meta.residual_norms) == {"1", "2"}
    assert vector.meta.config["layers"] == [1, 2] and vector.meta.config["epochs"] == 2
    assert all(float(vector.directions[layer].norm()) > 0 for layer in (1, 2))


def _linear_head_model():
    """A tiny Llama steered at its last block with the final norm removed: the head reads h + d*v linearly.

    Then log p(a) - log p(b) at one position is (w_a - w_b) . (h + d v), so each pair's BiPO margin is exactly
    u . v with u = w_pos - w_neg, whatever the prompt. With k1 pairs preferring "a" over "b" and k2 the
    reverse, the loss k1 * f(beta s) + k2 * f(-beta s), f(m) = log(1 + e^-m), s = u . v, is least at
    s* = ln(k1 / k2) / beta, and the least-norm optimum is v* = s* u / |u|^2.
    """
    lm = tiny_lm(num_layers=2, hidden=16, seed=3)
    lm.model.model.norm = torch.nn.Identity()
    tok = lm.tokenizer
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    signs = torch.tensor([1.0, -1.0] * 8)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        head = lm.model.get_output_embeddings().weight
        head[b] = head[a] - 0.5 * signs  # u = w_a - w_b = 0.5 * signs: every coordinate the same size
    return lm, 0.5 * signs


def test_the_known_optimum_is_recovered():
    lm, u = _linear_head_model()
    prompts = ["hi", "yo", "ok", "so", "go", "no", "up", "on"]
    pairs = [ContrastivePair(p, "a", "b") for p in prompts[:6]] + [ContrastivePair(p, "b", "a") for p in prompts[6:]]
    data = ContrastiveDataset(pairs, "toy", "")
    beta = 2.0
    vector = fit(
        lm, data, "bipo", layers=[1], init="zeros", beta=beta, val_fraction=0.0, epochs=300, lr=0.002, batch_size=8
    )
    v = vector.directions[1]
    expected = math.log(6 / 2) / beta
    assert float(u @ v) == pytest.approx(expected, abs=0.03)
    assert float(torch.nn.functional.cosine_similarity(v, u, dim=0)) > 0.999
    assert vector.meta.fit_stats["loss_train"][-1] < vector.meta.fit_stats["loss_train"][0]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A trained BiPO file and a CAA file holding the same numbers, saved and read back."""
    lm = tiny_lm()
    folder = tmp_path_factory.mktemp("twins")
    trained = fit(lm, PAIRS, "bipo", layers=[2], epochs=2, lr=0.1)
    trained.save(folder / "bipo.safetensors")
    caa = SteeringVector(dict(trained.directions), replace(trained.meta, method="caa", config={}, fit_stats={}))
    caa.save(folder / "caa.safetensors")
    return lm, folder


def _generate(lm, vector, **spec):
    steering = SteeringSpec(vector, **spec) if spec else SteeringSpec(vector)
    out = generate(lm, ["Hello there"], steering, config=GenerationConfig(max_new_tokens=12))
    return out[0].steered


def test_a_bipo_file_steers_hf_generation_as_a_caa_file_of_the_same_numbers(twins):
    lm, folder = twins
    bipo, caa = SteeringVector.load(folder / "bipo.safetensors"), SteeringVector.load(folder / "caa.safetensors")
    assert bipo.meta.method == "bipo" and bipo.meta.fit_stats["loss_train"]
    unsteered = generate(lm, ["Hello there"], None, config=GenerationConfig(max_new_tokens=12))[0].steered
    for spec in ({}, {"multiplier": 3.0}, {"strength": -0.5}):
        steered = _generate(lm, bipo, **spec)
        assert steered == _generate(lm, caa, **spec)
    assert _generate(lm, bipo, multiplier=3.0) != unsteered, "the steer must change the output, or this could not fail"


def test_a_bipo_file_round_trips_through_gguf(twins, tmp_path):
    lm, folder = twins
    bipo = SteeringVector.load(folder / "bipo.safetensors")
    back = import_control_vector(export_control_vector(bipo, tmp_path / "bipo.gguf"))
    assert torch.equal(back.directions[2], bipo.directions[2])
    assert _generate(lm, back, multiplier=3.0) == _generate(lm, bipo, multiplier=3.0)


def test_the_server_serves_a_bipo_file_as_a_caa_file_of_the_same_numbers(twins):
    lm, folder = twins
    with TestClient(create_app(lm, VectorRegistry.from_dir(lm, folder))) as client:
        listing = {v["id"]: v for v in client.get("/v1/vectors").json()["data"]}
        assert (listing["bipo"]["method"], listing["bipo"]["usable"]) == ("bipo", True)
        texts = []
        for name in ("bipo", "caa"):
            body = {
                "messages": [{"role": "user", "content": "Hello there"}],
                "max_tokens": 12,
                "temperature": 0,
                "steering": [{"vector": name, "multiplier": 3.0, "layers": [2]}],
            }
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            texts.append(reply.json()["choices"][0]["message"]["content"])
    assert texts[0] == texts[1]
