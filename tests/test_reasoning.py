"""Reasoning-length tasks: maths files, contrast pairs from worked solutions, and arms scored for accuracy and tokens."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import torch

from steerlab.cli import main
from steerlab.evaluation.answers import final_number
from steerlab.evaluation.reasoning import (
    BASELINES,
    MathItem,
    ReasoningError,
    evaluate_reasoning,
    length_pairs,
    math_prompt,
    read_math_items,
    reasoning_table,
    split_of,
    strength_arms,
    worked_solution,
)
from steerlab.evaluation.report import generated_lengths
from steerlab.evaluation.tasks import get_task
from steerlab.generation import GenerationConfig, encode_prompts, end_token_ids, generate_tokens
from steerlab.steering import LengthBudget
from steerlab.vector import SteeringVector, VectorMeta
from tiny_model import tiny_model

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


def _problems(path, n=6):
    lines = [{"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}.\n#### {2 * i}"}
             for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_worked_solutions_lose_their_calculator_notes_and_end_in_words():
    item = MathItem("How many clips?", Decimal(72), SOLUTION)
    assert worked_solution(item) == (
        "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\nThe answer is 72."
    )
    (pair,) = length_pairs([item], "one").pairs
    assert (pair.prompt, pair.negative) == (math_prompt(item), "The answer is 72.")
    assert pair.prompt.endswith("\nSolve the problem step by step, then give the final answer as a number.")
    assert [split_of(i) for i in range(11)] == ["test"] + ["fit"] * 4 + ["val"] + ["fit"] * 4 + ["test"]


def test_math_files_are_read_strictly(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "Q1?", "answer": "#### 1,200"}\n{"question": "Q2?", "answer": -3.5}\n')
    items = read_math_items(good)
    assert [(i.answer, i.solution) for i in items] == [(Decimal(1200), "#### 1,200"), (Decimal("-3.5"), "")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q1?", "answer": "#### 4"}\n{"question": "Q2?", "answer": "no idea"}\n')
    with pytest.raises(ReasoningError, match=r"bad.jsonl: line 2: the answer 'no idea' gives no number$"):
        read_math_items(bad)
    bad.write_text('{"question": "", "answer": "4"}\n')
    with pytest.raises(ReasoningError, match=r"bad.jsonl: line 1: needs \"question\" \(a non-empty string\)"):
        read_math_items(bad)
    with pytest.raises(ReasoningError, match="has no worked solution to contrast with"):
        worked_solution(items[1])


def test_generated_lengths_stop_at_the_first_end_token_or_count_every_token():
    new = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0], [5, 0, 0, 0, 0]])
    assert generated_lengths(new, [0, 2]) == [2, 5, 0, 1]


def test_arms_are_scored_as_each_problem_generated_alone(tmp_path):
    lm = tiny_model("llama")
    items = read_math_items(_problems(tmp_path / "p.jsonl"))
    g = torch.Generator().manual_seed(3)
    vector = SteeringVector({1: torch.randn(lm.hidden_size, generator=g) * 3}, VectorMeta.for_model(lm, "test"))
    arms = strength_arms(vector, [8.0], raw=True, layers=[1], budget=LengthBudget(3, 2))
    config = GenerationConfig(max_new_tokens=12)
    results = evaluate_reasoning(lm, items, arms, config=config, budget=3, batch_size=8)
    assert [r.label for r in results] == ["unsteered", "x+8, budget 3", *BASELINES]
    base, steered, directly = results[0], results[1], results[3]
    for i, item in enumerate(items):  # the unsteered arm and the "answer directly" baseline, one problem at a time
        for arm, instruction in ((base, None), (directly, BASELINES["prompt: answer directly"])):
            ids = encode_prompts(lm, [math_prompt(item, *([instruction] if instruction else []))])
            new = generate_tokens(lm, ids, None, config=config)
            text = lm.tokenizer.decode(new[0], skip_special_tokens=True)
            assert arm.texts[i] == text
            assert arm.tokens[i] == generated_lengths(new, end_token_ids(lm))[0]
            assert arm.correct[i] == (final_number(text) == item.answer)
        assert steered.texts[i][:3] == base.texts[i][:3]  # one token per character: the budget leaves 3 alone
    assert steered.texts != base.texts
    diffs = [a - b for a, b in zip(steered.tokens, base.tokens, strict=True)]
    assert steered.effects["tokens"].mean == pytest.approx(sum(diffs) / len(diffs))
    summary = steered.summary()
    assert summary["limit_share"] == sum(n >= 12 for n in steered.tokens) / len(items)
    assert summary["within_budget"] == sum(n <= 3 for n in steered.tokens) / len(items)
    assert reasoning_table(results).splitlines()[0].count("|") == 10  # with the "within 3 tokens" column


def test_eval_on_a_reasoning_task_file_writes_its_report(model_dir, tmp_path, capsys):
    problems = _problems(tmp_path / "problems.jsonl", n=4)
    task = tmp_path / "maths.yaml"
    task.write_text(f"name: maths\nkind: reasoning\ntrain: {problems.name}\ntest: {problems.name}\n")
    lm = tiny_model("llama")
    vector = SteeringVector({1: torch.ones(lm.hidden_size)}, VectorMeta.for_model(lm, "test")).save(
        tmp_path / "v.safetensors"
    )
    args = ["eval", "--task", str(task), "--model", str(model_dir), "--vector", str(vector), "--max-new-tokens", "6"]
    out = tmp_path / "report"
    assert main([*args, "--multipliers=-2,2", "--positions", "until:=", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [a["label"] for a in report["arms"]] == ["unsteered", "x-2", "x+2", *BASELINES]
    assert report["settings"]["positions"] == "until:="
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
    assert "| unsteered | " in capsys.readouterr().out
    assert main(args) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("give the settings to compare: --strengths=-0.1,0.1 (or --multipliers)")
    )
    assert main([*args, "--strengths=0.1", "--budget-ramp", "4"]) == 1
    assert "--budget-ramp shapes a --reasoning-budget" in capsys.readouterr().err
    assert main(["sweep", "--task", str(task), "--model", str(model_dir), "--out", str(tmp_path / "s")]) == 1
    assert "task 'maths' is a reasoning task, scored by accuracy and tokens per answer" in capsys.readouterr().err


def test_vector_build_takes_a_reasoning_tasks_pairs(model_dir, tmp_path, capsys):
    from steerlab.methods import fit
    from steerlab.models import load_model
    from steerlab.vector import SteeringVector as Vector

    problems = _problems(tmp_path / "problems.jsonl", n=5)
    task = tmp_path / "maths.yaml"
    task.write_text(f"name: maths\nkind: reasoning\ntrain: {problems.name}\ntest: {problems.name}\n")
    out = tmp_path / "length.safetensors"
    args = ["vector", "build", "--data-task", str(task), "--limit", "3", "--layers", "1", "--model", str(model_dir)]
    assert main([*args, "--out", str(out)]) == 0
    expected = fit(load_model(str(model_dir)), length_pairs(read_math_items(problems)[:3], "maths"), "caa", layers=[1])
    torch.testing.assert_close(Vector.load(out).directions[1], expected.directions[1])
    assert main([*args, "--data", str(problems), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert (
        "give one source of pairs: --data FILE, --data-task TASK or --positive/--negative texts"
        in capsys.readouterr().err
    )


@pytest.mark.shared_data
def test_reasoning_length_task_splits_gsm8k_and_builds_pairs_from_its_fit_problems(shared_data):
    task = get_task("reasoning-length", shared_data)
    test, val = task.eval_items("test", shared_data), task.eval_items("val", shared_data)
    assert (len(test), len(val)) == (748, 747)
    pairs = task.train_data(shared_data).pairs
    assert len(pairs) == 7473 - 748 - 747
    assert not any("<<" in p.positive for p in pairs)
    assert all(p.positive.endswith(p.negative) for p in pairs)  # the worked steps end with the short answer
    assert not {p.prompt for p in pairs} & {math_prompt(item) for item in test + val}
