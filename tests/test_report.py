"""Evaluation runs and report folders on a tiny model: batching equals separate runs; scores; atomic folders."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steerlab.evaluation.perplexity import continuation_losses, corpus_perplexity
from steerlab.evaluation.report import (
    Arm,
    Report,
    generate_arms,
    multiplier_arms,
    prompt_arm,
    score_run,
    write_report,
)
from steerlab.evaluation.sentiment import vader_scores
from steerlab.files import write_text_files
from steerlab.generation import GenerationConfig, generate
from steerlab.methods.prompt import PromptSteering
from steerlab.steering import SpecSteering, SteeringSpec
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm

PROMPTS = ["Hi", "Tell me a story", "Why?", "Good day to you"]
CONFIG = GenerationConfig(max_new_tokens=6)


def random_vector(lm, layers=(1, 2), scale=3.0, seed=1) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    meta = VectorMeta.for_model(lm, "caa", residual_norms={str(layer): 4.0 for layer in layers})
    return SteeringVector({layer: torch.randn(lm.hidden_size, generator=g) * scale for layer in layers}, meta)


def test_one_batch_equals_separate_runs():
    """Original rows are the unsteered model and each multiplier's rows equal a run at that multiplier alone."""
    lm = tiny_lm()
    vector = random_vector(lm)
    steer = SpecSteering(SteeringSpec(vector, 1.0, [1, 2]))
    run = generate_arms(lm, PROMPTS, multiplier_arms(steer, [2.0, -2.0]), config=CONFIG, batch_size=6)
    assert run.original == [r.steered for r in generate(lm, PROMPTS, None, config=CONFIG)]
    for cond, m in zip(run.conditions, [2.0, -2.0], strict=False):
        assert cond.label == f"x{m:g}" and cond.multiplier == m
        assert cond.texts == [r.steered for r in generate(lm, PROMPTS, SteeringSpec(vector, m, [1, 2]), config=CONFIG)]
    assert run.conditions[0].texts != run.original  # the vector is strong enough to change greedy text


def test_prompt_and_vector_arms_share_a_batch():
    lm = tiny_lm()
    vector = random_vector(lm)
    steering = PromptSteering("Be kind.")
    arms = [Arm("caa", SpecSteering(SteeringSpec(vector, 1.0, [1])), 3.0), prompt_arm(lm, steering, PROMPTS)]
    run = generate_arms(lm, PROMPTS, arms, config=CONFIG, batch_size=12)
    alone = generate(lm, PROMPTS, steering, config=CONFIG, generate_orig_output=True)
    assert run.conditions[1].texts == [r.steered for r in alone]
    assert run.original == [r.original for r in alone]
    assert run.conditions[0].texts == [
        r.steered for r in generate(lm, PROMPTS, SteeringSpec(vector, 3.0, [1]), config=CONFIG)
    ]


def test_two_vectors_in_one_batch_equal_their_separate_runs():
    """Each steer is attached with its own per-row scale, so one vector's rows never see the other's."""
    lm = tiny_lm()
    a, b = random_vector(lm, seed=1), random_vector(lm, seed=2)
    arms = [
        Arm("a", SpecSteering(SteeringSpec(a, 1.0, [1])), 2.0),
        Arm("b", SpecSteering(SteeringSpec(b, 1.0, [2])), -3.0),
    ]
    run = generate_arms(lm, PROMPTS, arms, config=CONFIG, batch_size=12)
    assert run.conditions[0].texts == [
        r.steered for r in generate(lm, PROMPTS, SteeringSpec(a, 2.0, [1]), config=CONFIG)
    ]
    assert run.conditions[1].texts == [
        r.steered for r in generate(lm, PROMPTS, SteeringSpec(b, -3.0, [2]), config=CONFIG)
    ]
    assert run.conditions[0].texts != run.conditions[1].texts


def test_sampled_rows_of_a_prompt_share_its_seed():
    """With sampling, multiplier 0 reproduces the original row exactly: the rows differ only by steering."""
    lm = tiny_lm()
    steer = SpecSteering(SteeringSpec(random_vector(lm), 1.0, [1]))
    config = GenerationConfig(max_new_tokens=6, do_sample=True, seed=7)
    run = generate_arms(lm, PROMPTS, multiplier_arms(steer, [0.0, 3.0]), config=config, batch_size=5)
    assert run.conditions[0].texts == run.original


def test_scores_follow_their_definitions():
    lm = tiny_lm()
    steer = SpecSteering(SteeringSpec(random_vector(lm), 1.0, [1, 2]))
    run = generate_arms(lm, PROMPTS, multiplier_arms(steer, [2.0]), config=CONFIG)
    # Known texts make the behaviour score checkable by hand.
    run.original = ["I love this, wonderful!", "great", "fine", "ok"]
    run.conditions[0].texts = ["I hate this, awful.", "terrible", "bad", "ok"]
    scores = score_run(lm, run, "sentiment", direction=-1.0)
    orig, steered = scores["original"], scores["conditions"][0]["scores"]
    assert orig["behaviour"] == pytest.approx(sum(vader_scores(run.original)) / 4)
    assert scores["conditions"][0]["delta"] == pytest.approx(steered["behaviour"] - orig["behaviour"])
    assert scores["conditions"][0]["effect"] == pytest.approx(-scores["conditions"][0]["delta"])
    assert scores["conditions"][0]["effect"] > 0  # more negative text, and the task wants the score down
    assert orig["perplexity"] == pytest.approx(corpus_perplexity(continuation_losses(lm, PROMPTS, run.original)))
    assert orig["empty_share"] == 0.0 and "toxic_share" not in orig


def make_report(lm) -> Report:
    steer = SpecSteering(SteeringSpec(random_vector(lm), 1.0, [1]))
    run = generate_arms(lm, PROMPTS, multiplier_arms(steer, [-2.0, 2.0]), config=CONFIG)
    settings = {
        "task": {"name": "mini", "metric": "sentiment", "direction": 1.0, "split": "test"},
        "model": {"name": lm.name},
        "steer": {"description": "caa vector at layer 1"},
        "generation": {"max_new_tokens": 6, "do_sample": False},
    }
    return Report(settings, score_run(lm, run, "sentiment"), run)


def test_report_folder_holds_json_summary_and_samples(tmp_path):
    report = make_report(tiny_lm())
    folder = write_report(tmp_path / "rep", report)
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "samples.jsonl", "summary.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folder left behind
    data = json.loads((folder / "report.json").read_text())
    assert data["settings"]["task"]["name"] == "mini"
    assert [c["label"] for c in data["conditions"]] == ["x-2", "x2"]
    assert set(data["original"]) >= {"behaviour", "fluency_entropy", "distinct_2", "repetition", "perplexity"}
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == PROMPTS
    assert (
        samples[1]["original"] == report.run.original[1]
        and samples[1]["steered"]["x2"] == report.run.conditions[1].texts[1]
    )
    summary = (folder / "summary.md").read_text()
    assert summary.startswith("# steerlab eval: mini on tiny-llama-4x16")
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table] == ["| setting", "| original", "| x-2", "| x2"]
    assert "**Prompt:** Tell me a story" in summary


def test_existing_folder_is_refused_then_replaced_when_asked(tmp_path):
    folder = tmp_path / "rep"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    report = make_report(tiny_lm())
    with pytest.raises(FileExistsError, match=f"^{folder} already exists; choose another --out or pass --overwrite$"):
        write_report(folder, report)
    assert (folder / "keep.txt").read_text() == "mine"
    write_report(folder, report, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "samples.jsonl", "summary.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_text_files(tmp_path / "rep", {"a.txt": "fine", "b.txt": None})
    assert list(tmp_path.iterdir()) == []


def test_nan_is_written_as_null(tmp_path):
    report = make_report(tiny_lm())
    report.scores["original"]["perplexity"] = math.nan
    data = json.loads((write_report(tmp_path / "rep", report) / "report.json").read_text())
    assert data["original"]["perplexity"] is None
    assert "| original | " in (tmp_path / "rep" / "summary.md").read_text()
