"""llama.cpp control-vector files: exact round trips, the on-disk layout, clear errors, parity with repeng."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from conftest import repeng_python
from gguf_files import write_gguf
from steerlab.interop.gguf import export_control_vector, import_control_vector
from steerlab.vector import SteeringVector, VectorFileError, VectorMeta

HIDDEN = 8
BRIDGE = Path(__file__).with_name("repeng_bridge.py")


def make_vector(layers=(1, 3, 5), model_type="llama", seed=0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    meta = VectorMeta(
        model_name="tiny-llama",
        hidden_size=HIDDEN,
        num_layers=6,
        method="caa",
        model_fingerprint="abc123",
        model_type=model_type,
        task="sentiment",
    )
    return SteeringVector({layer: torch.randn(HIDDEN, generator=gen) for layer in layers}, meta)


def assert_same_directions(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for layer in expected:
        assert torch.equal(torch.as_tensor(got[layer]), torch.as_tensor(expected[layer])), layer


# ---- round trip and layout ------------------------------------------------------------------------
def test_round_trip_is_exact_and_keeps_identity(tmp_path):
    vector = make_vector()
    export_control_vector(vector, tmp_path / "v.gguf")
    back = import_control_vector(tmp_path / "v.gguf")
    assert_same_directions(back.directions, vector.directions)
    assert back.meta.method == "llamacpp-import"
    assert back.meta.config["source_method"] == "caa"
    assert (back.meta.model_name, back.meta.hidden_size, back.meta.num_layers) == ("tiny-llama", HIDDEN, 6)
    assert (back.meta.model_fingerprint, back.meta.model_type, back.meta.task) == ("abc123", "llama", "sentiment")


def test_file_layout_is_what_llamacpp_reads(tmp_path):
    export_control_vector(make_vector(layers=(2, 7)), tmp_path / "v.gguf")
    reader = GGUFReader(tmp_path / "v.gguf")
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    # direction.N is added to the output of block N (0-based), so N is steerlab's layer index unchanged.
    assert [t.name for t in reader.tensors] == ["direction.2", "direction.7"]
    assert all(t.tensor_type.name == "F32" and list(t.shape) == [HIDDEN] for t in reader.tensors)


def test_layer_0_is_refused_or_skipped(tmp_path):
    vector = make_vector(layers=(0, 1))
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{tmp_path / 'v.gguf'}: llama.cpp cannot steer the output of block 0 (it rejects a direction.0 tensor); "
            "pass skip_layer_0=True to export the other layers"
        ),
    ):
        export_control_vector(vector, tmp_path / "v.gguf")
    export_control_vector(vector, tmp_path / "v.gguf", skip_layer_0=True)
    assert import_control_vector(tmp_path / "v.gguf").layers == [1]


def test_export_refuses_overwrite_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "v.gguf"
    export_control_vector(make_vector(seed=1), path)
    with pytest.raises(FileExistsError, match="already exists"):
        export_control_vector(make_vector(seed=2), path)
    assert_same_directions(import_control_vector(path).directions, make_vector(seed=1).directions)
    export_control_vector(make_vector(seed=2), path, overwrite=True)
    assert_same_directions(import_control_vector(path).directions, make_vector(seed=2).directions)
    assert os.listdir(tmp_path) == ["v.gguf"]


def test_model_hint_is_needed_when_the_vector_has_no_model_type(tmp_path):
    with pytest.raises(ValueError, match="pass model_hint"):
        export_control_vector(make_vector(model_type=""), tmp_path / "v.gguf")
    export_control_vector(make_vector(model_type=""), tmp_path / "v.gguf", model_hint="qwen2")
    assert import_control_vector(tmp_path / "v.gguf").meta.model_type == "qwen2"


def test_foreign_file_takes_sizes_from_tensors_and_name_from_caller(tmp_path):
    arrays = {"direction.4": np.arange(HIDDEN, dtype=np.float32), "direction.9": -np.ones(HIDDEN, np.float32)}
    path = write_gguf(tmp_path / "foreign.gguf", arrays, hint="mistral")
    vector = import_control_vector(path, model_name="my-mistral")
    assert (vector.meta.model_name, vector.meta.model_type, vector.meta.hidden_size) == (
        "my-mistral",
        "mistral",
        HIDDEN,
    )
    assert vector.meta.num_layers == 10  # a lower bound: the highest layer + 1
    assert_same_directions(vector.directions, {4: torch.arange(HIDDEN, dtype=torch.float32), 9: -torch.ones(HIDDEN)})


# ---- errors ---------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(VectorFileError, match=re.escape(f"{path}: no such control-vector file")):
        import_control_vector(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("hello")
    with pytest.raises(VectorFileError, match=re.escape(f"{path}: not a GGUF file (")):
        import_control_vector(path)


def test_a_model_is_not_a_control_vector(tmp_path):
    path = write_gguf(tmp_path / "model.gguf", {"token_embd.weight": np.zeros((4, HIDDEN), np.float32)}, arch="llama")
    with pytest.raises(
        VectorFileError,
        match=re.escape(f"{path}: general.architecture is 'llama', not 'controlvector'; not a control vector"),
    ):
        import_control_vector(path)


def test_wrong_tensor_name(tmp_path):
    path = write_gguf(tmp_path / "v.gguf", {"layer.3": np.zeros(HIDDEN, np.float32)})
    with pytest.raises(
        VectorFileError,
        match=re.escape(f"{path}: unexpected tensor 'layer.3' (expected direction.N with N in 0-9 digits)"),
    ):
        import_control_vector(path)


def test_non_f32_tensor(tmp_path):
    path = write_gguf(tmp_path / "v.gguf", {"direction.3": np.zeros(HIDDEN, np.float16)})
    with pytest.raises(VectorFileError, match=re.escape(f"{path}: tensor 'direction.3' is F16, expected F32")):
        import_control_vector(path)


def test_widths_must_agree(tmp_path):
    arrays = {"direction.1": np.zeros(HIDDEN, np.float32), "direction.2": np.zeros(HIDDEN + 1, np.float32)}
    path = write_gguf(tmp_path / "v.gguf", arrays)
    with pytest.raises(VectorFileError, match=re.escape(f"{path}: direction tensors differ in width ([8, 9])")):
        import_control_vector(path)


def test_no_direction_tensors(tmp_path):
    path = write_gguf(tmp_path / "v.gguf", {})
    with pytest.raises(VectorFileError, match=re.escape(f"{path}: a control-vector file without direction tensors")):
        import_control_vector(path)


# ---- parity with repeng (run in its own interpreter: repeng 0.4.0 needs numpy<2) ------------------
def run_bridge(*args: object) -> None:
    python = repeng_python()
    assert python is not None  # the `repeng` marker skipped the test otherwise
    done = subprocess.run([python, str(BRIDGE), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.repeng
def test_repeng_export_imports_to_the_same_directions(tmp_path):
    vector = make_vector(layers=(1, 2, 5))
    np.savez(tmp_path / "in.npz", **{f"layer_{k}": v.numpy() for k, v in vector.directions.items()})
    run_bridge("export", tmp_path / "in.npz", "llama", tmp_path / "repeng.gguf")
    back = import_control_vector(tmp_path / "repeng.gguf", model_name="tiny-llama")
    assert_same_directions(back.directions, vector.directions)
    assert (back.meta.model_type, back.meta.hidden_size, back.meta.model_name) == ("llama", HIDDEN, "tiny-llama")


@pytest.mark.repeng
def test_our_export_imports_into_repeng_with_the_same_directions(tmp_path):
    vector = make_vector(layers=(1, 2, 5))
    export_control_vector(vector, tmp_path / "ours.gguf")
    run_bridge("import", tmp_path / "ours.gguf", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as arrays:
        assert str(arrays["model_type"]) == "llama"
        got = {int(k.split("_")[1]): torch.from_numpy(arrays[k]) for k in arrays.files if k.startswith("layer_")}
    assert_same_directions(dict(sorted(got.items())), vector.directions)
