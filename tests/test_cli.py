"""The command line on a tiny saved model: build, info, generate; errors are one line without a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.cli import main
from steerlab.conditional import Condition
from steerlab.data import pairs_from_texts
from steerlab.methods import METHODS
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model


def test_build_info_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"prompt": "Day?", "positive": "Good day.", "negative": "Bad day."}\n'
        '{"prompt": "Food?", "positive": "Tasty.", "negative": "Awful."}\n'
    )
    assert (
        main(
            [
                "vector",
                "build",
                "--model",
                str(model_dir),
                "--data",
                str(pairs),
                "--layers",
                "1,2",
                "--task",
                "sentiment",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    vector = SteeringVector.load(out)
    assert vector.layers == [1, 2] and vector.meta.task == "sentiment" and vector.meta.dataset["pairs"] == 2
    capsys.readouterr()
    assert main(["vector", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "caa" and info["layers"] == [1, 2] and info["dataset"]["name"] == "pairs.jsonl"
    assert (
        main(
            [
                "generate",
                "--model",
                str(model_dir),
                "--vector",
                str(out),
                "--multiplier",
                "8",
                "--layers",
                "1",
                "--prompt",
                "Hi",
                "--prompt",
                "Tell me more",
                "--orig",
                "--max-new-tokens",
                "5",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Hi", "Tell me more"] and all(r["original"] is not None for r in rows)


def test_inline_one_shot_pair(model_dir, tmp_path):
    out = tmp_path / "one.safetensors"
    assert (
        main(
            [
                "vector",
                "build",
                "--model",
                str(model_dir),
                "--positive",
                "I love it",
                "--negative",
                "I hate it",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert SteeringVector.load(out).meta.dataset["pairs"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["vector", "build", "--data", "missing.jsonl", "--out", "x.safetensors"],
            "error: missing.jsonl: no such file",
        ),
        (
            ["vector", "build", "--positive", "a", "--out", "x.safetensors"],
            "error: inline: 1 positive and 0 negative texts",
        ),
        (
            ["vector", "build", "--data", "d.jsonl", "--set", "bacth_size=2", "--out", "x.safetensors"],
            "error: config: unknown key 'bacth_size' for CAAConfig; allowed keys: layers, batch_size, batch_tokens",
        ),
        (
            ["vector", "build", "--method", "magic", "--data", "d.jsonl", "--out", "x.safetensors"],
            "error: unknown method 'magic'; available: caa, pca, prompt, vector_prompt",
        ),
        (["vector", "info", "nope.safetensors"], "error: nope.safetensors: no such steer file"),
        (
            [
                "vector",
                "condition",
                "--vector",
                "v.safetensors",
                "--steer-prompts",
                "gone.txt",
                "--keep-prompts",
                "gone.txt",
                "--out",
                "c.safetensors",
            ],
            "error: --steer-prompts gone.txt: no such file",
        ),
        (
            [
                "generate",
                "--vector",
                "a.safetensors",
                "--vector",
                "b.safetensors",
                "--multiplier",
                "1",
                "--prompt",
                "x",
            ],
            "error: 1 --multiplier for 2 --vector; give one per vector",
        ),
        (
            ["generate", "--layers", "x", "--prompt", "hi"],
            "error: --layers x: expected 15, 12,15, 4-8, all, or with weights 12:0.5,15:1",
        ),
        # weights only apply when steering; building at "12:0.5" used to turn silently into [12]
        (
            ["vector", "build", "--data", "d.jsonl", "--layers", "1:0.5", "--out", "x.safetensors"],
            "error: --layers 1:0.5: weights (layer:weight) only apply when steering; give layers like 12,15",
        ),
        (
            ["vector", "merge", "v.safetensors", "v.safetensors", "--weights", "1", "--out", "m.safetensors"],
            "error: 1 --weights for 2 files; give one per file",
        ),
        # checked before the model loads: the model path does not even exist
        (
            ["generate", "--vector", "v.safetensors", "--layers", "3", "--prompt", "x", "--model", "no/such/model"],
            "error: --layers: the vector has no direction for layer 3; it has layers [1]",
        ),
        (
            ["vector", "build", "--data", "d.jsonl", "--out", "v.safetensors", "--model", "no/such/model"],
            "error: v.safetensors already exists; choose another --out or pass --overwrite",
        ),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"positive": "a", "negative": "b"}\n')
    lm = tiny_model("llama")
    SteeringVector({1: torch.ones(lm.hidden_size)}, VectorMeta.for_model(lm, "caa")).save(tmp_path / "v.safetensors")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message) and "Traceback" not in "\n".join(err)


def test_every_option_shows_its_default_in_help(capsys):
    from steerlab.cli import build_parser

    parser = build_parser()
    groups = next(a for a in parser._actions if a.dest == "command").choices
    vector_groups = next(a for a in groups["vector"]._actions if a.dest == "vector_command").choices
    for name, sub in list(groups.items()) + list(vector_groups.items()):
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS==") and action.help:
                shown = sub.formatter_class(prog="x")._get_help_string(action)
                assert "default" in shown, (name, action.option_strings)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "tokens to generate per prompt (default: 64)" in " ".join(capsys.readouterr().out.split())


def test_existing_output_is_not_overwritten(model_dir, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    out.write_bytes(b"precious")
    assert (
        main(["vector", "build", "--model", str(model_dir), "--positive", "a", "--negative", "b", "--out", str(out)])
        == 1
    )
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_export_import_and_merge_commands(model_dir, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out, pos in ((a, "I love it"), (b, "So calm")):
        assert (
            main(
                [
                    "vector",
                    "build",
                    "--model",
                    str(model_dir),
                    "--positive",
                    pos,
                    "--negative",
                    "meh",
                    "--layers",
                    "1,2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    gguf, back = tmp_path / "a.gguf", tmp_path / "back.safetensors"
    assert main(["vector", "export-gguf", str(a), "--out", str(gguf)]) == 0
    assert main(["vector", "import-gguf", str(gguf), "--out", str(back)]) == 0
    va, vb = SteeringVector.load(a), SteeringVector.load(b)
    assert all(torch.equal(SteeringVector.load(back).directions[k], va.directions[k]) for k in va.layers)
    merged = tmp_path / "m.safetensors"
    assert main(["vector", "merge", str(a), str(b), "--weights", "1,-0.5", "--out", str(merged)]) == 0
    expected = va.directions[2] - 0.5 * vb.directions[2]
    torch.testing.assert_close(SteeringVector.load(merged).directions[2], expected)


def test_lm_steer_file_through_build_info_and_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "lm.safetensors"
    assert (
        main(
            [
                "vector",
                "build",
                "--method",
                "lm_steer",
                "--model",
                str(model_dir),
                "--positive",
                "Good day.",
                "--negative",
                "Bad day.",
                "--set",
                "steps=2",
                "--set",
                "rank=4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["vector", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "lm_steer"
    assert (
        main(
            [
                "generate",
                "--model",
                str(model_dir),
                "--vector",
                str(out),
                "--multiplier",
                "-1",
                "--prompt",
                "Hi",
                "--orig",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["prompt"] == "Hi" and row["original"] is not None


def test_bipo_through_build_and_info_and_its_bad_settings_before_the_model_loads(model_dir, tmp_path, capsys):
    out = tmp_path / "bipo.safetensors"
    build = ["vector", "build", "--method", "bipo", "--model", str(model_dir), "--layers", "1", "--out", str(out)]
    pairs = [
        "--positive",
        "Good day.",
        "--negative",
        "Bad day.",
        "--positive",
        "Nice food.",
        "--negative",
        "Awful food.",
    ]
    assert main([*build, *pairs, "--set", "epochs=0"]) == 1
    err = capsys.readouterr().err
    assert err == "error: config: epochs must be at least 1, got 0\n" and "loading" not in err
    assert main([*build, *pairs, "--set", "epochs=2"]) == 0
    capsys.readouterr()
    assert main(["vector", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["method"], info["layers"]) == ("vector", "bipo", [1])
    assert len(info["fit_stats"]["loss_train"]) == info["fit_stats"]["epochs_run"] <= 2


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("caa", {"layers": [1]}),
        ("pca", {"layers": [1]}),
        ("prompt", {"instruction": "Be kind."}),
        ("vector_prompt", {"instruction": "Be kind.", "layers": [1]}),
        ("lm_steer", {"steps": 5, "rank": 4}),
        ("bipo", {"layers": [1], "epochs": 2}),
    ],
)
def test_progress_bar_total_is_what_fit_reports(name, overrides):
    lm = tiny_model("llama")
    data = pairs_from_texts(["Good day.", "Nice food.", "Great."], ["Bad day.", "Awful food.", "Poor."])
    method = METHODS[name]
    config = method.config_cls(**overrides)
    reported = []
    method.fit(lm, data, config, progress=reported.append)
    assert sum(reported) == method.progress_total(len(data), config)


def test_prompt_steer_file_through_build_info_and_generate(model_dir, tmp_path, capsys):
    from steerlab.generation import GenerationConfig, generate
    from steerlab.methods.prompt import PromptSteering
    from steerlab.models import load_model

    out = tmp_path / "kind.json"
    assert (
        main(
            [
                "vector",
                "build",
                "--method",
                "prompt",
                "--model",
                str(model_dir),
                "--set",
                "instruction=Be kind.",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["vector", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["instruction"] == "Be kind."
    assert (
        main(
            [
                "generate",
                "--model",
                str(model_dir),
                "--vector",
                str(out),
                "--prompt",
                "Hi",
                "--orig",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    lm = load_model(model_dir)
    config = GenerationConfig(max_new_tokens=4)
    expected = generate(lm, ["Hi"], PromptSteering("Be kind."), generate_orig_output=False, config=config)
    assert row["steered"] == expected[0].steered
    assert row["original"] == generate(lm, ["Hi"], config=config)[0].steered
    assert (
        main(["generate", "--model", str(model_dir), "--vector", str(out), "--multiplier", "2", "--prompt", "Hi"]) == 1
    )
    assert "a prompt steer has no multiplier or layers" in capsys.readouterr().err


def test_info_describes_a_condition_file(tmp_path, capsys):
    lm = tiny_model("llama")
    path = Condition(torch.ones(lm.hidden_size), 1, 0.1).save(tmp_path / "c.safetensors", lm)
    capsys.readouterr()
    assert main(["vector", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["kind"] == "condition" and info["layers"] == [1] and info["condition"]["threshold"] == pytest.approx(0.1)
    )
