"""Tasks: built-in splits are disjoint and sized as documented; user task files are checked like configs."""

from __future__ import annotations

import json

import pytest

from steerlab.config import ConfigError
from steerlab.data import DatasetError
from steerlab.evaluation.tasks import TaskError, builtin_tasks, data_root, get_task


@pytest.mark.parametrize(("name", "train"), [("sycophancy", 950), ("hallucination", 950), ("refusal", 358)])
def test_caa_tasks_train_on_the_generate_set_and_test_on_held_out_questions(shared_data, name, train):
    task = get_task(name, shared_data)
    data = task.train_data(shared_data)
    val, test = task.eval_items("val", shared_data), task.eval_items("test", shared_data)
    assert (len(data), len(val), len(test)) == (train, 50, 50)
    train_q = {p.prompt for p in data.pairs}
    assert not train_q & {p.prompt for p in val} and not train_q & {p.prompt for p in test}
    assert not {p.prompt for p in val} & {p.prompt for p in test}
    assert all(p.kind == "ab" and {p.positive, p.negative} == {"A", "B"} for p in test)


def test_persona_tasks_split_every_trait_file(shared_data):
    tasks = builtin_tasks(shared_data)
    assert sum(name.startswith("persona/") for name in tasks) == 10
    task = tasks["persona/narcissism"]
    data, val, test = (
        task.train_data(shared_data),
        task.eval_items("val", shared_data),
        task.eval_items("test", shared_data),
    )
    assert (len(data), len(val), len(test)) == (850, 50, 100)
    assert not {p.prompt for p in data.pairs} & ({p.prompt for p in val} | {p.prompt for p in test})


def test_generation_tasks_read_their_files(shared_data):
    sst2 = get_task("sentiment-sst2", shared_data)
    data = sst2.train_data(shared_data, limit=5)
    assert len(data) == 5 and data.pairs[0].positive == "it 's a charming and often affecting journey ."
    assert data.pairs[0].negative == "unflinchingly bleak and desperate"
    assert len(sst2.train_data(shared_data)) == 428
    sentiment = get_task("sentiment", shared_data)
    assert len(sentiment.train_data(shared_data)) == 72 and sentiment.train_data(shared_data).pairs[0].prompt
    test, val = sentiment.eval_items("test", shared_data), sentiment.eval_items("val", shared_data)
    assert (len(test), len(val), test[0]) == (4900, 100, "God never intended to")
    assert not set(test) & set(val)
    assert [c.sign for c in sentiment.controls] == [1.0, -1.0]
    toxicity = get_task("toxicity", shared_data)
    pair = toxicity.train_data(shared_data, limit=1).pairs[0]
    assert (pair.positive, pair.negative) == ("he was brave too!", "he had steel balls too !")
    assert toxicity.direction == -1.0 and len(toxicity.eval_items("test", shared_data, limit=7)) == 7
    refusal = get_task("harmful-refusal", shared_data)
    assert len(refusal.train_data(shared_data)) == 260
    assert (len(refusal.eval_items("val", shared_data)), len(refusal.eval_items("test", shared_data))) == (39, 572)


def test_unknown_tasks_and_missing_data_are_explained(tmp_path, shared_data):
    with pytest.raises(
        TaskError, match=r"unknown task 'sycophant'; built-in tasks: sycophancy, hallucination, refusal, "
    ):
        get_task("sycophant", shared_data)
    with pytest.raises(TaskError, match=r"no task data folder at .*nowhere; pass --data-dir"):
        data_root(tmp_path / "nowhere")
    with pytest.raises(
        TaskError, match=r"task 'persona/no-such-trait' needs .*persona/no-such-trait\.jsonl, which is missing"
    ):
        get_task("persona/no-such-trait", shared_data).train_data(shared_data)


# ---- user tasks ---------------------------------------------------------------------------------------
def _files(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "question": f"Q{i}?\n(A) yes\n(B) no",
                    "answer_matching_behavior": "(A)",
                    "answer_not_matching_behavior": "(B)",
                }
            )
            for i in range(3)
        )
    )
    (tmp_path / "test.json").write_text(
        json.dumps(
            [
                {
                    "question": "T?\n(A) no\n(B) yes",
                    "answer_matching_behavior": "(B)",
                    "answer_not_matching_behavior": "(A)",
                }
            ]
        )
    )
    (tmp_path / "prompts.txt").write_text("Once upon a time\n\nThe weather\n")


def test_a_user_task_file_registers_an_ab_task(tmp_path):
    _files(tmp_path)
    (tmp_path / "mine.yaml").write_text("name: mine\nkind: ab\ntrain: train.jsonl\ntest: test.json\n")
    task = get_task(str(tmp_path / "mine.yaml"))
    assert (task.name, task.kind, len(task.train_data())) == ("mine", "ab", 3)
    assert task.eval_items("val")[0].positive == "B"  # no val file: val is the test file


def test_a_user_generation_task_reads_prompts(tmp_path):
    _files(tmp_path)
    (tmp_path / "gen.json").write_text(
        json.dumps(
            {
                "name": "g",
                "kind": "generation",
                "train": "train.jsonl",
                "test": "prompts.txt",
                "metric": "sentiment",
                "chat": False,
            }
        )
    )
    task = get_task(str(tmp_path / "gen.json"))
    assert (task.metric, task.chat, task.eval_items("test")) == (
        "sentiment",
        False,
        ["Once upon a time", "The weather"],
    )


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (
            "name: x\nkind: ab\ntrain: train.jsonl\ntest: test.json\nmetrc: sentiment\n",
            ConfigError,
            r"mine\.yaml:5: unknown key 'metrc' for TaskFile; allowed keys: name, kind, train, test, val, metric",
        ),
        (
            "name: x\nkind: chat\ntrain: train.jsonl\ntest: test.json\n",
            TaskError,
            r"kind must be one of ab, generation, reasoning; got 'chat'",
        ),
        (
            "name: x\nkind: generation\ntrain: train.jsonl\ntest: prompts.txt\n",
            TaskError,
            r"a generation task needs metric: one of sentiment, toxicity, refusal, distinct_2, repetition, fluency; got ''",
        ),
        (
            "name: x\nkind: ab\ntrain: train.jsonl\ntest: gone.json\n",
            TaskError,
            r"test file .*gone\.json does not exist",
        ),
        (
            "name: x\nkind: ab\ntrain: train.jsonl\ntest: test.json\ndirection: 2\n",
            TaskError,
            r"direction must be 1 or -1; got 2",
        ),
        ("- just a list\n", TaskError, r"a task file must be a mapping"),
    ],
)
def test_bad_task_files_are_refused_with_the_reason(tmp_path, body, error, message):
    _files(tmp_path)
    (tmp_path / "mine.yaml").write_text(body)
    with pytest.raises(error, match=message):
        get_task(str(tmp_path / "mine.yaml"))


def test_a_test_split_that_overlaps_train_is_refused(tmp_path):
    _files(tmp_path)
    (tmp_path / "mine.yaml").write_text("name: x\nkind: ab\ntrain: train.jsonl\ntest: train.jsonl\n")
    with pytest.raises(DatasetError, match=r"3 test questions also appear in train .* must not overlap"):
        get_task(str(tmp_path / "mine.yaml")).train_data()
