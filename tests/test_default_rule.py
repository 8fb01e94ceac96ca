"""One rule for what a vector steers at when nothing is given (steering.default_steering), followed by every path:
the library's SteeringSpec, evaluate, the server (and the playground's default), and the vLLM engine; after
`vector calibrate`, `generate` steers at what calibrate said; each direction is calibrated at its own layer."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from steerlab.cli import main
from steerlab.evaluation.calibrate import CalibrationConfig, calibrate, token_kl
from steerlab.evaluation.run import evaluate
from steerlab.generation import GenerationConfig, generate
from steerlab.interop.vllm.engine import VLLMEngine
from steerlab.interop.vllm.library import SteerLibrary
from steerlab.interop.vllm.request import resolve
from steerlab.meta import CalibrationRecord, Pick
from steerlab.server.registry import VectorRegistry
from steerlab.server.schemas import SteeringItem
from steerlab.steering import DEFAULT_STRENGTH, SteeringSpec, default_steering
from steerlab.strength import multiplier_for, neutral_texts, with_neutral_norms
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm

PAIRS = [("I love this.", "I hate this."), ("What a joy.", "What a bore."), ("Great day!", "Awful day!")]


def _vector(lm, layers=(1, 2)) -> SteeringVector:
    g = torch.Generator().manual_seed(5)
    raw = SteeringVector(
        {layer: torch.randn(lm.hidden_size, generator=g) for layer in layers}, VectorMeta.for_model(lm, "caa")
    )
    return with_neutral_norms(lm, raw)


def _calibrated(vector: SteeringVector) -> SteeringVector:
    """Swept (up at layer 1 x3, down at layer 2) and then calibrated: the calibration has the last word."""
    meta = vector.meta.with_recommended(
        layer=1,
        multiplier=3.0,
        up=Pick(1, 3.0, 3.0),
        down=Pick(2, -2.0, -2.0),
        calibration=CalibrationRecord(0.3, -0.1, {"up": [1], "down": [2]}, 0.5, 0.1),
    )
    return SteeringVector(dict(vector.directions), meta)


def _task(tmp_path) -> str:
    (tmp_path / "pairs.jsonl").write_text("".join(f'{{"positive": "{p}", "negative": "{n}"}}\n' for p, n in PAIRS))
    (tmp_path / "prompts.txt").write_text("Hello\nTell me about today\n")
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: mini\nkind: generation\ntrain: pairs.jsonl\ntest: prompts.txt\nmetric: sentiment\nchat: true\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("calibrated", ("strength", 0.3, {1: 1.0})),
        ("swept", ("multiplier", 3.0, {1: 1.0})),
        ("norms only", ("strength", DEFAULT_STRENGTH, {1: 1.0, 2: 1.0})),
    ],
)
def test_every_path_steers_a_file_at_the_same_coefficients_when_none_is_given(tmp_path, setup, expected):
    lm = tiny_lm(num_layers=4)
    vector = _vector(lm)
    if setup == "calibrated":
        vector = _calibrated(vector)
    elif setup == "swept":
        vector.meta = vector.meta.with_recommended(layer=1, multiplier=3.0)
    unit, value, layers = expected
    # the reference, computed here: strength s at a layer is s x residual norm / |direction|
    want = {layer: value * (multiplier_for(vector, layer, 1.0) if unit == "strength" else 1.0) for layer in layers}
    default = default_steering(vector)
    assert (default.strength if unit == "strength" else default.multiplier) == value and default.layers == layers
    # the library
    assert SteeringSpec(vector).layer_coefficients() == pytest.approx(want, rel=1e-6)
    # the server (and what it tells the playground)
    registry = VectorRegistry(lm, {"v": (tmp_path / "v.safetensors", vector)})
    (resolved,) = registry.resolve([SteeringItem(vector="v")])
    assert {layer: resolved.multiplier * w for layer, w in resolved.layers} == pytest.approx(want, rel=1e-6)
    listed = registry.describe()[0]["default"]
    assert (listed["layers"], listed[unit], listed["source"]) == (list(layers), value, default.source)
    # evaluate: the multipliers its report says it steered at
    report = evaluate(lm, _task(tmp_path), vector, limit=1, generation=GenerationConfig(max_new_tokens=2))
    steer = report.settings["steer"]
    if unit == "strength":
        assert steer["strengths"]["values"] == [value]
        assert {int(k): v for k, v in steer["multipliers"][f"{value:g}"].items()} == pytest.approx(want, rel=1e-3)
    else:
        assert steer["multipliers"] == [value] and steer["layers"] == {str(k): 1.0 for k in layers}
    # the vLLM engine: the items it sends, resolved by the plugin's front end
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.steers_dir = tmp_path / "steers"
    engine.steers_dir.mkdir()
    (items,) = engine.items(vector, 1)
    (term,) = resolve(items, SteerLibrary(engine.steers_dir), hidden_size=lm.hidden_size, num_layers=lm.num_layers)
    assert dict(term.layers) == pytest.approx(want, rel=1e-6)


def test_the_vllm_front_end_steers_a_calibrated_file_at_its_default_when_a_request_names_nothing(tmp_path):
    lm = tiny_lm(num_layers=4)
    vector = _calibrated(_vector(lm))
    vector.save(tmp_path / "v.safetensors")
    (term,) = resolve({"vector": "v"}, SteerLibrary(tmp_path), hidden_size=lm.hidden_size, num_layers=lm.num_layers)
    assert dict(term.layers) == pytest.approx(SteeringSpec(vector).layer_coefficients(), rel=1e-6)


def test_each_direction_is_calibrated_at_its_own_layer():
    lm = tiny_lm(num_layers=4)
    vector = _vector(lm)
    vector.meta = vector.meta.with_recommended(layer=1, multiplier=3.0, up=Pick(1, 3.0, 3.0), down=Pick(2, -2.0, -2.0))
    config = CalibrationConfig(strengths=[0.05, 0.1], prompts=3, fluency_prompts=2, max_new_tokens=4)
    result, calibrated = calibrate(lm, vector, config)
    assert result.layers == {"up": [1], "down": [2]}
    texts = neutral_texts()[:3]
    assert list(result.kl["up"].values()) == pytest.approx(token_kl(lm, vector, [1], [0.05, 0.1], texts), abs=1e-4)
    assert list(result.kl["down"].values()) == pytest.approx(token_kl(lm, vector, [2], [-0.05, -0.1], texts), abs=1e-4)
    assert list(result.kl["down"].values()) != pytest.approx(token_kl(lm, vector, [1], [-0.05, -0.1], texts), abs=1e-4)
    assert calibrated.meta.recommended.calibration == result
    # given layers, both directions are measured there
    assert calibrate(
        lm, vector, CalibrationConfig(strengths=[0.05], prompts=2, fluency_prompts=1, max_new_tokens=4, layers=[2])
    )[0].layers == {"up": [2], "down": [2]}


def test_after_calibrate_generate_with_no_strength_steers_at_what_calibrate_said(tmp_path, capsys):
    lm = tiny_lm(num_layers=4)
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    vector = _vector(lm)
    vector.meta = vector.meta.with_recommended(layer=1, multiplier=3.0, up=Pick(1, 3.0, 3.0), down=Pick(2, -2.0, -2.0))
    vector.save(tmp_path / "v.safetensors")
    model = ["--model", str(tmp_path / "tiny")]
    assert (
        main(
            [
                "vector",
                "calibrate",
                str(tmp_path / "v.safetensors"),
                "--out",
                str(tmp_path / "v.safetensors"),
                "--overwrite",
                "--kl-budget",
                "50",
                "--fluency-bound",
                "0.99",
                "--prompts",
                "3",
                "--fluency-prompts",
                "2",
                "--max-new-tokens",
                "4",
                *model,
            ]
        )
        == 0
    )
    said = re.search(
        r"now steers at strength ([+-][\d.]+) at layer (\d+) \(the calibrated 'up' strength\)", capsys.readouterr().out
    )
    assert said, "calibrate says what the vector now steers at"
    strength, layer = float(said.group(1)), int(said.group(2))
    assert layer == 1 and strength > 0
    run = [
        "generate",
        "--vector",
        str(tmp_path / "v.safetensors"),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "6",
        *model,
    ]
    assert main(run) == 0
    by_default = capsys.readouterr().out
    assert (
        f"layer 1: multiplier {multiplier_for(SteeringVector.load(tmp_path / 'v.safetensors'), 1, strength):+.4g} "
        f"= strength {strength:+.4g} (nothing given: the calibrated 'up' strength)" in by_default
    )
    assert main([*run, "--strength", f"{strength}", "--layers", "1"]) == 0
    given = capsys.readouterr().out
    steered = lambda out: [line for line in out.splitlines() if "steered |" in line or "output |" in line]  # noqa: E731
    assert steered(by_default) == steered(given) and steered(given)
    # and the library agrees token for token
    calibrated = SteeringVector.load(tmp_path / "v.safetensors")
    ours = generate(lm, ["Hello"], SteeringSpec(calibrated), config=GenerationConfig(max_new_tokens=6))[0].steered
    assert (
        ours
        == generate(
            lm,
            ["Hello"],
            SteeringSpec(calibrated, layers=[1], strength=strength),
            config=GenerationConfig(max_new_tokens=6),
        )[0].steered
    )


def test_the_calibrated_strength_itself_is_not_called_beyond_the_calibration():
    """On SmolLM2 `generate` once warned that the calibrated +0.3 was "beyond the calibrated +0.3": the strength read
    back from its float32 multiplier came out a hair above. Norms here are chosen so the round trip is inexact."""
    from steerlab.cli.generate import strength_line
    from steerlab.strength import multiplier_for, strength_of

    lm = tiny_lm(num_layers=4)
    vector = _calibrated(_vector(lm))
    vector.meta = replace(vector.meta, residual_norms={"1": 12.345678, "2": 9.87654})
    back = strength_of(vector, 1, float(torch.tensor(multiplier_for(vector, 1, 0.3), dtype=torch.float32)))
    assert back != 0.3, "the round trip must be inexact, or this test could not fail"
    assert "beyond" not in strength_line("v", SteeringSpec(vector))
    assert "beyond the calibrated +0.3" in strength_line("v", SteeringSpec(vector, strength=0.31, layers=[1]))
