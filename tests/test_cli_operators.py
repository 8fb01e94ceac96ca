"""Operators, directional ablation, the orthogonalised export and CAST from the command line on a tiny saved model."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.cli import main
from steerlab.conditional import Condition
from steerlab.meta import Recommendation
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model


def _outputs(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _vector(path, layers=(1, 2)):
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(4)
    vector = SteeringVector(
        {k: torch.randn(lm.hidden_size, generator=g) * 3 for k in layers},
        VectorMeta.for_model(lm, "test", recommended=Recommendation(layer=1)),
    )
    return vector.save(path)


def test_operator_positions_and_ablation_flags(model_dir, tmp_path, capsys):
    vec = _vector(tmp_path / "v.safetensors")
    base = [
        "generate",
        "--model",
        str(model_dir),
        "--vector",
        str(vec),
        "--prompt",
        "Hi there",
        "--prompt",
        "Go",
        "--max-new-tokens",
        "6",
        "--json",
        "--orig",
    ]
    texts = {}
    for extra in (
        ["--operator", "ablate", "--layers", "1"],
        ["--operator", "rotate", "--multiplier", "90", "--layers", "1"],
        ["--positions", "user", "--layers", "1", "--multiplier", "8"],
        ["--ablate-direction"],
    ):
        assert main(base + extra) == 0
        rows = _outputs(capsys)
        assert len(rows) == 2
        texts[" ".join(extra)] = rows
    for arm, rows in texts.items():
        assert any(r["steered"] != r["original"] for r in rows), arm
    with pytest.raises(SystemExit):  # argparse refuses an unknown operator
        main([*base, "--operator", "scale"])
    capsys.readouterr()
    assert main([*base, "--positions", "middle"]) == 1
    assert "positions must be one of" in capsys.readouterr().err
    assert main([*base, "--ablate-direction", "--multiplier", "2"]) == 1


def test_reasoning_budget_and_segment_flags_generate_what_the_library_does(model_dir, tmp_path, capsys):
    from steerlab.generation import GenerationConfig, generate
    from steerlab.models import load_model
    from steerlab.steering import LengthBudget, SteeringSpec
    from steerlab.steers import load_steer

    vec = _vector(tmp_path / "v.safetensors")
    base = ["generate", "--model", str(model_dir), "--vector", str(vec), "--prompt", "Hi there", "--json"]
    flags = ["--max-new-tokens", "8", "--layers", "1", "--multiplier", "8", "--positions", "until:zz"]
    assert main([*base, *flags, "--reasoning-budget", "2", "--budget-ramp", "3"]) == 0
    (row,) = _outputs(capsys)
    lm = load_model(str(model_dir))
    spec = SteeringSpec(load_steer(vec), 8.0, [1], "until:zz", budget=LengthBudget(2, 3))
    assert row["steered"] == generate(lm, ["Hi there"], spec, config=GenerationConfig(max_new_tokens=8))[0].steered
    assert main([*base, "--budget-ramp", "3"]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("--budget-ramp shapes a --reasoning-budget; give --reasoning-budget N too")
    )
    assert main([*base, "--reasoning-budget", "4", "--operator", "ablate"]) == 1
    assert "a length budget scales an added vector; the ablate operator" in capsys.readouterr().err


def test_orthogonalize_export_generates_what_run_time_ablation_generates(model_dir, tmp_path, capsys):
    vec = _vector(tmp_path / "v.safetensors")
    out = tmp_path / "ortho"
    assert main(["vector", "orthogonalize", "--model", str(model_dir), "--vector", str(vec), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    capsys.readouterr()
    prompts = ["--prompt", "Hi there", "--prompt", "Tell me more", "--max-new-tokens", "8", "--json"]
    assert main(["generate", "--model", str(model_dir), "--vector", str(vec), "--ablate-direction", *prompts]) == 0
    ablated = [r["steered"] for r in _outputs(capsys)]
    assert main(["generate", "--model", str(out), *prompts]) == 0
    assert [r["steered"] for r in _outputs(capsys)] == ablated
    assert main(["generate", "--model", str(model_dir), *prompts]) == 0
    assert [r["steered"] for r in _outputs(capsys)] != ablated


def test_orthogonalize_overwrite_swaps_the_folder_in_whole(model_dir, tmp_path):
    vec = _vector(tmp_path / "v.safetensors")
    out = tmp_path / "ortho"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    args = ["vector", "orthogonalize", "--model", str(model_dir), "--vector", str(vec), "--out", str(out)]
    assert main(args) == 1 and (out / "stale.txt").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho", "tiny", "v.safetensors"]  # no temporary left


def test_condition_fit_and_conditional_generation(model_dir, tmp_path, capsys):
    vec = _vector(tmp_path / "v.safetensors")
    steer, keep = tmp_path / "steer.txt", tmp_path / "keep.txt"
    steer.write_text("xxxx\nxxxxxx\nxxxxxxxx\n")
    keep.write_text("hello world\nhello there world\nhi world\n")
    cond = tmp_path / "c.safetensors"
    assert (
        main(
            [
                "vector",
                "condition",
                "--model",
                str(model_dir),
                "--vector",
                str(vec),
                "--steer-prompts",
                str(steer),
                "--keep-prompts",
                str(keep),
                "--out",
                str(cond),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "layer   1: best F1" in printed and "chosen: layer" in printed
    condition = Condition.load(cond)
    assert 0 < condition.fit["f1"] <= 1
    prompts = ["--prompt", "xxxxx", "--prompt", "hello big world", "--max-new-tokens", "6", "--json", "--orig"]
    assert (
        main(
            [
                "generate",
                "--model",
                str(model_dir),
                "--vector",
                str(vec),
                "--layers",
                "1",
                "--multiplier",
                "8",
                "--condition",
                str(cond),
                *prompts,
            ]
        )
        == 0
    )
    rows = _outputs(capsys)
    assert len(rows) == 2
