"""The metric registry: a new metric is one record, and evaluate, sweep, compare and the playground all use it; every
printed and plotted effect says in words which way the score went ("toxicity down by 0.345")."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from steerlab.cli.sweep import print_grid
from steerlab.evaluation import sweep as sweep_module
from steerlab.evaluation.metric_registry import METRICS, Metric, get_metric
from steerlab.evaluation.report import summary_markdown
from steerlab.evaluation.run import compare, evaluate
from steerlab.evaluation.sweep import SweepConfig, SweepResult, recommend, save_sweep, sweep
from steerlab.evaluation.tasks import load_task_file
from steerlab.generation import GenerationConfig
from steerlab.server.app import create_app
from steerlab.server.registry import VectorRegistry
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_lm


def exclamations(texts):
    return [sum(c in "!?" for c in t) / max(1, len(t)) for t in texts]


RECORD = Metric(
    "exclaim",
    "exclamations",
    "share of ! and ? characters",
    "mean share of ! and ? characters",
    "excitement",
    exclamations,
    0.0,
    1.0,
    {1: "Be very excited!"},
)


@pytest.fixture
def task(tmp_path, monkeypatch):
    monkeypatch.setitem(METRICS, "exclaim", RECORD)
    (tmp_path / "pairs.jsonl").write_text(
        '{"positive": "Wow!", "negative": "Fine."}\n{"positive": "Yes!!", "negative": "Ok."}\n'
    )
    (tmp_path / "prompts.txt").write_text("Hello\nWhat now\n")
    (tmp_path / "task.yaml").write_text(
        "name: excite\nkind: generation\ntrain: pairs.jsonl\ntest: prompts.txt\n"
        "val: prompts.txt\nmetric: exclaim\nchat: true\n"
    )
    return load_task_file(tmp_path / "task.yaml")


def test_a_new_metric_is_one_record_seen_by_eval_sweep_compare_and_the_playground(task):
    lm = tiny_lm(num_layers=3)
    generation = GenerationConfig(max_new_tokens=4)
    report = evaluate(lm, task, method="caa", layers=[1], multipliers=[8.0], generation=generation, train_limit=2)
    assert report.settings["task"]["metric_note"] == RECORD.mean_note
    (cond,) = report.scores["conditions"]
    steered = report.run.conditions[0].texts
    assert cond["scores"]["behaviour"] == pytest.approx(sum(exclamations(steered)) / len(steered))
    assert RECORD.change_words(cond["delta"]) in summary_markdown(report)
    assert f"behaviour: {RECORD.mean_note}" in summary_markdown(report)

    result, _ = sweep(lm, task, SweepConfig(layers=[1], multipliers=[-8.0, 8.0], max_new_tokens=4, train_limit=2))
    assert result.metric == "exclaim" and result.min_effect == pytest.approx(0.02 * RECORD.span)
    assert result.effect_words(0.25) == "excitement up by 0.250"

    comparison = compare(lm, task, methods=["caa", "prompt"], layer=1, generation=generation, train_limit=2)
    assert comparison.report.settings["instruction"] == "Be very excited!"
    assert RECORD.mean_note in comparison.markdown()

    registry = VectorRegistry(lm, {})
    with TestClient(create_app(lm, registry)) as client:
        listed = {m["id"]: m for m in client.get("/v1/metrics").json()["data"]}
        assert listed["exclaim"] == {
            "id": "exclaim",
            "label": "exclamations",
            "description": RECORD.description,
            "min": 0.0,
            "max": 1.0,
        }
        scored = client.post("/v1/score", json={"metric": "exclaim", "texts": ["Hi!", "no"]}).json()
        assert scored["scores"] == exclamations(["Hi!", "no"])


def test_a_metric_without_an_instruction_toward_the_tasks_goal_asks_for_one(task, monkeypatch):
    monkeypatch.setitem(METRICS, "exclaim", Metric(**{**RECORD.__dict__, "instructions": {-1: "Be calm."}}))
    with pytest.raises(
        ValueError, match="no default instruction for metric 'exclaim' toward higher scores; give an instruction"
    ):
        compare(tiny_lm(num_layers=3), task, methods=["prompt"], limit=1)


def _toxicity_result() -> SweepResult:
    """A toxicity sweep (direction -1): +1 lowered toxicity by 0.345, -1 raised it by 0.2."""
    return SweepResult(
        "toxicity",
        "generation",
        "val",
        "raw",
        [2],
        [-1.0, 1.0],
        [[-1.0, 1.0]],
        score=[[0.6, 0.055]],
        fluency=[[5.0, 5.0]],
        effect=[[-0.2, 0.345]],
        base_score=0.4,
        base_fluency=5.0,
        score_name="mean toxicity",
        fluency_name="f",
        fluency_bound=0.1,
        items=60,
        train_pairs=10,
        recommended=None,
        interval=[[[-0.3, -0.1], [0.2, 0.5]]],
        wrong_way=[[0.1, 0.05]],
        fluent=[[True, True]],
        direction=-1.0,
        metric="toxicity",
    )


def test_toxicity_effects_say_which_way_toxicity_went(tmp_path, capsys, monkeypatch):
    toxicity = get_metric("toxicity")
    assert toxicity.effect_words(0.345, -1.0) == "toxicity down by 0.345"
    assert toxicity.effect_words(-0.2, -1.0) == "toxicity up by 0.200"
    result = _toxicity_result()
    recommend(result)
    print_grid(result)
    out = capsys.readouterr().out
    assert "x the task's direction (-1), so effect + = toxicity down, - = up" in out
    assert "steering up: layer 2, multiplier 1; toxicity down by 0.345 (effect +0.345" in out
    assert "steering down: layer 2, multiplier -1; toxicity up by 0.200 (effect -0.200" in out
    assert "up: layer 2, multiplier 1, toxicity down by 0.345" in result.verdict
    labels = []
    monkeypatch.setattr(sweep_module, "heatmap_png", lambda *a, **k: labels.append(k["colour_label"]) or b"png")
    lm = tiny_lm(num_layers=3)
    vector = SteeringVector({2: lm.model.get_input_embeddings().weight[3].detach()}, VectorMeta.for_model(lm, "caa"))
    save_sweep(tmp_path / "sw", result, vector)
    assert labels[0] == "effect + = toxicity down, - = up"
