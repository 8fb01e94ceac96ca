"""SteeringVector files, arithmetic and the safety rails that refuse or warn."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

from steerlab.vector import (
    IncompatibleVectorError,
    ModelMismatchWarning,
    SteeringVector,
    TaskMismatchWarning,
    VectorFileError,
    VectorMeta,
)
from tiny_model import tiny_model


def make_vector(lm, task="sentiment", scale=1.0):
    dirs = {1: torch.arange(lm.hidden_size, dtype=torch.float32) * scale, 2: torch.ones(lm.hidden_size) * scale}
    return SteeringVector(dirs, VectorMeta.for_model(lm, "caa", task=task, dataset={"name": "d", "sha256": "abc"}))


def test_save_load_round_trip_keeps_tensors_and_metadata(tiny_llama, tmp_path):
    v = make_vector(tiny_llama)
    path = v.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path)
    assert back.layers == [1, 2]
    assert all(torch.equal(back.directions[k], v.directions[k]) for k in v.layers)
    assert back.meta == v.meta
    assert back.meta.model_fingerprint == tiny_llama.fingerprint and back.meta.hidden_size == 32


def test_save_never_overwrites_unless_asked(tiny_llama, tmp_path):
    path = tmp_path / "v.safetensors"
    make_vector(tiny_llama).save(path)
    original = path.read_bytes()
    with pytest.raises(
        FileExistsError, match=r"v\.safetensors already exists; choose another path or pass overwrite=True"
    ):
        make_vector(tiny_llama, scale=2.0).save(path)
    assert path.read_bytes() == original
    make_vector(tiny_llama, scale=2.0).save(path, overwrite=True)
    assert torch.equal(SteeringVector.load(path).directions[2], torch.full((32,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"], "no temporary file may be left behind"


def test_arithmetic(tiny_llama):
    a, b = make_vector(tiny_llama), make_vector(tiny_llama, scale=3.0)
    assert torch.equal((a + b).directions[1], a.directions[1] * 4)
    assert torch.equal((b - a).directions[2], torch.full((32,), 2.0))
    assert torch.equal((0.5 * a).directions[1], a.directions[1] / 2)
    assert (a - b).meta.method == "arithmetic"
    other = make_vector(tiny_model("gpt2"))
    other.meta.hidden_size = 32
    other.meta.model_name = "tiny-gpt2"
    with pytest.raises(IncompatibleVectorError, match="cannot combine a vector for tiny-llama"):
        a + other


def test_loading_refuses_files_that_are_not_steerlab_vectors(tmp_path):
    with pytest.raises(VectorFileError, match="no such vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"layer.1": [1.0]}))
    with pytest.raises(VectorFileError, match="not a safetensors file"):
        SteeringVector.load(pickled)
    plain = tmp_path / "plain.safetensors"
    save_file({"layer.1": torch.zeros(4)}, str(plain))
    with pytest.raises(VectorFileError, match="a safetensors file without steerlab metadata"):
        SteeringVector.load(plain)
    bad = tmp_path / "bad.safetensors"
    save_file({"layer.1": torch.zeros(4)}, str(bad), metadata={"steerlab": json.dumps({"method": "caa"})})
    with pytest.raises(VectorFileError, match="the metadata lacks model_name, hidden_size, num_layers"):
        SteeringVector.load(bad)


def test_applying_to_a_model_of_another_size_is_refused(tiny_llama):
    v = make_vector(tiny_llama)
    v.meta.hidden_size, v.meta.model_name = 576, "SmolLM2-135M-Instruct"
    v.directions = {1: torch.zeros(576)}
    with pytest.raises(IncompatibleVectorError) as err:
        v.check_compatible(tiny_llama)
    assert str(err.value) == (
        "this vector was built for SmolLM2-135M-Instruct (hidden size 576, 4 layers) and cannot be applied to "
        "tiny-llama (hidden size 32, 4 layers); build a vector on tiny-llama instead"
    )


def test_missing_or_out_of_range_layers_are_refused(tiny_llama):
    v = make_vector(tiny_llama)
    with pytest.raises(IncompatibleVectorError, match=r"layer 7 is out of range: tiny-llama has layers 0\.\.3"):
        v.check_compatible(tiny_llama, [7])
    with pytest.raises(
        IncompatibleVectorError, match=r"the vector has no direction for layer 3; it has layers \[1, 2\]"
    ):
        v.check_compatible(tiny_llama, [3])


def test_other_model_of_same_shape_and_other_task_warn(tiny_llama):
    v = make_vector(tiny_llama)
    twin = tiny_model("llama", seed=5)
    twin.name = "tiny-llama-retrained"
    with pytest.warns(ModelMismatchWarning, match="built for tiny-llama but is applied to tiny-llama-retrained"):
        v.check_compatible(twin)
    with pytest.warns(TaskMismatchWarning, match="built for task 'sentiment' but is applied for task 'toxicity'"):
        v.check_compatible(tiny_llama, task="toxicity")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v.check_compatible(tiny_llama, task="sentiment")
