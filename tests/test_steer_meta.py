"""Typed steer metadata: config beside fit statistics, a typed recommendation, conditions as their own kind, and
files of the older layout (format 1: `params`, a free `recommended` dict, conditions as vectors) still loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import steerlab
from steerlab.conditional import Condition
from steerlab.config import build_config
from steerlab.meta import FORMAT_VERSION, CalibrationRecord, ConditionRecord, Pick, Recommendation, VectorMeta
from steerlab.methods.pca import PCAConfig
from steerlab.server.registry import VectorRegistry
from steerlab.steering import SteeringSpec
from steerlab.strength import multiplier_for
from steerlab.vector import SteeringVector, VectorFileError
from tiny_model import tiny_model

HIDDEN = 32  # the tiny Llama's


def _old_header(**changes) -> dict:
    """Metadata as steerlab wrote it before format 2, written out by hand."""
    header = {
        "model_name": "tiny",
        "hidden_size": HIDDEN,
        "num_layers": 4,
        "method": "pca_center",
        "kind": "vector",
        "model_fingerprint": "",
        "model_type": "llama",
        "operator": "add",
        "dataset": {"pairs": 3},
        "task": "sentiment",
        "residual_norms": {"1": 10.0, "2": 12.5},
        "diagnostics": {},
        "created": "2025-01-01T00:00:00+00:00",
        "steerlab_version": "0.9",
        "format_version": 1,
        "params": {
            "mode": "pca_center",
            "layers": [1, 2],
            "batch_size": 16,
            "batch_tokens": 4096,
            "scale_to_residual_norm": False,
            "residual_fraction": 0.1,
            "explained_variance_ratio": {"1": 0.61, "2": 0.58},
            "pairs_agreeing": {"1": 1.0, "2": 0.9},
            "residual_norms_text": "steerlab demo prompts",
        },
        "recommended": {
            "layer": 2,
            "multiplier": 3.5,
            "mode": "relative",
            "value": 0.25,
            "strength": 0.25,
            "task": "sentiment",
            "split": "val",
            "effect": 0.12,
            "interval": [0.05, 0.2],
            "wrong_way": 0.1,
            "score": 0.31,
            "fluency": None,
            "fluency_bound": 0.1,
            "down": {
                "layer": 1,
                "multiplier": -2.0,
                "mode": "relative",
                "value": -0.25,
                "task": "sentiment",
                "split": "val",
                "effect": 0.08,
                "interval": [0.01, 0.15],
                "wrong_way": 0.2,
                "score": -0.1,
                "fluency": 5.0,
                "fluency_bound": 0.1,
            },
            "calibration": {
                "up": 0.15,
                "down": -0.06,
                "layers": [2],
                "kl_budget": 0.5,
                "fluency_bound": 0.1,
                "kl": {"up": {"0.15": 0.4}, "down": {"0.06": 0.3}},
                "fluency": {},
                "prompts": 8,
                "note": "",
            },
        },
    }
    header.update(changes)
    return header


def _write(path, header: dict, tensors: dict) -> None:
    save_file(tensors, str(path), metadata={"steerlab": json.dumps(header)})


def test_a_file_of_the_old_layout_loads_into_typed_records_and_saves_in_the_new_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    _write(
        tmp_path / "old.safetensors",
        _old_header(),
        {"layer.1": torch.randn(HIDDEN, generator=g), "layer.2": torch.randn(HIDDEN, generator=g)},
    )
    vector = steerlab.load_steer(tmp_path / "old.safetensors")
    meta = vector.meta
    # what was asked rebuilds the config; what was found is apart from it
    assert build_config(PCAConfig, meta.config) == PCAConfig(layers=[1, 2])
    assert meta.fit_stats == {
        "explained_variance_ratio": {"1": 0.61, "2": 0.58},
        "pairs_agreeing": {"1": 1.0, "2": 0.9},
        "residual_norms_text": "steerlab demo prompts",
    }
    rec = meta.recommended
    assert (rec.layer, rec.multiplier, rec.task, rec.split, rec.verdict) == (2, 3.5, "sentiment", "val", "")
    assert rec.up == Pick(2, 3.5, 0.25, "relative", 0.12, (0.05, 0.2), 0.1, 0.31, None, 0.1)
    assert rec.up.strength == 0.25 and rec.down.layer == 1 and rec.down.multiplier == -2.0
    assert rec.calibration.up == 0.15 and rec.calibration.layers == {"up": [2], "down": [2]}
    # what it steers at with nothing given: the calibrated strength at the calibrated layer
    spec = SteeringSpec(vector)
    assert spec.strength == 0.15 and spec.layer_weights() == {2: 1.0}
    assert spec.layer_multipliers() == {2: pytest.approx(multiplier_for(vector, 2, 0.15))}
    # saved again: the new layout, the same records
    again = SteeringVector.load(vector.save(tmp_path / "new.safetensors"))
    assert again.meta == meta and again.meta.format_version == FORMAT_VERSION == 2
    header = json.loads(
        json.loads(
            (tmp_path / "new.safetensors").read_bytes()[
                8 : 8 + int.from_bytes((tmp_path / "new.safetensors").read_bytes()[:8], "little")
            ]
        )["__metadata__"]["steerlab"]
    )
    assert "params" not in header and header["recommended"]["up"]["interval"] == [0.05, 0.2]
    assert header["recommended"]["calibration"]["layers"] == {"up": [2], "down": [2]}


def test_an_old_condition_file_loads_as_a_condition_everywhere(tmp_path):
    lm = tiny_model("llama")
    direction = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1))
    header = _old_header(
        model_name=lm.name,
        model_fingerprint=lm.fingerprint,
        method="condition",
        params={"threshold": 0.125, "comparison": "<="},
        recommended={"layer": 1},
        diagnostics={"condition_fit": {"f1": 0.9, "per_layer": {}}},
        residual_norms={},
    )
    folder = tmp_path / "steers"
    folder.mkdir()
    _write(folder / "gate.safetensors", header, {"layer.1": direction})
    condition = steerlab.load_steer(folder / "gate.safetensors")
    assert isinstance(condition, Condition) and condition.kind == "condition"
    assert (condition.layer, condition.threshold, condition.comparison, condition.fit) == (
        1,
        0.125,
        "<=",
        {"f1": 0.9, "per_layer": {}},
    )
    assert torch.equal(condition.direction, direction)
    assert condition.meta.condition == ConditionRecord(1, 0.125, "<=", {"f1": 0.9, "per_layer": {}})
    assert condition.meta.recommended == Recommendation() and condition.meta.config == {}
    with pytest.raises(VectorFileError, match="a steer of kind 'condition', not a steering vector"):
        SteeringVector.load(folder / "gate.safetensors")
    registry = VectorRegistry.from_dir(lm, folder)
    (entry,) = registry.describe()
    assert entry["object"] == "steering_condition" and entry["usable"]
    assert entry["condition"] == {"layer": 1, "comparison": "<=", "threshold": 0.125, "f1": 0.9}
    # saved again it is of kind "condition", with its record
    again = Condition.load(condition.save(tmp_path / "new.safetensors"))
    assert again.record() == condition.record() and torch.equal(again.direction, condition.direction)
    assert again.meta.kind == "condition" and again.meta.method == "condition"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"recommended": {"layer": 1, "up": {"layer": 9, "multiplier": 1.0}}},
            "metadata field 'recommended.up.layer': 9 is not a layer of a 4-layer model",
        ),
        (
            {"recommended": {"up": {"layer": 1}}},
            "metadata field 'recommended.up': a pick needs a layer and a multiplier",
        ),
        (
            {"recommended": {"up": {"layer": 1, "multiplier": 1.0, "interval": [0.1]}}},
            "metadata field 'recommended.up.interval': expected two finite numbers, got an array",
        ),
        (
            {"recommended": {"calibration": {"up": -0.1, "layers": [1]}}},
            "metadata field 'recommended.calibration': the 'up' strength must be positive and the 'down' one negative",
        ),
        (
            {"recommended": {"calibration": {"up": 0.1, "layers": {"up": ["1"]}}}},
            "metadata field 'recommended.calibration.layers.up': expected a list of layer numbers, got an array",
        ),
        ({"kind": "condition", "condition": None}, "a condition file without its 'condition' record"),
        (
            {"kind": "condition", "condition": {"layer": 1, "threshold": 0.1, "comparison": ">"}},
            "metadata field 'condition.comparison': expected '>=' or '<=', got '>'",
        ),
    ],
)
def test_typed_records_refuse_wrong_fields_naming_them(tmp_path, changes, message):
    header = {**VectorMeta("m", HIDDEN, 4, "caa").to_json(), **changes}
    _write(tmp_path / "v.safetensors", header, {"layer.1": torch.ones(HIDDEN)})
    with pytest.raises(VectorFileError, match=f"v.safetensors: {message}"):
        steerlab.load_steer(tmp_path / "v.safetensors")


def test_records_round_trip_through_their_json():
    rec = Recommendation(
        3,
        2.5,
        Pick(3, 2.5, 0.2, "relative", 0.1, (0.01, 0.2)),
        None,
        "",
        "t",
        "val",
        CalibrationRecord(0.15, None, {"up": [3], "down": [21]}, 0.5, 0.1, prompts=8),
    )
    assert Recommendation.from_json(json.loads(json.dumps(rec.to_json())), "x", 30) == rec
    assert Recommendation().to_json() == {} and Recommendation(layer=4).to_json() == {"layer": 4}
