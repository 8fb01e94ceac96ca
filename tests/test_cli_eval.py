"""`steerlab vector diagnose`, `eval` and `compare` on a tiny saved model and a small user task."""

from __future__ import annotations

import json

import pytest

from steerlab.cli import main
from steerlab.vector import SteeringVector
from tiny_model import tiny_model

WORDS = ["day", "food", "film", "song", "walk", "book", "game", "trip", "meal", "show", "gift", "town",
         "park", "idea", "plan", "talk"]
# Each pair is one word followed by a marker run; the markers differ by side, so even a random model separates them.
POSITIVE = [f"{w} !!!!!!" for w in WORDS]
NEGATIVE = [f"{w} ??????" for w in WORDS]


@pytest.fixture
def model_dir(tmp_path):
    lm = tiny_model("llama")
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": "Say something.", "positive": p, "negative": n}) + "\n"
                            for p, n in zip(POSITIVE, NEGATIVE)))
    return path


def test_diagnose_prints_a_table_and_stores_the_diagnosis(model_dir, pairs_file, tmp_path, capsys):
    assert main(["vector", "diagnose", "--model", str(model_dir), "--data", str(pairs_file), "--json"]) == 0
    diagnosis = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in diagnosis["layers"]] == [0, 1, 2, 3]
    assert (diagnosis["n_train"], diagnosis["n_heldout"]) == (12, 4)
    assert diagnosis["status"] == "separates" and "Only 4 held-out pairs" in diagnosis["verdict"]

    out = tmp_path / "v.safetensors"
    assert main(["vector", "diagnose", "--model", str(model_dir), "--data", str(pairs_file), "--layers", "1,2",
                 "--task", "markers", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("held-out diagnosis: 12 train / 4 held-out pairs (seed 0)")
    vector = SteeringVector.load(out)
    assert [r["layer"] for r in vector.meta.diagnostics["layers"]] == [1, 2]
    assert vector.layers == vector.meta.diagnostics["suggested_layers"] == [1, 2]
    assert vector.meta.recommended["layer"] in (1, 2) and vector.meta.task == "markers"
    assert main(["vector", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["diagnostics"]["verdict"] == vector.meta.diagnostics["verdict"]


def test_diagnose_writes_no_vector_from_pairs_that_do_not_separate(model_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed.jsonl"
    # Half the pairs have their sides swapped: no direction is shared.
    mixed.write_text("".join(json.dumps({"prompt": "Say something.", "positive": p if i % 2 else n,
                                         "negative": n if i % 2 else p}) + "\n"
                             for i, (p, n) in enumerate(zip(POSITIVE, NEGATIVE))))
    out = tmp_path / "v.safetensors"
    assert main(["vector", "diagnose", "--model", str(model_dir), "--data", str(mixed), "--out", str(out)]) == 1
    text = capsys.readouterr()
    assert "The pairs do not isolate a direction" in text.out
    assert text.err.splitlines()[-1] == f"error: no layer separates the pairs, so no vector was written to {out} (see the verdict above)"
    assert not out.exists()


def test_diagnose_refuses_too_few_pairs(capsys):
    assert main(["vector", "diagnose", "--positive", "a", "--negative", "b", "--positive", "c", "--negative", "d"]) == 1
    assert capsys.readouterr().err.startswith("error: 2 pairs are too few to diagnose with holdout 0.25")
