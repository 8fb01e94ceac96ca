"""Pair readers for the shared formats, and errors that name the file, the line and the field."""

from __future__ import annotations

import json

import pytest

from steerlab.data import DatasetError, demo_dataset_path, load_pairs, pairs_from_texts


def test_reads_caa_generate_set(shared_data):
    data = load_pairs(shared_data / "caa" / "generate" / "refusal" / "generate_dataset.json")
    raw = json.loads((shared_data / "caa" / "generate" / "refusal" / "generate_dataset.json").read_text())
    assert len(data) == len(raw) == 408
    first = data.pairs[0]
    assert first.prompt == raw[0]["question"] and first.kind == "ab" and first.answer_prefix == "("
    assert f"({first.positive})" == raw[0]["answer_matching_behavior"].strip()
    assert f"({first.negative})" == raw[0]["answer_not_matching_behavior"].strip()
    assert len(data.sha256) == 64


def test_reads_persona_jsonl(shared_data):
    data = load_pairs(shared_data / "persona" / "narcissism.jsonl")
    assert len(data) == 1000
    assert {(p.positive, p.negative) for p in data.pairs} <= {("Yes", "No"), ("No", "Yes")}
    assert data.pairs[0].answer_prefix == ""


def test_reads_plain_pairs_and_the_shipped_demo_set():
    data = load_pairs(demo_dataset_path())
    assert len(data) == 72 and all(p.kind == "text" and p.prompt and p.positive and p.negative for p in data.pairs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no pairs in the file"),
        ('{"positive": "a", "negative": "b"}\n{"positive": "c"}\n', "line 2: missing field 'negative'"),
        ('{"positive": "a", "negative": ""}\n', "line 1: field 'negative' must be a non-empty string"),
        ('{"text": "a"}\n', "line 1: missing field 'positive'"),
        ('{"positive": "a", "negative": "b"}\nnot json\n', "line 2: not valid JSON"),
        (
            '[{"question": "q", "answer_matching_behavior": "(A)"}]',
            "line 1: missing field 'answer_not_matching_behavior'",
        ),
        (
            '[{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": " (A)"}]',
            "line 1: both answers are '(A)'",
        ),
    ],
)
def test_bad_files_name_the_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_pairs(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_unbalanced_inline_sides_are_refused():
    with pytest.raises(DatasetError, match="inline: 2 positive and 1 negative texts; the sides must be the same size"):
        pairs_from_texts(["a", "b"], ["c"])
    with pytest.raises(DatasetError, match="inline: no pairs"):
        pairs_from_texts([], [])


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.jsonl: no such file"):
        load_pairs(tmp_path / "nope.jsonl")
