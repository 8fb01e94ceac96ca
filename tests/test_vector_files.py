"""Hostile and careless vector files: every problem is a VectorFileError naming the file (and field), no
file with a NaN or Inf loads, layer names are ASCII digits without duplicates; written files respect the
umask and a write killed half-way leaves nothing behind once the next write runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from steerlab.files import TEMP_SUFFIX, write_file
from steerlab.meta import META_TYPES, Pick, Recommendation
from steerlab.vector import SteeringVector, VectorFileError, VectorMeta

HIDDEN = 8


def meta(**changes) -> dict:
    return {**VectorMeta(model_name="m", hidden_size=HIDDEN, num_layers=4, method="caa").to_json(), **changes}


def write_raw(path, tensors: dict, header: str | dict) -> str:
    text = header if isinstance(header, str) else json.dumps(header)
    path.write_bytes(safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata={"steerlab": text}))
    return str(path)


def ones(value: float = 1.0) -> torch.Tensor:
    return torch.full((HIDDEN,), value)


BAD = [
    (
        {"layer.1": ones(float("nan"))},
        meta(),
        "tensor 'layer.1' has non-finite values (NaN or Inf); refusing to load it",
    ),
    (
        {"layer.1": ones(float("inf"))},
        meta(),
        "tensor 'layer.1' has non-finite values (NaN or Inf); refusing to load it",
    ),
    ({"layer.1": ones()}, meta(model_name=None), "metadata field 'model_name': expected a string, got null"),
    ({"layer.1": ones()}, meta(hidden_size="8"), "metadata field 'hidden_size': expected an integer, got a string"),
    ({"layer.1": ones()}, meta(hidden_size=True), "metadata field 'hidden_size': expected an integer, got a boolean"),
    ({"layer.1": ones()}, meta(num_layers=0), "metadata hidden_size and num_layers must be at least 1"),
    ({"layer.1": ones()}, meta(params=[1]), "metadata field 'params': expected an object, got an array"),
    (
        {"layer.1": ones()},
        meta(recommended={"multiplier": "x"}),
        "metadata field 'recommended.multiplier': expected a finite number, got a string",
    ),
    (
        {"layer.1": ones()},
        meta(recommended={"multiplier": 1e39}),
        "metadata field 'recommended.multiplier': expected a finite number, got the number 1e+39",
    ),
    (
        {"layer.1": ones()},
        meta(recommended={"layer": True}),
        "metadata field 'recommended.layer': expected an integer, got a boolean",
    ),
    (
        {"layer.1": ones()},
        meta(recommended={"layer": 9}),
        "metadata field 'recommended.layer': 9 is not a layer of a 4-layer model",
    ),
    (
        {"layer.1": ones()},
        meta(residual_norms={"1": -2}),
        "metadata field 'residual_norms': expected layer numbers mapped to norms >= 0, got '1': -2",
    ),
    (
        {"layer.1": ones()},
        json.dumps(meta())[:-1] + ', "recommended": {"multiplier": NaN}}',
        "NaN is not allowed; numbers must be finite",
    ),
    ({"layer.1": ones()}, json.dumps(meta())[:-1] + ', "method": "pca"}', "duplicate key 'method'"),
    (
        {"layer.1": ones()},
        json.dumps(meta())[:-1] + ', "params": ' + "[" * 5000 + "]" * 5000 + "}",
        "nested too deeply",
    ),
    ({"layer.1": ones()}, "[1, 2]", "the steerlab metadata must be a JSON object"),
    ({"layer.1": ones()}, '{"model_name": "m",', "not valid JSON"),
    (
        {"layer.\u0661\u0665": ones()},
        meta(),
        "unexpected tensor 'layer.\u0661\u0665' (expected layer.N with N in 0-9 digits)",
    ),
    (
        {"layer.015": ones(), "layer.15": ones()},
        meta(num_layers=30),
        "tensors 'layer.015' and 'layer.15' both name layer 15",
    ),
    ({"layer.7": ones()}, meta(), "tensor 'layer.7': layer 7 is out of range for a 4-layer model"),
    ({"layer.1": torch.ones(HIDDEN + 1)}, meta(), "tensor 'layer.1' has shape (9,) and dtype float32; expected floats"),
    ({"layer.1": torch.ones(HIDDEN, dtype=torch.int64)}, meta(), "tensor 'layer.1' has shape (8,) and dtype int64"),
    ({}, meta(), "the file holds no layer.N tensors"),
]


@pytest.mark.parametrize(("tensors", "header", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_vector_files_raise_a_vector_file_error_naming_the_file(tmp_path, tensors, header, message):
    path = write_raw(tmp_path / "v.safetensors", tensors, header)
    with pytest.raises(VectorFileError) as caught:
        SteeringVector.load(path)
    assert str(caught.value).startswith(path + ":"), caught.value
    assert message in str(caught.value)


WRONG_TYPES = [None, 3, 2.5, True, "x", [], {}]


@pytest.mark.parametrize("field", sorted(META_TYPES))
def test_every_metadata_field_refuses_every_other_json_type(tmp_path, field):
    """Each field given each JSON type it does not take (null only where the field is never null) is refused with
    an error naming the file and the field; a missed check would hand a wrong type to the code that reads it."""
    default = meta().get(field)  # absent: a field written only when set (condition)
    for i, value in enumerate(WRONG_TYPES):
        if (isinstance(value, META_TYPES[field]) and not isinstance(value, bool)) or (
            value is None and default is None
        ):
            continue
        path = write_raw(tmp_path / f"{i}.safetensors", {"layer.1": ones()}, meta(**{field: value}))
        with pytest.raises(VectorFileError) as caught:
            SteeringVector.load(path)
        assert str(caught.value).startswith(f"{path}: metadata field '{field}'") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("multiplier", [True, "x", [], {}, 1e39]),  # null means "not set"
        ("layer", [True, "x", [], {}, 2.5, 1e39, 9, -1]),
    ],
)
def test_a_recommendation_of_the_wrong_type_or_range_is_refused(tmp_path, key, values):
    for i, value in enumerate(values):
        path = write_raw(tmp_path / f"{i}.safetensors", {"layer.1": ones()}, meta(recommended={key: value}))
        with pytest.raises(VectorFileError) as caught:
            SteeringVector.load(path)
        assert str(caught.value).startswith(f"{path}: metadata field 'recommended.{key}'"), caught.value


def test_metadata_with_a_bom_and_unknown_fields_loads(tmp_path):
    path = write_raw(tmp_path / "v.safetensors", {"layer.2": ones()}, "\ufeff" + json.dumps(meta(newer_field=1)))
    assert SteeringVector.load(path).layers == [2]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = SteeringVector({1: ones()}, VectorMeta("m", HIDDEN, 4, "caa")).save(tmp_path / "v.safetensors")
        write_file(tmp_path / "plot.png", b"png")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777, (tmp_path / "plot.png").stat().st_mode & 0o777) == (mode, mode)


def test_a_write_killed_half_way_leaves_nothing_after_the_next_write(tmp_path):
    target = tmp_path / "v.safetensors"
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from steerlab.files import write_file
        os.fsync = lambda fd: (print("writing", flush=True), time.sleep(600))
        write_file(Path({str(target)!r}), b"x" * 1_000_000)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(left) == 1 and left[0].stat().st_size == 1_000_000 and not target.exists()
    write_file(target, b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]
    assert target.read_bytes() == b"done"


def test_a_temporary_file_of_a_running_writer_is_left_alone(tmp_path):
    target = tmp_path / "v.safetensors"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".{target.name}.{sleeper.pid}.abc{TEMP_SUFFIX}"
        busy.write_bytes(b"in progress")
        time.sleep(0.05)
        write_file(target, b"done")
        assert busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_what_we_write_our_readers_accept(tmp_path):
    pick = Pick(1, 2.0, 2.0, fluency=float("nan"))
    meta = VectorMeta(
        "m", HIDDEN, 4, "caa", recommended=Recommendation(1, 2.0, up=pick), diagnostics={"auroc": float("inf")}
    )
    path = SteeringVector({1: ones()}, meta).save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path).meta
    assert (back.recommended.up.fluency, back.diagnostics["auroc"]) == (None, None)
    assert back.recommended == Recommendation(1, 2.0, up=Pick(1, 2.0, 2.0))
    with pytest.raises(VectorFileError, match=r"tensor 'layer\.1' has non-finite values"):
        SteeringVector({1: ones(float("nan"))}, meta).save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def test_every_metadata_field_has_a_checked_type():
    """A field added to VectorMeta but not to META_TYPES would be dropped silently on load."""
    from dataclasses import fields

    assert {f.name for f in fields(VectorMeta)} == set(META_TYPES)
