"""PCA / RepE vectors: parity with an independent numpy SVD, sign vote, scaling, configs, files, and the effect on SmolLM2."""

import json
import re
from importlib import resources

import numpy as np
import pytest
import torch

from steerlab.config import ConfigError, build_config, load_config
from steerlab.data import ContrastiveDataset, ContrastivePair, demo_dataset_path, load_pairs
from steerlab.generation import GenerationConfig, generate
from steerlab.methods import METHODS, pca
from steerlab.steering import SteeringSpec
from steerlab.strength import residual_norms
from steerlab.vector import SteeringVector
from tiny_model import chat_ids, reference_means, tiny_lm

PAIRS = ContrastiveDataset(
    [
        ContrastivePair("How was the film?", "A delight from start to end.", "A bore from start to end."),
        ContrastivePair("Rate the hotel.", "Spotless rooms and kind staff.", "Dirty rooms and rude staff."),
        ContrastivePair("Your commute?", "Quick and calm today.", "Slow and awful today."),
        ContrastivePair("The new phone?", "I love it.", "I hate it."),
        ContrastivePair("Dinner last night?", "Tasty, we will go back!", "Bland, never again."),
        ContrastivePair("How is the weather?", "Sunny and warm, lovely.", "Grey and cold, dreadful."),
        ContrastivePair("Your new job?", "Great team, great work.", "Bad team, dull work."),
        ContrastivePair("The concert?", "Wonderful sound.", "Terrible sound."),
        ContrastivePair("The book?", "Gripping and wise.", "Tedious and shallow."),
        ContrastivePair("Weekend plans?", "A fun trip with friends!", "Chores, alone, again."),
        ContrastivePair("The meeting?", "Short and useful.", "Long and pointless."),
        ContrastivePair("Your garden?", "Blooming beautifully.", "Dying slowly."),
    ],
    "tiny-sentiment",
    "0" * 64,
)
LAYERS = [1, 3, 4]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return tiny_lm(num_layers=6, hidden=16, seed=3)


def reference_activations(lm, pairs, layers):
    """[n_pairs, n_layers, hidden] means over each answer, from output_hidden_states, one sequence at a time."""
    pos, neg = [], []
    for pair in pairs:
        prefix = chat_ids(lm, pair.prompt)
        answer = lambda text: lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        pos.append(reference_means(lm, prefix, answer(pair.positive), layers).numpy())
        neg.append(reference_means(lm, prefix, answer(pair.negative), layers).numpy())
    return np.stack(pos), np.stack(neg)


def numpy_direction(pos: np.ndarray, neg: np.ndarray, mode: str) -> np.ndarray:
    """First principal component written independently with numpy, signed by the pairs' majority (a tie: the mean)."""
    if mode == "pca_diff":
        rows = pos - neg
        rows = rows - rows.mean(axis=0)
    else:
        center = (pos + neg) / 2
        rows = np.concatenate([pos - center, neg - center])
        rows = rows - rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    v = vt[0]
    gaps = (pos - neg) @ v
    vote = np.sign(gaps).sum()
    return v if vote > 0 or (vote == 0 and gaps.mean() >= 0) else -v


@pytest.mark.parametrize("mode", ["pca_diff", "pca_center"])
def test_directions_match_an_independent_numpy_svd(lm, mode):
    vector = pca.fit(lm, PAIRS, pca.PCAConfig(mode=mode, layers=LAYERS, batch_size=5), task="sentiment")
    pos, neg = reference_activations(lm, PAIRS.pairs, LAYERS)
    assert vector.layers == LAYERS and vector.meta.method == mode and vector.meta.task == "sentiment"
    for i, layer in enumerate(LAYERS):
        got = vector.directions[layer].double().numpy()
        expected = numpy_direction(pos[:, i], neg[:, i], mode)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
        cosine = got @ expected / np.linalg.norm(expected)
        assert cosine >= 0.9999, (layer, cosine)  # signed: the sign vote agrees too
        # one residual-norm definition for every method: strength.residual_norms on neutral text
        assert vector.meta.residual_norms[str(layer)] == round(residual_norms(lm, [layer])[layer], 4)


def test_the_two_modes_differ_as_documented():
    # Every pair differs by the same vector along axis 0, plus a spread along axis 1: pca_center finds the
    # shared difference, pca_diff (which removes the mean difference first) finds the spread.
    gen = torch.Generator().manual_seed(0)
    neg = torch.randn(20, 4, generator=gen)
    spread = torch.linspace(-1, 1, 20)
    pos = neg + torch.tensor([3.0, 0, 0, 0]) + spread[:, None] * torch.tensor([0, 1.0, 0, 0])
    center, _ = pca.first_component(pos, neg, "pca_center")
    diff, ratio = pca.first_component(pos, neg, "pca_diff")
    assert abs(float(center[0])) > 0.99
    assert abs(float(diff[1])) > 0.99 and ratio == pytest.approx(1.0, abs=1e-6)


def test_sign_follows_the_majority_of_pairs_not_the_mean():
    direction = torch.tensor([1.0, 0.0])
    neg = torch.zeros(4, 2)
    pos = torch.tensor([[0.1, 0], [0.1, 0], [0.1, 0], [-5.0, 0]])  # 3 of 4 pairs higher, mean lower
    oriented, agreeing = pca.orient(direction, pos, neg)
    assert oriented.tolist() == [1.0, 0.0] and agreeing == 0.75
    flipped, agreeing = pca.orient(-direction, pos, neg)
    assert flipped.tolist() == [1.0, 0.0] and agreeing == 0.75
    tie = torch.tensor([[1.0, 0], [-3.0, 0]])
    assert pca.orient(direction, tie, torch.zeros(2, 2))[0].tolist() == [-1.0, 0.0]  # tie: the mean decides


def test_scale_to_residual_norm_and_defaults(lm):
    unit = pca.fit(lm, PAIRS, pca.PCAConfig(layers=[2, 4]))
    scaled = pca.fit(lm, PAIRS, pca.PCAConfig(layers=[2, 4], scale_to_residual_norm=True, residual_fraction=0.25))
    for layer in (2, 4):
        expected = 0.25 * scaled.meta.residual_norms[str(layer)]
        assert scaled.directions[layer].norm().item() == pytest.approx(expected, rel=1e-5)
        assert torch.allclose(scaled.directions[layer] / expected, unit.directions[layer], atol=1e-6)
    default = pca.fit(lm, PAIRS)
    assert default.layers == [lm.default_layer()] == [3] and default.meta.method == "pca_center"
    assert set(default.meta.fit_stats) == {"explained_variance_ratio", "pairs_agreeing"}
    # what was asked rebuilds the config (layers as fitted), and nothing the fit found is in it
    assert build_config(pca.PCAConfig, default.meta.config) == pca.PCAConfig(layers=[3])
    assert default.meta.dataset["name"] == "tiny-sentiment"


def test_pca_diff_refuses_one_pair(lm):
    one = PAIRS.subset([0])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "mode pca_diff needs at least 2 pairs (one difference has no variance); add pairs or use mode pca_center"
        ),
    ):
        pca.fit(lm, one, pca.PCAConfig(mode="pca_diff"))
    assert pca.fit(lm, one, pca.PCAConfig(mode="pca_center")).layers == [3]


def test_identical_differences_have_no_component_for_pca_diff():
    neg = torch.randn(5, 3)
    with pytest.raises(ValueError, match="mode pca_diff: the rows PCA would run on are all zero"):
        pca.first_component(neg + torch.tensor([1.0, 2.0, 3.0]), neg, "pca_diff")


def test_config_errors_name_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        build_config(pca.PCAConfig, {"mdoe": "pca_diff"})
    assert str(err.value) == (
        "config: unknown key 'mdoe' for PCAConfig; allowed keys: mode, layers, batch_size, "
        "batch_tokens, scale_to_residual_norm, residual_fraction"
    )
    with pytest.raises(ConfigError) as err:
        build_config(pca.PCAConfig, {"mode": "pca"})
    assert str(err.value) == "config: key 'mode': must be one of pca_diff, pca_center; got 'pca'"
    with pytest.raises(ConfigError) as err:
        build_config(pca.PCAConfig, {"residual_fraction": 0})
    assert str(err.value) == "config: residual_fraction must be positive, got 0.0"
    with pytest.raises(ConfigError) as err:
        build_config(pca.PCAConfig, {"scale_to_residual_norm": "yes"})
    assert str(err.value) == "config: key 'scale_to_residual_norm': expected true or false, got 'yes'"


def test_shipped_default_config_is_the_dataclass_default():
    path = resources.files("steerlab") / "methods" / "configs" / "pca.yaml"
    assert load_config(pca.PCAConfig, path) == pca.PCAConfig()
    assert load_config(pca.PCAConfig, path, ["mode=pca_diff", "layers=[2, 4]"]) == pca.PCAConfig("pca_diff", [2, 4])
    assert METHODS["pca"].config_cls is pca.PCAConfig and METHODS["pca"].fit is pca.fit


def test_save_load_apply_round_trip(lm, tmp_path):
    vector = pca.fit(lm, PAIRS, pca.PCAConfig(mode="pca_diff", layers=[2]), task="sentiment")
    path = vector.save(tmp_path / "pca.safetensors")
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.directions[2], vector.directions[2]) and loaded.meta == vector.meta
    assert build_config(pca.PCAConfig, loaded.meta.config) == pca.PCAConfig(mode="pca_diff", layers=[2])
    prompts = ["Tell me about rain.", "Hi"]
    cfg = GenerationConfig(max_new_tokens=8)
    m = 2 * vector.meta.residual_norms["2"]  # unit direction: push by twice the residual norm
    a = generate(lm, prompts, SteeringSpec(vector, multiplier=m), generate_orig_output=True, config=cfg)
    b = generate(lm, prompts, SteeringSpec(loaded, multiplier=m), generate_orig_output=True, config=cfg)
    assert [r.steered for r in a] == [r.steered for r in b]
    assert all(r.steered != r.original for r in a)
    with pytest.raises(FileExistsError):
        loaded.save(path)


@pytest.mark.real_model
def test_pca_vector_moves_vader_both_ways_on_smollm2(shared_data):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from steerlab.models import load_model

    lm = load_model(None)
    pairs = load_pairs(demo_dataset_path()).subset(range(24))
    # Layer 12 of 30 and +-25 (unit direction; the residual norm there is ~106) keep the text readable.
    vector = pca.fit(lm, pairs, pca.PCAConfig(mode="pca_center", layers=[12]))
    assert vector.meta.fit_stats["pairs_agreeing"]["12"] >= 0.9
    lines = (shared_data / "sentiment" / "neutral_prompts.jsonl").read_text().splitlines()[:20]
    prompts = [json.loads(line)["prompt"]["text"] for line in lines]
    n, m = len(prompts), 25.0
    spec = SteeringSpec(vector, multiplier=[m] * n + [0.0] * n + [-m] * n)
    out = generate(lm, prompts * 3, spec, config=GenerationConfig(max_new_tokens=24), batch_size=3 * n)
    vader = SentimentIntensityAnalyzer()
    mean = [np.mean([vader.polarity_scores(r.steered)["compound"] for r in out[i * n : (i + 1) * n]]) for i in range(3)]
    plus, zero, minus = mean
    assert plus > zero + 0.25, mean
    assert minus < zero - 0.1, mean


@pytest.mark.real_model
def test_pca_finds_the_caa_direction_on_toxicity_text_pairs(smollm2, shared_data):
    """ParaDetox pairs have no prompt; the toxicity task's lead token keeps PCA's first component on toxicity."""
    from steerlab.evaluation.tasks import get_task
    from steerlab.methods import caa

    data = get_task("toxicity").train_data(shared_data, 100)
    mean_diff = caa.fit(smollm2, data, caa.CAAConfig(layers=[15])).directions[15]
    component = pca.fit(smollm2, data, pca.PCAConfig(layers=[15])).directions[15]
    assert float(torch.nn.functional.cosine_similarity(mean_diff, component, dim=0)) > 0.9
