"""Hostile GGUF control vectors and LM-Steer files: every problem is a VectorFileError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from gguf_files import write_gguf
from steerlab.interop.gguf import import_control_vector
from steerlab.methods.lm_steer import LMSteer
from steerlab.vector import VectorFileError, VectorMeta

HIDDEN = 8


def vec(value: float = 1.0) -> np.ndarray:
    return np.full(HIDDEN, value, np.float32)


GGUF_BAD = [
    (
        {"direction.1": vec()},
        {"hint": "llama", "patch": (b"llama", b"ll\xffma")},
        "GGUF key 'controlvector.model_hint' is not a UTF-8 string",
    ),
    (
        {"direction.1": vec()},
        {"patch": (b"\x0d" + bytes(7) + b"controlvector", b"\x0d" + bytes(7) + b"controlvect\xc3\x28")},
        "GGUF key 'general.architecture' is not a UTF-8 string",
    ),
    ({"direction.0": vec(), "direction.1": vec()}, {}, "tensor 'direction.0': llama.cpp rejects direction.0"),
    (
        {"direction.\u0661\u0665": vec()},
        {},
        "unexpected tensor 'direction.\u0661\u0665' (expected direction.N with N in 0-9 digits)",
    ),
    ({"direction.015": vec(), "direction.15": vec()}, {}, "two tensors for layer 15"),
    ({"direction.2": vec(float("nan"))}, {}, "tensor 'direction.2' has non-finite values (NaN or Inf)"),
    ({"direction.2": vec(float("inf"))}, {}, "tensor 'direction.2' has non-finite values (NaN or Inf)"),
    (
        {"direction.9": vec()},
        {"meta": json.dumps(VectorMeta("m", HIDDEN, 4, "caa").to_json())},
        "tensor 'direction.9' is past the 4 layers the model has",
    ),
    (
        {"direction.2": vec()},
        {"meta": json.dumps(VectorMeta("m", HIDDEN + 1, 4, "caa").to_json())},
        "the steerlab metadata says hidden size 9, the tensors have 8",
    ),
    (
        {"direction.2": vec()},
        {"meta": '{"model_name": "m", "hidden_size": 8, "hidden_size": 8}'},
        "duplicate key 'hidden_size'",
    ),
    (
        {"direction.2": vec()},
        {"meta": json.dumps({**VectorMeta("m", HIDDEN, 4, "caa").to_json(), "task": None})},
        "metadata field 'task': expected a string, got null",
    ),
]


@pytest.mark.parametrize(("tensors", "options", "message"), GGUF_BAD, ids=[b[2][:40] for b in GGUF_BAD])
def test_bad_control_vectors_raise_a_vector_file_error_naming_the_file(tmp_path, tensors, options, message):
    path = str(write_gguf(tmp_path / "v.gguf", tensors, **options))
    with pytest.raises(VectorFileError) as caught:
        import_control_vector(path)
    assert str(caught.value).startswith(path + ":"), caught.value
    assert message in str(caught.value)


def lm_steer_file(path: Path, p1: torch.Tensor, p2: torch.Tensor, **meta_changes) -> str:
    meta = {
        **VectorMeta("m", HIDDEN, 4, "lm_steer", kind="lm_steer", config={"epsilon": 1e-3}).to_json(),
        **meta_changes,
    }
    path.write_bytes(
        safetensors_bytes({"projector1": p1.clone(), "projector2": p2.clone()}, metadata={"steerlab": json.dumps(meta)})
    )
    return str(path)


GOOD = torch.ones(1, HIDDEN, 2)
LM_STEER_BAD = [
    (GOOD, torch.full((1, HIDDEN, 2), float("nan")), {}, "tensor 'projector2' has non-finite values (NaN or Inf)"),
    (GOOD, GOOD, {"config": {"epsilon": True}}, "metadata field 'config.epsilon': expected a positive finite number"),
    (GOOD, GOOD, {"config": {"epsilon": "0.1"}}, "metadata field 'config.epsilon': expected a positive finite number"),
    (GOOD, GOOD, {"config": {"epsilon": -1}}, "metadata field 'config.epsilon': expected a positive finite number"),
    (GOOD, GOOD, {"params": None}, "metadata field 'params': expected an object, got null"),
    (torch.ones(1, HIDDEN, 0), torch.ones(1, HIDDEN, 0), {}, "tensor 'projector1' must be floats of shape"),
    (GOOD.long(), GOOD.long(), {}, "tensor 'projector1' must be floats of shape"),
    (GOOD, torch.ones(1, HIDDEN, 3), {}, "projector1 (1, 8, 2) and projector2 (1, 8, 3) must both be"),
]


@pytest.mark.parametrize(("p1", "p2", "changes", "message"), LM_STEER_BAD, ids=[b[3][:40] for b in LM_STEER_BAD])
def test_bad_lm_steer_files_raise_a_vector_file_error_naming_the_file(tmp_path, p1, p2, changes, message):
    path = lm_steer_file(tmp_path / "s.safetensors", p1, p2, **changes)
    with pytest.raises(VectorFileError) as caught:
        LMSteer.load(path)
    assert str(caught.value).startswith(path + ":"), caught.value
    assert message in str(caught.value)


def test_a_good_lm_steer_file_still_loads(tmp_path):
    assert LMSteer.load(lm_steer_file(tmp_path / "s.safetensors", GOOD, GOOD)).rank == 2
