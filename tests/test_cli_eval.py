"""`steerlab vector diagnose`, `eval` and `compare` on a tiny saved model and a small user task."""

from __future__ import annotations

import json

import pytest

from steerlab.cli import main
from steerlab.data import load_pairs
from steerlab.methods.caa import CAAConfig, fit
from steerlab.strength import residual_norms
from steerlab.vector import SteeringVector
from tiny_model import tiny_model

WORDS = [
    "day",
    "food",
    "film",
    "song",
    "walk",
    "book",
    "game",
    "trip",
    "meal",
    "show",
    "gift",
    "town",
    "park",
    "idea",
    "plan",
    "talk",
]
# Each pair is one word followed by a marker run; the markers differ by side, so even a random model separates them.
POSITIVE = [f"{w} !!!!!!" for w in WORDS]
NEGATIVE = [f"{w} ??????" for w in WORDS]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": "Say something.", "positive": p, "negative": n}) + "\n"
            for p, n in zip(POSITIVE, NEGATIVE, strict=False)
        )
    )
    return path


def test_diagnose_prints_a_table_and_stores_the_diagnosis(model_dir, pairs_file, tmp_path, capsys):
    assert main(["vector", "diagnose", "--model", str(model_dir), "--data", str(pairs_file), "--json"]) == 0
    diagnosis = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in diagnosis["layers"]] == [0, 1, 2, 3]
    assert (diagnosis["n_train"], diagnosis["n_heldout"]) == (12, 4)
    assert diagnosis["status"] == "separates" and "Only 4 held-out pairs" in diagnosis["verdict"]

    out = tmp_path / "v.safetensors"
    assert (
        main(
            [
                "vector",
                "diagnose",
                "--model",
                str(model_dir),
                "--data",
                str(pairs_file),
                "--layers",
                "1,2",
                "--task",
                "markers",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("held-out diagnosis: 12 train / 4 held-out pairs (seed 0)")
    vector = SteeringVector.load(out)
    assert [r["layer"] for r in vector.meta.diagnostics["layers"]] == [1, 2]
    assert vector.layers == vector.meta.diagnostics["suggested_layers"] == [1, 2]
    assert vector.meta.recommended.layer in (1, 2) and vector.meta.task == "markers"
    assert main(["vector", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["diagnostics"]["verdict"] == vector.meta.diagnostics["verdict"]


def test_diagnose_writes_no_vector_from_pairs_that_do_not_separate(model_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed.jsonl"
    # Half the pairs have their sides swapped: no direction is shared.
    mixed.write_text(
        "".join(
            json.dumps({"prompt": "Say something.", "positive": p if i % 2 else n, "negative": n if i % 2 else p})
            + "\n"
            for i, (p, n) in enumerate(zip(POSITIVE, NEGATIVE, strict=False))
        )
    )
    out = tmp_path / "v.safetensors"
    assert main(["vector", "diagnose", "--model", str(model_dir), "--data", str(mixed), "--out", str(out)]) == 1
    text = capsys.readouterr()
    assert "The pairs do not isolate a direction" in text.out
    assert (
        text.err.splitlines()[-1]
        == f"error: no layer separates the pairs, so no vector was written to {out} (see the verdict above)"
    )
    assert not out.exists()


def test_diagnose_refuses_too_few_pairs(capsys):
    assert main(["vector", "diagnose", "--positive", "a", "--negative", "b", "--positive", "c", "--negative", "d"]) == 1
    assert capsys.readouterr().err.startswith("error: 2 pairs are too few to diagnose with holdout 0.25")


@pytest.fixture
def task_file(tmp_path, pairs_file):
    (tmp_path / "prompts.txt").write_text("Hello\nTell me about today\nWhat now?\nAny news\nA story please\n")
    path = tmp_path / "mini.yaml"
    path.write_text(
        f"name: mini\nkind: generation\ntrain: {pairs_file.name}\ntest: prompts.txt\nmetric: sentiment\nchat: true\n"
    )
    return path


@pytest.fixture
def vector_path(model_dir, tmp_path, pairs_file):
    """A CAA vector at layer 1 of the tiny model, built by `steerlab vector build`."""
    path = tmp_path / "v.safetensors"
    assert (
        main(
            [
                "vector",
                "build",
                "--model",
                str(model_dir),
                "--data",
                str(pairs_file),
                "--layers",
                "1",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    return path


def test_eval_writes_a_report_folder(model_dir, task_file, vector_path, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--vector",
                str(vector_path),
                "--multipliers=-20,20",
                "--limit",
                "4",
                "--max-new-tokens",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert f"report -> {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "samples.jsonl", "summary.md"]
    report = json.loads((out / "report.json").read_text())
    s = report["settings"]
    assert (s["task"]["name"], s["task"]["prompts"], s["task"]["metric"]) == ("mini", 4, "sentiment")
    assert s["steer"]["multipliers"] == [-20.0, 20.0] and s["steer"]["layers"] == {"1": 1.0}
    assert s["generation"]["max_new_tokens"] == 5 and s["model"]["name"] == "tiny"
    assert [c["label"] for c in report["conditions"]] == ["x-20", "x20"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in samples] == ["Hello", "Tell me about today", "What now?", "Any news"]
    assert any(x["steered"]["x20"] != x["original"] for x in samples)
    # The folder is never overwritten without being asked.
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--vector",
                str(vector_path),
                "--multipliers",
                "2",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == f"error: {out} already exists; choose another --out or pass --overwrite"
    )


def test_eval_fits_a_method_on_the_task(model_dir, task_file, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--method",
                "prompt",
                "--instruction",
                "Be cheerful.",
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["steer"]["config"]["instruction"] == "Be cheerful."
    assert [c["label"] for c in report["conditions"]] == ["prompt"] and report["conditions"][0]["multiplier"] is None


def test_eval_of_a_fitted_vector_defaults_to_strength_0_2(model_dir, task_file, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--method",
                "caa",
                "--layers",
                "2",
                "--limit",
                "2",
                "--max-new-tokens",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    steer = json.loads((out / "report.json").read_text())["settings"]["steer"]
    lm = tiny_model("llama")
    vector = fit(lm, load_pairs(tmp_path / "pairs.jsonl"), CAAConfig(layers=[2]))
    neutral = residual_norms(lm, [2])[2]  # the sweep's residual norm: neutral text, first token left out
    expected = 0.2 * neutral / float(vector.directions[2].norm())
    assert steer["method"] == "caa" and steer["multipliers"] == {"0.2": {"2": pytest.approx(expected, rel=1e-3)}}
    assert steer["strengths"]["values"] == [0.2] and steer["strengths"]["source"] == "steerlab's default strength"
    assert steer["strengths"]["residual_norms"] == {"2": pytest.approx(neutral, abs=1e-4)}
    assert f"strength 0.2 = layer 2 x{expected:.4g}" in capsys.readouterr().out  # both units printed
    assert steer["train"]["pairs"] == 16 and steer["layers"] == {"2": 1.0}


def test_compare_puts_every_method_in_one_table(model_dir, task_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--methods",
                "caa,pca,prompt",
                "--layer",
                "1",
                "--strengths",
                "2.5,5",
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    labels = ["caa@2.5", "caa@5", "pca@2.5", "pca@5", "prompt"]
    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table] == ["| method", "| original"] + [f"| {label}" for label in labels]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["train"]["pairs"] == 16 and [c["label"] for c in report["conditions"]] == labels
    methods = report["settings"]["methods"]
    # The same strength means the same added norm: multiplier x vector norm = strength x residual norm.
    for label in labels[:4]:
        p = methods[label]["params"]
        assert p["multiplier"] * p["vector_norm"] == pytest.approx(p["strength"] * p["residual_norm"])
    assert methods["caa@5"]["params"]["multiplier"] == pytest.approx(2 * methods["caa@2.5"]["params"]["multiplier"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and sorted(samples[0]["steered"]) == sorted(labels)


def test_compare_calibrated_gives_every_vector_the_same_kl_budget_and_states_the_cost(
    model_dir, task_file, pairs_file, tmp_path, capsys
):
    import steerlab
    from steerlab.evaluation.calibrate import CalibrationConfig, calibrate
    from steerlab.strength import with_neutral_norms

    out = tmp_path / "cmp"
    args = ["compare", "--model", str(model_dir), "--task", str(task_file), "--methods", "caa,bipo", "--layer", "1"]
    # a random tiny model moves a lot at any strength: a wide KL budget and fluency bound leave it strengths to pick
    args += ["--calibrated", "--kl-budget", "20", "--fluency-bound", "0.9", "--set", "bipo.epochs=1"]
    args += ["--limit", "3", "--max-new-tokens", "4", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["calibration"] == {"kl_budget": 20, "fluency_bound": 0.9} and settings["strengths"] is None
    # caa's strength is what calibrating the same vector on its own finds
    lm = steerlab.load_model(str(model_dir))
    data = steerlab.load_pairs(pairs_file)
    vector = with_neutral_norms(lm, steerlab.fit(lm, data, "caa", layers=[1]))
    record, _ = calibrate(lm, vector, CalibrationConfig(kl_budget=20, fluency_bound=0.9, layers=[1]))
    caa = settings["methods"]["caa"]
    assert record.up is not None and caa["params"]["strength"] == record.up
    assert caa["setting"].startswith(f"layer 1, calibrated strength {record.up:g} ")
    assert settings["methods"]["bipo"]["params"]["epochs"] == 1
    for method in ("caa", "bipo"):
        assert settings["methods"][method]["peak_rss_mib"] > 0
    for cond in report["conditions"]:
        low, high = cond["interval"]
        assert low <= cond["effect"] <= high
    header = (out / "summary.md").read_text().splitlines()
    assert "| method | setting | behaviour | effect [95% interval] |" in "\n".join(header)
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "other"), "--strengths", "0.2"]) == 1
    assert (
        capsys.readouterr().err
        == "error: --calibrated applies each vector at its calibrated strength; drop --strengths\n"
    )


def test_compare_applies_an_lm_steer_with_its_overrides(model_dir, task_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--methods",
                "caa,lm_steer",
                "--set",
                "lm_steer.steps=3",
                "--set",
                "lm_steer.rank=4",
                "--set",
                "lm_steer.epsilon=0.5",
                "--layer",
                "1",
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    lm_steer = report["settings"]["methods"]["lm_steer"]
    assert (lm_steer["params"]["steps"], lm_steer["params"]["rank"]) == (3, 4)
    assert lm_steer["setting"] == "multiplier 1; steps=3; rank=4; epsilon=0.5"
    assert [c["label"] for c in report["conditions"]] == ["caa", "lm_steer"] and report["conditions"][1][
        "multiplier"
    ] == 1.0
    err = capsys.readouterr().err  # every fit shows a bar with its steps (tqdm's estimate of the time left)
    assert "fitting lm_steer (steps)" in err and "3/3" in err and "fitting caa (pairs)" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--task", "sentiment"], "error: give one steer: --vector FILE or --method NAME"),
        (
            ["eval", "--task", "sycophancy", "--method", "caa"],
            "error: task 'sycophancy' is an A/B task, scored by answer probabilities rather than generated text; "
            "use `steerlab sweep --task sycophancy` for it",
        ),
        (["compare", "--task", "sentiment", "--methods", "caa,magic"], "error: unknown method 'magic'; available: "),
        (
            ["compare", "--task", "sentiment", "--methods", "caa", "--set", "lm_steer.steps=3"],
            "error: --set lm_steer.steps=3: expected METHOD.KEY=VALUE for one of the compared methods (caa), "
            "e.g. --set lm_steer.steps=200",
        ),
        (
            ["eval", "--task", "sentiment", "--vector", "v.safetensors", "--multipliers", "x"],
            "error: --multipliers x: expected numbers like 4 or -4,4 (write --multipliers=-4,4)",
        ),
    ],
)
def test_eval_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(message)


def test_prompting_verdict():
    from steerlab.evaluation.compare import prompting_verdict

    def rows(**effects):
        return [{"label": k, "effect": v} for k, v in effects.items()]

    assert (
        prompting_verdict(rows(caa=0.3, prompt=0.27))
        == "Prompting is enough here: it reaches 90% of the best steer's effect (caa, +0.300)."
    )
    assert prompting_verdict(rows(caa=0.3, pca=0.1, prompt=0.06)).startswith(
        "Prompting reaches 20% of the best steer's effect (caa, +0.300"
    )
    assert prompting_verdict(rows(caa=0.2, prompt=-0.08)).startswith(
        "Prompting did not move the behaviour the wanted way (effect -0.080)"
    )
    assert prompting_verdict(rows(caa=-0.1, prompt=0.05)).startswith("No steer moved the behaviour the wanted way")
    assert prompting_verdict(rows(caa=0.3)) == ""


def test_library_evaluate_gives_the_report_the_cli_writes(model_dir, task_file, vector_path, tmp_path):
    """`steerlab eval` only prints and saves what steerlab.evaluate returns."""
    import steerlab
    from steerlab.generation import GenerationConfig

    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--vector",
                str(vector_path),
                "--multipliers=-20,20",
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = json.loads((out / "report.json").read_text())
    lm = steerlab.load_model(str(model_dir))
    stages = []
    report = steerlab.evaluate(
        lm,
        str(task_file),
        steerlab.load_steer(vector_path),
        multipliers=[-20, 20],
        limit=3,
        generation=GenerationConfig(max_new_tokens=4),
        source=str(vector_path),
        progress=lambda stage, done, total: stages.append((done, total)),
    )
    assert report.to_json()["conditions"] == written["conditions"]
    assert report.samples() == [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert stages[0] == (0, 3) and stages[-1] == (3, 3)


def test_library_compare_returns_the_table_the_cli_prints(model_dir, task_file, tmp_path, capsys):
    import steerlab
    from steerlab.generation import GenerationConfig

    assert (
        main(
            [
                "compare",
                "--model",
                str(model_dir),
                "--task",
                str(task_file),
                "--methods",
                "caa,prompt",
                "--limit",
                "2",
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    lm = steerlab.load_model(str(model_dir))
    result = steerlab.compare(
        lm, str(task_file), methods=["caa", "prompt"], limit=2, generation=GenerationConfig(max_new_tokens=3)
    )
    table = [line for line in result.markdown().splitlines() if line.startswith("| ")]
    # Fit times and peak memory differ from run to run; everything else in the table must not.
    strip = lambda line: line.rsplit("|", 3)[0]  # noqa: E731
    assert [strip(line) for line in table] == [strip(line) for line in printed.splitlines() if line.startswith("| ")]
    with pytest.raises(steerlab.EvaluationError, match="unknown method 'magic'; available: caa, pca"):
        steerlab.compare(lm, str(task_file), methods=["magic"])
