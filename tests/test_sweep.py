"""Sweeps: the grid on a tiny random model against cell-by-cell scoring, the recommendation rule, the saved
files and the command line; on SmolLM2, a sentiment sweep prefers a middle layer to layer 0."""

from __future__ import annotations

import json

import pytest

from steerlab.cli import main
from steerlab.evaluation.ab import Cell, ab_movement, letter_words, score_ab
from steerlab.evaluation.sweep import SweepConfig, SweepResult, generate_grid, recommend, save_sweep, sweep
from steerlab.evaluation.tasks import get_task
from steerlab.generation import GenerationConfig, generate
from steerlab.meta import Recommendation
from steerlab.steering import SteeringSpec
from steerlab.strength import multiplier_for
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm, tiny_model

QUESTIONS = ["Is it so", "Do you agree", "Should we go", "Is this fine", "Will it rain", "Can you help"]


def _ab_task(tmp_path):
    def item(i, q):
        a, b = ("yes", "no") if i % 2 else ("no", "yes")
        return {
            "question": f"{q}?\n(A) {a}\n(B) {b}",
            "answer_matching_behavior": "(A)" if i % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
        }

    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(item(i, q)) for i, q in enumerate(QUESTIONS)))
    (tmp_path / "test.json").write_text(json.dumps([item(i, f"Test {i} {q}") for i, q in enumerate(QUESTIONS[:4])]))
    (tmp_path / "task.yaml").write_text("name: tiny-ab\nkind: ab\ntrain: train.jsonl\ntest: test.json\n")
    return get_task(str(tmp_path / "task.yaml"))


def test_tiny_ab_sweep_returns_the_grid_and_a_recommendation(tmp_path):
    lm = tiny_lm(num_layers=4)
    task = _ab_task(tmp_path)
    config = SweepConfig(layers=[1, 2], strengths=[-0.5, 0.5, 1.0], fluency_bound=0.5, batch_rows=16)
    result, vector = sweep(lm, task, config)
    assert (result.layers, result.values, result.mode, result.items, result.train_pairs) == (
        [1, 2],
        [-0.5, 0.5, 1.0],
        "relative",
        4,
        6,
    )
    assert [len(row) for row in (result.score, result.fluency, result.effect, result.multipliers)] == [2, 2, 2, 2]
    assert all(len(row) == 3 for grid in (result.score, result.fluency, result.effect) for row in grid)
    # Each cell equals scoring that cell on its own, with the multiplier the strength implies.
    items = task.eval_items("val")
    for i, layer in enumerate(result.layers):
        for j, value in enumerate(result.values):
            mult = multiplier_for(vector, layer, value)
            assert result.multipliers[i][j] == pytest.approx(mult, abs=1e-4)
            alone = score_ab(lm, items, vector, [Cell(layer, mult)]).summary(0, None)
            assert result.score[i][j] == pytest.approx(alone["p_matching"], abs=1e-4)
            assert result.effect[i][j] == pytest.approx(result.score[i][j] - result.base_score, abs=1e-9)
    # Per cell: a paired interval around its effect, fluent = answer mass within the bound.
    for i in range(2):
        for j in range(3):
            low, high = result.interval[i][j]
            assert low <= result.effect[i][j] + 1e-9 and result.effect[i][j] <= high + 1e-9
            assert result.fluent[i][j] == (result.fluency[i][j] >= 0.5 * result.base_fluency)
    # "up" is the fluent positive cell with the largest lower bound above 0 (and an effect of at least 2% of
    # p(matching)'s range); with 4 noisy items there may be none.
    assert result.min_effect == 0.02
    allowed = [
        (result.interval[i][j][0], result.layers[i], result.values[j])
        for i in range(2)
        for j in (1, 2)
        if result.fluent[i][j] and result.interval[i][j][0] > 0 and result.effect[i][j] >= result.min_effect
    ]
    up = result.directions["up"]
    assert (up.layer, up.value) == max(allowed)[1:] if allowed else up is None
    rec = result.recommended
    assert vector.meta.recommended == (
        rec if rec else Recommendation(verdict="no reliable effect", task="tiny-ab", split="test")
    )
    assert set(vector.meta.residual_norms) == {"1", "2"} and vector.layers == [1, 2]
    assert len(result.details["letter_shift"]) == 2 and len(result.details["letter_shift"][0]) == 3


def test_recommend_takes_per_direction_the_fluent_cell_whose_interval_is_furthest_from_zero():
    result = SweepResult(
        "t",
        "ab",
        "val",
        "raw",
        [3, 7],
        [-1.0, 1.0, 2.0],
        [[-1, 1, 2], [-1, 1, 2]],
        score=[[0.4, 0.6, 0.9], [0.5, 0.7, 0.8]],
        fluency=[[1, 1, 0.5], [1, 0.95, 0.92]],
        effect=[[-0.1, 0.1, 0.4], [-0.05, 0.2, 0.3]],
        base_score=0.5,
        base_fluency=1.0,
        score_name="s",
        fluency_name="f",
        fluency_bound=0.1,
        items=3,
        train_pairs=3,
        recommended=None,
        interval=[[[-0.2, -0.01], [0.02, 0.2], [0.3, 0.5]], [[-0.1, 0.01], [0.1, 0.3], [0.05, 0.5]]],
        wrong_way=[[0.1, 0.2, 0.0], [0.4, 0.1, 0.2]],
    )
    recommend(result)  # layer 3 x 2 has the largest effect but loses half its fluency; 7 x 1 has the best lower bound
    up, down = result.directions["up"], result.directions["down"]
    assert (up.layer, up.multiplier, up.effect, up.interval, up.wrong_way) == (7, 1, 0.2, (0.1, 0.3), 0.1)
    assert (down.layer, down.multiplier, down.interval) == (3, -1, (-0.2, -0.01))
    assert result.recommended == Recommendation(7, 1, up, down, task="t", split="val")
    result.fluency[1] = [1, 0.5, 0.5]
    result.interval[0][1] = [-0.1, 0.2]
    recommend(result)
    assert result.directions["up"] is None and result.recommended.verdict == "up: no reliable effect"
    assert result.recommended.layer is None and result.recommended.down.layer == 3
    assert result.note.startswith("no reliable effect steering up")


def _letter_result(effect, interval, shift):
    """A one-layer A/B grid at strengths -0.2 / +0.2 with the given effects, intervals and A-share shifts."""
    return SweepResult(
        "t", "ab", "val", "relative", [9], [-0.2, 0.2], [[-2.0, 2.0]],
        score=[[0.5, 0.5]], fluency=[[1.0, 1.0]], effect=[effect], base_score=0.5, base_fluency=1.0,
        score_name="s", fluency_name="f", fluency_bound=0.1, items=30, train_pairs=12, recommended=None,
        interval=[interval], wrong_way=[[0.3, 0.3]], details={"letter_shift": [shift]}, min_effect=0.02,
    )  # fmt: skip


def test_a_cell_that_moves_the_letter_is_never_stored_as_a_recommendation():
    # The held-out case from issue 21: down effect -0.026 [-0.04, -0.01] while the A-share fell by 0.197.
    result = _letter_result([-0.026, 0.03], [[-0.04, -0.01], [0.01, 0.05]], [-0.197, 0.01])
    recommend(result)
    assert result.directions["down"] is None and result.recommended.down is None
    assert result.directions["up"].layer == 9 and result.recommended.multiplier == 2.0
    assert result.verdict.endswith(
        "down: no reliable effect (layer 9, strength -0.2 (multiplier -2) moves the letter rather than the "
        "behaviour: A-share -0.197 vs p(matching) -0.026)"
    )
    # The same effect with a small letter shift is the behaviour, and is recommended.
    result.details["letter_shift"] = [[-0.03, 0.01]]
    recommend(result)
    assert result.directions["down"].multiplier == -2.0


def test_letter_words_tell_behaviour_letter_and_neither_apart():
    assert letter_words(0.002, 0.035, min_effect=0.02) == (
        "moves neither the behaviour nor the letter (p(matching) +0.002, under 0.02; A-share +0.035)"
    )
    assert letter_words(-0.026, -0.197, min_effect=0.02) == (
        "moves the letter rather than the behaviour (A-share -0.197 vs p(matching) -0.026)"
    )
    assert letter_words(0.09, 0.12, min_effect=0.02) == "moves the behaviour (p(matching) +0.090, A-share +0.120)"
    assert ab_movement(0.019, 0.0, min_effect=0.02) == "neither"
    assert ab_movement(0.03, 0.061, min_effect=0.02) == "letter"


def test_generation_grid_matches_generating_each_cell_alone():
    lm = tiny_lm(num_layers=3)
    prompts = ["Hello there", "A much longer prompt to pad", "Why"]
    vector = SteeringVector(
        {
            1: lm.model.get_input_embeddings().weight[7].detach() * 3,
            2: lm.model.get_input_embeddings().weight[9].detach(),
        },
        VectorMeta.for_model(lm, "caa"),
    )
    cells = [Cell(), Cell(1, 2.0), Cell(2, -4.0), Cell(1, -1.0)]
    texts = generate_grid(lm, prompts, vector, cells, chat=True, max_new_tokens=6, batch_rows=5)
    for cell, got in zip(cells, texts, strict=False):
        spec = SteeringSpec(vector, cell.multiplier, [cell.layer]) if cell.layer is not None else None
        alone = generate(lm, prompts, spec, config=GenerationConfig(max_new_tokens=6))
        assert got == [r.steered for r in alone]
    assert texts[1] != texts[0]


def test_save_writes_the_four_files_and_refuses_to_replace_the_folder(tmp_path):
    lm = tiny_lm(num_layers=4)
    config = SweepConfig(layers=[1, 2], strengths=[0.5, 1.0], fluency_bound=0.5)
    result, vector = sweep(lm, _ab_task(tmp_path), config)
    out = save_sweep(tmp_path / "out", result, vector)
    assert SteeringVector.load(out / "vector.safetensors").meta.recommended == vector.meta.recommended
    assert json.loads((out / "sweep.json").read_text())["layers"] == [1, 2]
    assert (out / "effect.png").read_bytes()[:4] == b"\x89PNG" and (out / "fluency.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match=r"out already exists; choose another path"):
        save_sweep(tmp_path / "out", result, vector)
    save_sweep(tmp_path / "out", result, vector, overwrite=True)


def test_sweep_command_writes_its_folder_and_prints_the_recommendation(tmp_path, capsys):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    _ab_task(tmp_path)
    args = [
        "sweep",
        "--model",
        str(tmp_path / "tiny"),
        "--task",
        str(tmp_path / "task.yaml"),
        "--layers",
        "1-2",
        "--strengths",
        "0.5,1",
        "--fluency-bound",
        "0.9",
        "--out",
        str(tmp_path / "sw"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "tiny-ab: effect = change in p(matching), order-debiased (unsteered " in out
        and "x the task's direction (+1), so effect + = p(matching) up, - = down;" in out
    )
    assert "swept 2 layers x 2 relative values on 4 test items" in out
    assert "steering up: " in out and "steering down: no reliable effect (no fluent cell" in out  # no negative cells
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == [
        "effect.png",
        "fluency.png",
        "sweep.json",
        "vector.safetensors",
    ]
    assert main(args) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'sw'} already exists; choose another --out or pass --overwrite"
    )
    assert (
        main(["sweep", "--model", str(tmp_path / "tiny"), "--task", "refusal", "--method", "pca_diff", "--out", "x"])
        == 1
    )
    assert "only --method caa supports" in capsys.readouterr().err


@pytest.mark.real_model
def test_sentiment_sweep_on_smollm2_recommends_a_middle_layer_over_layer_0(smollm2, shared_data):
    # At 0.6 of the residual norm, steering layer 0 garbles the prompt's tokens; a middle layer turns the tone.
    task = get_task("sentiment", shared_data)
    config = SweepConfig(layers=[0, 6, 12], strengths=[0.6], limit=8, max_new_tokens=20, fluency_bound=0.3)
    result, vector = sweep(smollm2, task, config, data_dir=shared_data)
    assert result.recommended is not None and result.recommended.layer in (6, 12)
    effect = {layer: row[0] for layer, row in zip(result.layers, result.effect, strict=False)}
    assert effect[result.recommended.layer] > effect[0] + 0.3
    assert vector.meta.recommended.multiplier == result.multipliers[result.layers.index(result.recommended.layer)][0]
