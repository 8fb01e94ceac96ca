"""One strength everywhere: a norm-relative strength steers exactly as the multipliers it converts to; the
calibrated default; the server's `strength` field; `generate --strength`; calibration on a tiny model."""

from __future__ import annotations

import pytest
import torch

from steerlab.cli import main
from steerlab.evaluation.calibrate import CalibrationConfig, calibrate, token_kl
from steerlab.generation import GenerationConfig, generate
from steerlab.meta import CalibrationRecord, Recommendation
from steerlab.server.registry import VectorRegistry
from steerlab.server.schemas import SteeringItem
from steerlab.steering import DEFAULT_STRENGTH, SteeringError, SteeringSpec, steer
from steerlab.strength import multiplier_for, neutral_texts, with_neutral_norms
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm

PROMPTS = ["Hello there", "A much longer prompt to pad", "Why"]


def _vector(lm, layers=(1, 2)) -> SteeringVector:
    torch.manual_seed(3)
    raw = SteeringVector({layer: torch.randn(lm.hidden_size) for layer in layers}, VectorMeta.for_model(lm, "caa"))
    return with_neutral_norms(lm, raw)


def test_a_strength_gives_the_same_tokens_as_the_multipliers_it_converts_to():
    lm = tiny_lm(num_layers=4)
    vector = _vector(lm)
    config = GenerationConfig(max_new_tokens=8)
    for s in (0.3, -0.7):
        by_strength = generate(lm, PROMPTS, SteeringSpec(vector, layers=[1, 2], strength=s), config=config)
        # Each layer has its own residual norm, so the same strength is a different multiplier per layer.
        mults = {layer: multiplier_for(vector, layer, s) for layer in (1, 2)}
        assert mults[1] != pytest.approx(mults[2])
        by_mult = generate(
            lm, PROMPTS, [SteeringSpec(vector, mults[1], [1]), SteeringSpec(vector, mults[2], [2])], config=config
        )
        unsteered = generate(lm, PROMPTS, None, config=config)
        assert [r.steered for r in by_strength] == [r.steered for r in by_mult] != [r.steered for r in unsteered]
        assert SteeringSpec(vector, layers=[1, 2], strength=s).layer_multipliers() == pytest.approx(mults)
    # Per-row strengths convert row by row (0 = off).
    spec = SteeringSpec(vector, layers=[2], strength=[0.5, 0.0])
    assert spec.row_multipliers(2).tolist() == pytest.approx([multiplier_for(vector, 2, 0.5), 0.0])
    with steer(lm, vector, strength=0.5, layers=[2]) as handle:
        assert handle.active


def test_strength_and_multiplier_are_exclusive_and_a_strength_needs_residual_norms():
    lm = tiny_lm(num_layers=3)
    vector = _vector(lm)
    with pytest.raises(SteeringError, match="give multiplier \\(raw\\) or strength \\(norm-relative\\), not both"):
        SteeringSpec(vector, 2.0, [1], strength=0.1)
    bare = SteeringVector(dict(vector.directions), VectorMeta.for_model(lm, "caa"))
    with pytest.raises(SteeringError, match=r"no residual norm for layer 1.*with_neutral_norms"):
        steer(lm, bare, strength=0.1, layers=[1])
    with pytest.raises(SteeringError, match="strength must be a finite number"):
        SteeringSpec(vector, layers=[1], strength=float("nan")).row_multipliers(1)


def test_the_default_is_the_calibrated_strength_else_the_sweep_multiplier_else_0_2_else_1():
    lm = tiny_lm(num_layers=3)
    vector = _vector(lm)
    spec = SteeringSpec(vector, layers=[1])
    assert spec.strength == DEFAULT_STRENGTH == 0.2
    assert spec.row_multipliers(1).item() == pytest.approx(multiplier_for(vector, 1, 0.2))
    bare = SteeringVector(dict(vector.directions), VectorMeta.for_model(lm, "caa"))  # no residual norms: no strength
    assert SteeringSpec(bare, layers=[1]).row_multipliers(1).tolist() == [1.0]
    vector.meta = vector.meta.with_recommended(layer=2, multiplier=3.0)
    spec = SteeringSpec(vector)
    assert spec.strength is None and spec.layer_weights() == {2: 1.0} and spec.row_multipliers().tolist() == [3.0]
    calibration = CalibrationRecord(0.25, -0.2, {"up": [2], "down": [1]}, 0.5, 0.1)
    vector.meta = vector.meta.with_recommended(calibration=calibration)  # calibrated after the sweep: it wins
    spec = SteeringSpec(vector)
    assert spec.multiplier is None and spec.strength == 0.25 and spec.layer_weights() == {2: 1.0}
    assert spec.row_multipliers(2).item() == pytest.approx(multiplier_for(vector, 2, 0.25))
    assert SteeringSpec(vector, operator="rotate").row_multipliers().tolist() == [1.0]  # not a strength's unit


def test_the_server_resolves_a_strength_into_each_layers_multiplier():
    lm = tiny_lm(num_layers=3)
    vector = _vector(lm)
    registry = VectorRegistry(lm, {"v": ("v.safetensors", vector)})
    (resolved,) = registry.resolve([SteeringItem(vector="v", strength=0.4, layers=[1, 2])])
    assert resolved.multiplier == 1.0 and resolved.strength == 0.4
    assert dict(resolved.layers) == pytest.approx({layer: multiplier_for(vector, layer, 0.4) for layer in (1, 2)})
    assert resolved.describe()["strength"] == 0.4 and set(resolved.describe()["multipliers"]) == {"1", "2"}
    with pytest.raises(ValueError, match="give multiplier \\(raw\\) or strength \\(norm-relative\\), not both"):
        SteeringItem(vector="v", strength=0.4, multiplier=2.0)
    with pytest.raises(ValueError, match="strength must be a finite number"):
        SteeringItem(vector="v", strength=float("inf"))


def test_generate_command_takes_a_strength_and_prints_both_units(tmp_path, capsys):
    lm = tiny_lm(num_layers=3)
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    path = tmp_path / "v.safetensors"
    _vector(lm).save(path)
    args = [
        "generate",
        "--model",
        str(tmp_path / "tiny"),
        "--vector",
        str(path),
        "--layers",
        "1,2",
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "3",
    ]
    assert main([*args, "--strength", "0.2"]) == 0
    out = capsys.readouterr().out
    vector = SteeringVector.load(path)
    m1 = multiplier_for(vector, 1, 0.2)
    assert f"layer 1: multiplier {m1:+.4g} = strength +0.2" in out and "layer 2: multiplier" in out
    assert main([*args, "--strength", "0.9"]) == 0
    assert "strength +0.9 (over half the layer's residual norm: expect degraded text)" in capsys.readouterr().out
    assert main([*args, "--strength", "0.2", "--multiplier", "3"]) == 1
    assert "give --multiplier (raw) or --strength (norm-relative), not both" in capsys.readouterr().err


def test_calibration_keeps_the_kl_budget_and_is_stored_as_the_default():
    lm = tiny_lm(num_layers=3)
    vector = _vector(lm, layers=(1,))
    kl = token_kl(lm, vector, [1], [0.0, 0.1, 0.4], neutral_texts()[:3])
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and 0 < kl[1] < kl[2]
    config = CalibrationConfig(
        kl_budget=kl[1] * 1.5,
        fluency_bound=0.99,
        strengths=[0.05, 0.1, 0.2, 0.4],
        prompts=3,
        fluency_prompts=2,
        max_new_tokens=6,
    )
    result, calibrated = calibrate(lm, vector, config)
    up = result.kl["up"]
    assert result.up == max(
        s for s in config.strengths if all(up[str(t)] <= config.kl_budget for t in config.strengths if t <= s)
    )
    assert result.down is None or result.down < 0
    assert calibrated.meta.recommended.calibration.up == result.up
    assert SteeringSpec(calibrated, layers=[1]).strength == result.up
    assert vector.meta.recommended == Recommendation()  # the input is left as it was
