"""One error family: every error steerlab raises on purpose derives from SteerlabError, keeps its builtin parent,
and is exported from `steerlab`; the command line prints one line for those and calls anything else a bug."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import steerlab
from steerlab import SteerlabError, TaskError, VectorFileError
from steerlab.cli import main
from steerlab.conditional import Condition
from steerlab.evaluation.tasks import get_task, load_task_file
from steerlab.methods.lm_steer import LMSteer
from steerlab.steers import load_steer
from steerlab.vector import SteeringVector, VectorMeta

SRC = Path(steerlab.__file__).parent
PRIVATE = {"_StopForward", "_Stop"}  # control flow inside a forward pass, never raised to a caller
SERVER = {"ApiError"}  # the HTTP server's response type (status + message), not a library refusal


def exception_classes() -> dict[str, tuple[str, str]]:
    """Every class in src/steerlab with an exception among its bases: {class: (module, first base)}."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    found[node.name] = (module, bases[0])
    return found


def test_every_error_class_is_of_the_family_and_exported():
    classes = exception_classes()
    assert len(classes) > 20
    for name, (module, _) in classes.items():
        if name in PRIVATE | SERVER or name == "SteerlabError":
            continue
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, SteerlabError), f"{module}.{name} does not derive from SteerlabError"
        if module.startswith("steerlab.cli"):
            continue  # the command line sits above the package; its error is not the library's
        assert getattr(steerlab, name, None) is cls and name in steerlab.__all__, f"steerlab does not export {name}"


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("VectorFileError", ValueError),
        ("DatasetError", ValueError),
        ("ConfigError", ValueError),
        ("TaskError", ValueError),
        ("SteeringError", ValueError),
        ("StrengthError", ValueError),
        ("EvaluationError", ValueError),
        ("IncompatibleVectorError", ValueError),
        ("UsageError", ValueError),
        ("ModelLoadError", RuntimeError),
        ("InsufficientMemoryError", RuntimeError),
        ("SteeringRequestError", ValueError),
        ("SteerNotFound", LookupError),
        ("VLLMIncompatible", RuntimeError),
        ("OutputExistsError", FileExistsError),
        ("MissingFileError", FileNotFoundError),
    ],
)
def test_each_error_keeps_its_builtin_parent(name, builtin):
    """`except ValueError` (and the like) written before the family existed still catches each error."""
    cls = getattr(steerlab, name)
    assert issubclass(cls, SteerlabError) and issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


def test_the_cli_calls_a_non_library_exception_a_bug(monkeypatch, capsys):
    """A library error is one line; anything else is one line ending "this is a bug, rerun with --debug", and
    --debug shows the traceback (the exception propagates)."""
    from steerlab.cli import vector

    def broken(args):
        raise KeyError("layer")

    monkeypatch.setattr(vector, "cmd_info", broken)
    assert main(["vector", "info", "x.safetensors"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: KeyError: 'layer'; this is a bug, rerun with --debug"]
    with pytest.raises(KeyError):
        main(["--debug", "vector", "info", "x.safetensors"])


def test_the_cli_prints_a_library_error_as_one_line(monkeypatch, capsys):
    from steerlab.cli import vector

    def refuses(args):
        raise steerlab.VectorFileError("x.safetensors: not a safetensors file\n(detail)")

    monkeypatch.setattr(vector, "cmd_info", refuses)
    assert main(["vector", "info", "x.safetensors"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: x.safetensors: not a safetensors file (detail)"]


# ---- readers: each case becomes the library's error, naming the file -------------------------------------
META = {"model_name": "m", "hidden_size": 4, "num_layers": 4, "method": "caa"}


def safetensors_file(path: Path, tensors: dict, meta: dict) -> Path:
    path.write_bytes(safetensors_bytes(tensors, metadata={"steerlab": json.dumps(meta)}))
    return path


def refused(read, path, error=SteerlabError) -> str:
    """`read(path)` raises the library's `error`, one line that starts with the file's path; its message."""
    with pytest.raises(error) as caught:
        read(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def test_a_float8_tensor_is_refused_naming_the_file(tmp_path):
    f8 = torch.ones(4).to(torch.float8_e4m3fn)
    vector = safetensors_file(tmp_path / "v.safetensors", {"layer.1": f8}, META)
    assert "tensor 'layer.1' is float8_e4m3fn; steerlab reads float32" in refused(load_steer, vector, VectorFileError)
    lm_meta = {**META, "method": "lm_steer", "kind": "lm_steer", "config": {"epsilon": 1e-3}}
    lm_steer = safetensors_file(
        tmp_path / "s.safetensors",
        {"projector1": torch.ones(1, 4, 2).to(torch.float8_e4m3fn), "projector2": torch.ones(1, 4, 2)},
        lm_meta,
    )
    assert "tensor 'projector1' is float8_e4m3fn" in refused(LMSteer.load, lm_steer, VectorFileError)


@pytest.mark.parametrize(
    "meta",
    [
        {**META, "kind": "condition", "condition": {"threshold": 0.1, "comparison": ">="}},  # today's layout
        {**META, "method": "condition", "params": {"threshold": 0.1}, "recommended": {"multiplier": 2.0}},  # format 1
    ],
)
def test_a_condition_without_its_layer_is_refused_naming_the_file(tmp_path, meta):
    path = safetensors_file(tmp_path / "c.safetensors", {"layer.1": torch.ones(4)}, meta)
    for read in (load_steer, Condition.load):
        assert "metadata field 'condition': a condition needs a layer and a threshold" in refused(read, path)


def test_a_condition_without_its_layer_is_one_line_in_generate(tmp_path, capsys):
    vector = SteeringVector({1: torch.ones(4)}, VectorMeta("m", 4, 4, "caa")).save(tmp_path / "v.safetensors")
    condition = safetensors_file(
        tmp_path / "c.safetensors",
        {"layer.1": torch.ones(4)},
        {**META, "kind": "condition", "condition": {"threshold": 0.1}},
    )
    assert main(["generate", "--vector", str(vector), "--condition", str(condition), "--prompt", "hi"]) == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {condition}: metadata field 'condition'")
    )


def test_deeply_nested_json_in_a_steer_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"steerlab": ' + "[" * 5000 + "]" * 5000 + "}")
    assert "nested too deeply" in refused(load_steer, path, VectorFileError)


def test_task_files_with_names_too_long_are_refused_naming_the_file(tmp_path):
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"name": "t", "kind": "ab", "train": "x" * 300 + ".json", "test": "t.json"}))
    assert "key 'train': the file 'xxx" in refused(load_task_file, task, TaskError)
    long_task = tmp_path / ("y" * 300 + ".yaml")
    with pytest.raises(TaskError, match=r"yyyy\.yaml: the task file cannot be read \(File name too long\)"):
        get_task(str(long_task))


@pytest.mark.parametrize("missing", ["name", "kind", "train", "test"])
def test_a_task_file_missing_a_key_names_the_key_and_the_file(tmp_path, missing):
    fields = {"name": "t", "kind": "ab", "train": "t.json", "test": "t.json"}
    del fields[missing]
    task = tmp_path / "task.json"
    task.write_text(json.dumps(fields))
    message = refused(load_task_file, task, TaskError)
    assert f"missing key '{missing}'; a task file needs name, kind, train, test" in message
    assert "__init__" not in message


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ("hello\nworld\n".encode("utf-16"), ":1: not UTF-8 (byte 0xff at offset 0); it is UTF-16"),
        ("hi\ncaf\u00e9\n".encode("latin-1"), ":2: not UTF-8 (byte 0xe9 at offset 6)"),
    ],
)
def test_prompts_files_in_other_encodings_name_the_file_and_the_option(tmp_path, capsys, data, where):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(data)
    vector = SteeringVector({1: torch.ones(4)}, VectorMeta("m", 4, 4, "caa")).save(tmp_path / "v.safetensors")
    assert main(["generate", "--vector", str(vector), "--prompts-file", str(prompts)]) == 1
    assert capsys.readouterr().err.strip() == f"error: --prompts-file {prompts}{where}" + (
        " (it starts with a UTF-16 byte-order mark): save the file as UTF-8"
        if "UTF-16" in where
        else "; save the file as UTF-8"
    )
    argv = ["vector", "condition", "--vector", str(vector), "--steer-prompts", str(prompts)]
    assert main([*argv, "--keep-prompts", str(prompts), "--out", str(tmp_path / "c.safetensors")]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: --steer-prompts {prompts}{where}")


def test_vector_info_json_is_strict_json_when_a_norm_overflows_float32(tmp_path, capsys):
    path = SteeringVector({1: torch.full((4,), 3e38)}, VectorMeta("m", 4, 4, "caa")).save(tmp_path / "v.safetensors")
    assert main(["vector", "info", "--json", str(path)]) == 0

    def no_constants(name):
        raise AssertionError(f"not JSON: {name}")

    info = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert info["norms"]["1"] == pytest.approx(6e38)


# ---- misuses: refused before any model work, with the fix in the message ---------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Every check below must run before the model loads: loading it fails the test."""
    import steerlab.models

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the misuse was refused")

    monkeypatch.setattr(steerlab.models, "load_model", load_model)


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def steers(tmp_path):
    """A vector, a condition and an LM-Steer file of a 4-layer model of hidden size 4."""
    meta = VectorMeta("m", 4, 4, "caa")
    vector = SteeringVector({1: torch.ones(4)}, meta).save(tmp_path / "v.safetensors")
    condition = Condition(torch.ones(4), 1, 0.1, ">=", {}, VectorMeta("m", 4, 4, "condition", kind="condition"))
    condition_path = condition.save(tmp_path / "c.safetensors")
    lm_meta = VectorMeta("m", 4, 4, "lm_steer", kind="lm_steer", config={"epsilon": 1e-3})
    lm_steer = LMSteer(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), lm_meta).save(tmp_path / "s.safetensors")
    return {"vector": str(vector), "condition": str(condition_path), "lm_steer": str(lm_steer), "dir": tmp_path}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["generate", "--vector", "{condition}", "--prompt", "hi"],
            "error: a condition file decides where a vector applies: give it as --condition beside a --vector",
        ),
        (
            ["eval", "--vector", "{condition}", "--task", "sentiment"],
            "error: --vector {condition} is a condition file: it decides where a vector applies and steers nothing",
        ),
        (
            ["vector", "export-gguf", "{condition}", "--out", "{dir}/c.gguf"],
            "error: {condition}: a steer of kind 'condition', not a steering vector",
        ),
        (
            ["generate", "--vector", "{lm_steer}", "--operator", "ablate", "--prompt", "hi"],
            "error: --operator applies to vectors; a steer of kind 'lm_steer' has none: drop --operator",
        ),
        (
            ["eval", "--vector", "{lm_steer}", "--operator", "ablate", "--task", "sentiment"],
            "error: --operator applies to vectors; {lm_steer} is a steer of kind 'lm_steer': drop --operator",
        ),
        (
            [
                "vector",
                "build",
                "--method",
                "lm_steer",
                "--layers",
                "15",
                "--positive",
                "a",
                "--negative",
                "b",
                "--out",
                "{dir}/x.safetensors",
            ],
            "error: --layers does not apply to --method lm_steer: it has no layers to choose (it transforms the final "
            "hidden state); drop --layers",
        ),
        (
            ["eval", "--method", "lm_steer", "--layers", "1", "--task", "sentiment"],
            "error: --layers does not apply to --method lm_steer: it has no layers to choose; drop --layers",
        ),
        (
            ["eval", "--method", "prompt", "--operator", "ablate", "--task", "sentiment"],
            "error: --operator applies to vectors; --method prompt makes a steer of kind 'prompt': drop --operator",
        ),
        (["serve", "--port", "99999"], "error: --port must be in 0..65535, got 99999"),
        (["serve", "--max-tokens", "0"], "error: --max-tokens must be at least 1, got 0"),
        (
            ["vector", "build", "--positive", "a", "--negative", "b", "--out", "{vector}/x.safetensors"],
            "error: --out {vector}/x.safetensors: {vector} is not a folder",
        ),
    ],
)
def test_misuses_are_refused_before_the_model_loads(steers, no_model, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("STEERLAB_DATA", str(steers["dir"]))
    assert main([a.format(**steers) for a in argv]) == 1
    assert last_error(capsys).startswith(message.format(**steers))


def test_threads_0_is_refused(steers, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["generate", "--vector", steers["vector"], "--prompt", "hi", "--threads", "0"])
    assert caught.value.code == 2
    assert last_error(capsys).endswith("error: argument --threads: must be at least 1, got 0")


def test_an_unwritable_out_is_refused_naming_it_not_a_temporary_file(steers, no_model, capsys, monkeypatch):
    import os

    real_access = os.access
    locked = steers["dir"] / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    out = locked / "x.safetensors"
    assert main(["vector", "build", "--positive", "a", "--negative", "b", "--out", str(out)]) == 1
    assert last_error(capsys) == f"error: --out {out}: cannot write in {locked} (permission denied or read-only)"


def test_ab_items_that_cannot_be_swapped_are_refused_before_the_vector_is_built(steers, no_model, capsys):
    folder = steers["dir"]
    item = {"answer_matching_behavior": "(A)Yes", "answer_not_matching_behavior": "(B)No"}
    train = [{"question": f"Train {i}?\n(A)Yes\n(B)No", **item} for i in range(4)]
    test = [{"question": f"Test {i}?\n(A)Yes\n(B)No", **item} for i in range(4)]
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    task = folder / "task.json"
    task.write_text(json.dumps({"name": "yes", "kind": "ab", "train": "train.json", "test": "test.json"}))
    assert main(["sweep", "--task", str(task), "--out", str(folder / "sweep")]) == 1
    message = last_error(capsys)
    assert message.startswith("error: task 'yes' (val): item 1: cannot swap the choices of 'Test 0?"), message
    assert "(--no-swap)" in message
