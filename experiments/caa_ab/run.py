"""The CAA A/B protocol on SmolLM2 and Qwen2.5-Coder-0.5B, and sentiment sweeps on both (docs/results.md
sections 1 and 3).

  python experiments/caa_ab/run.py measure ab smollm2 --all-positions   # section 1: all 30 layers
  python experiments/caa_ab/run.py measure ab qwen --limit 20 --train-limit 64 --layer-step 3 --side-limit 20
  python experiments/caa_ab/run.py measure sentiment smollm2 --limit 8 --layer-step 3   # and the same with qwen
  python experiments/caa_ab/run.py render                               # both sections from results.json (no model)

Each step saves its full JSON (every cell, per-question scores, vectors, sweeps) under
experiments/caa_ab/out/<model>/ as it finishes, so a stopped run resumes; then it distils what the sections show
into results.json beside this script (committed) and redraws the sections' figures in docs/results/. Runs pin
torch to --threads (default 1: on this shared 2-core machine two threads per process ran 5-8x slower than one).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from common import load_study_model, save_json, study_parser, write_results_section  # noqa: E402

from steerlab.evaluation.ab import UNSTEERED, Cell, at_chance, load_ab_items, score_ab  # noqa: E402
from steerlab.evaluation.fluency import weighted_ngram_entropy  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.sweep import SweepConfig, build_sweep_vector, generate_grid, save_sweep, sweep  # noqa: E402
from steerlab.evaluation.sweep_plots import curves_png  # noqa: E402
from steerlab.evaluation.tasks import CAA_BEHAVIOURS, data_root, get_task  # noqa: E402
from steerlab.files import write_file  # noqa: E402
from steerlab.strength import multiplier_for  # noqa: E402
from steerlab.vector import SteeringVector  # noqa: E402

OUT = HERE / "out"
RESULTS = HERE / "results.json"
FIGURES = ROOT / "docs" / "results"
MODELS = ("smollm2", "qwen")
STRENGTH = 0.2  # the norm-relative strength of the per-layer curves (the demo's default strength)
VAL_STRENGTHS = [-0.2, 0.2, 0.4]
PAPER = {"sycophancy": (0.64, 0.76, 0.82), "hallucination": (0.48, 0.74, 0.88), "refusal": (0.42, 0.74, 0.89)}
# load_model names a GGUF model after its file name up to the first dot ("qwen2" for qwen2.5-...gguf).
DISPLAY = {"qwen2": "Qwen2.5-Coder-0.5B-Instruct"}
CURVES = ("raw -1", "raw +1", "relative -0.2", "relative +0.2")


def layers_for(lm, step: int) -> list[int]:
    return list(range(0, lm.num_layers, step))


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


# ---- measure: A/B behaviours --------------------------------------------------------------------------


def run_ab(args) -> None:
    out = OUT / args.model
    lm = load_study_model(args.model)
    layers = layers_for(lm, args.layer_step)
    vectors = {}
    for behaviour in CAA_BEHAVIOURS:
        path = out / f"{behaviour}.json"
        vec_path = out / f"{behaviour}.safetensors"
        if path.exists():
            vectors[behaviour] = SteeringVector.load(vec_path)
            continue
        task = get_task(behaviour)
        started = time.perf_counter()
        data = task.train_data(limit=args.train_limit)
        vector = build_sweep_vector(lm, data, layers, task=behaviour)
        fit_s = time.perf_counter() - started
        config = SweepConfig(layers=layers, strengths=VAL_STRENGTHS, split="val", limit=args.limit, fluency_bound=0.1)
        val, vector = sweep(lm, task, config, vector=vector)
        save_sweep(out / f"{behaviour}-val-sweep", val, vector, overwrite=True)
        val_s = time.perf_counter() - started - fit_s
        middle = min(layers, key=lambda layer: abs(layer - lm.default_layer()))
        up = val.recommended.up if val.recommended else None
        rec = (
            up.to_json()
            if up
            else {
                "layer": middle,
                "value": STRENGTH,
                "multiplier": multiplier_for(vector, middle, STRENGTH),
                "fallback": True,
            }
        )
        cells = [UNSTEERED]
        for layer in layers:
            cells += [
                Cell(layer, -1.0),
                Cell(layer, 1.0),
                Cell(layer, -multiplier_for(vector, layer, STRENGTH)),
                Cell(layer, multiplier_for(vector, layer, STRENGTH)),
            ]
        rec_cells = [Cell(rec["layer"], -rec["multiplier"]), Cell(rec["layer"], rec["multiplier"])]
        cells += [c for c in rec_cells if c not in cells]
        items = task.eval_items("test", limit=args.limit)
        grid = score_ab(lm, items, vector, cells)
        test_s = time.perf_counter() - started - fit_s - val_s
        all_pos = score_ab(lm, items, vector, rec_cells, positions="all") if args.all_positions else None
        vector.save(vec_path, overwrite=True)
        vectors[behaviour] = vector
        save_json(
            path,
            {
                "model": lm.name,
                "layers": layers,
                "train_pairs": len(data),
                "test_items": len(items),
                "val_items": val.items,
                "threads": torch.get_num_threads(),
                "seconds": {"fit": fit_s, "val": val_s, "test": test_s},
                "recommended": rec,
                "val": val.to_dict(),
                "vector_norms": {str(k): v for k, v in vector.norms().items()},
                "residual_norms": vector.meta.residual_norms,
                "cells": [[c.layer, c.multiplier] for c in cells],
                "test": [grid.summary(i) for i in range(len(cells))],
                "all_positions": [all_pos.summary(i) for i in range(2)] if all_pos else None,
            },
        )
        print(f"{behaviour}: done in {time.perf_counter() - started:.0f}s", flush=True)
    side = out / "side_effects.json"
    if args.side_effects and not side.exists():
        run_side_effects(lm, vectors, out, args.side_limit, side)
    run_key_cells(lm, out)


def run_key_cells(lm, out: Path) -> None:
    """Re-score the unsteered and recommended-layer cells of finished runs, keeping per-question scores (for errors)."""
    for behaviour in CAA_BEHAVIOURS:
        run = read(out / f"{behaviour}.json")
        if not run or "key" in run:
            continue
        vector = SteeringVector.load(out / f"{behaviour}.safetensors")
        rec = run["recommended"]
        layer, m = rec["layer"], rec["multiplier"]
        cells = [UNSTEERED, Cell(layer, -1.0), Cell(layer, 1.0), Cell(layer, -m), Cell(layer, m)]
        items = get_task(behaviour).eval_items("test", limit=run["test_items"])
        grid = score_ab(lm, items, vector, cells)
        run["key"] = {
            "cells": [[c.layer, c.multiplier] for c in cells],
            "summaries": [grid.summary(i) for i in range(len(cells))],
            "item_scores": [[round(x, 5) for x in grid.item_scores(i).tolist()] for i in range(len(cells))],
        }
        save_json(out / f"{behaviour}.json", run)


def run_side_effects(lm, vectors: dict, out: Path, limit: int, path: Path) -> None:
    """MMLU and TruthfulQA A/B accuracy, unsteered and with each behaviour's vector at its recommended cell, +/-."""
    names = list(vectors)
    cells, labels = [UNSTEERED], ["unsteered"]
    for i, name in enumerate(names):
        rec = json.loads((out / f"{name}.json").read_text())["recommended"]
        for sign in (-1, 1):
            cells.append(Cell(rec["layer"], sign * rec["multiplier"], i))
            labels.append(f"{name} {'-' if sign < 0 else '+'}")
    root = data_root()
    result = {"limit": limit, "labels": labels}
    started = time.perf_counter()
    for name, rel in (("mmlu", "caa/test/mmlu/mmlu.json"), ("truthfulqa", "caa/test/truthfulqa/truthful_qa.json")):
        grid = score_ab(lm, load_ab_items(root / rel, limit), [vectors[n] for n in names], cells)
        result[name] = [grid.summary(i) for i in range(len(cells))]
    result["seconds"] = time.perf_counter() - started
    save_json(path, result)


# ---- measure: sentiment -------------------------------------------------------------------------------


def run_sentiment(args) -> None:
    out = OUT / args.model
    path = out / "sentiment.json"
    if path.exists():
        return
    lm = load_study_model(args.model)
    task = get_task("sentiment")
    layers = layers_for(lm, args.layer_step)
    started = time.perf_counter()
    config = SweepConfig(
        layers=layers,
        strengths=[0.1, 0.2, 0.4],
        limit=args.limit,
        train_limit=args.train_limit,
        max_new_tokens=args.max_new_tokens,
        fluency_bound=0.2,
    )
    val, vector = sweep(lm, task, config)
    save_sweep(out / "sentiment-val-sweep", val, vector, overwrite=True)
    rec = val.recommended.up.to_json() if val.recommended and val.recommended.up else None
    result = {
        "model": lm.name,
        "layers": layers,
        "val": val.to_dict(),
        "threads": torch.get_num_threads(),
        "sweep_seconds": time.perf_counter() - started,
        "test": {},
    }
    if rec:
        root = data_root()
        groups = {"neutral": (task.eval_items("test", limit=args.test_limit), [0.0, 1.0, -1.0])}
        for control in task.controls:
            groups[control.name] = (control.prompts(root)[: args.test_limit], [0.0, control.sign])
        for name, (prompts, signs) in groups.items():
            cells = [Cell(rec["layer"], s * rec["multiplier"]) if s else UNSTEERED for s in signs]
            texts = generate_grid(lm, prompts, vector, cells, chat=task.chat, max_new_tokens=args.max_new_tokens)
            result["test"][name] = [
                {
                    "sign": s,
                    "vader": sum(vader_scores(t)) / len(t),
                    "fluency": sum(map(weighted_ngram_entropy, t)) / len(t),
                    "example": t[0],
                }
                for s, t in zip(signs, texts, strict=False)
            ]
            result["test"][name + " prompts"] = len(prompts)
    result["seconds"] = time.perf_counter() - started
    save_json(path, result)


# ---- distil: out/ -> results.json and the figures -------------------------------------------------------


def _cell(run: dict, layer: int, mult: float) -> dict:
    for (cell_layer, m), summary in zip(run["cells"], run["test"], strict=False):
        if cell_layer == layer and abs(m - mult) < 1e-6:
            return summary
    raise KeyError((layer, mult))


def _se(base: list[float], steered: list[float]) -> float:
    """Standard error of the mean per-question change in p(matching)."""
    diffs = [b - a for a, b in zip(base, steered, strict=False)]
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))


def distil_behaviour(run: dict) -> dict:
    """One behaviour's run as its rows show it: unsteered, the recommended cell (-1/+1 raw, -s/+s relative),
    the range over every steered cell, and the per-layer curves (4 cells per layer after the unsteered one)."""
    base, n, rec = run["test"][0], run["test_items"], run["recommended"]
    layer, m = rec["layer"], rec["multiplier"]
    steered = run["test"][1:]
    layers = run["layers"]
    curves = {
        name: [run["test"][1 + 4 * i + k]["p_matching"] for i in range(len(layers))] for k, name in enumerate(CURVES)
    }
    key = run.get("key")
    return {
        "unsteered": {
            **{
                k: base[k]
                for k in ("p_matching", "p_matching_file_order", "accuracy", "first_answer_share", "answer_mass")
            },
            "first_in_both": round(base["first_in_both_orders"] * n),
            "second_in_both": round(base["second_in_both_orders"] * n),
            "at_chance": at_chance(base, n),
        },
        "recommended": rec,
        "raw": [_cell(run, layer, -1.0)["p_matching"], _cell(run, layer, 1.0)["p_matching"]],
        "relative": [_cell(run, layer, -m)["p_matching"], _cell(run, layer, m)["p_matching"]],
        "se": [_se(key["item_scores"][0], key["item_scores"][i]) for i in (3, 4)] if key else None,
        "flipped_plus": _cell(run, layer, m)["flipped"],
        "mass_plus": _cell(run, layer, m)["answer_mass"],
        "steered_range": {
            "p_matching": [min(x["p_matching"] for x in steered), max(x["p_matching"] for x in steered)],
            "answer_mass": [min(x["answer_mass"] for x in steered), max(x["answer_mass"] for x in steered)],
        },
        "all_positions": [x["p_matching"] for x in run["all_positions"]] if run.get("all_positions") else None,
        "per_layer": {
            **curves,
            "multiplier": [run["cells"][1 + 4 * i + 3][1] for i in range(len(layers))],
            "norm_ratio": [run["vector_norms"][str(x)] / run["residual_norms"][str(x)] for x in layers],
        },
        "seconds": run["seconds"],
    }


def distil_sentiment(run: dict) -> dict:
    rec, t = run["val"]["recommended"], run["test"]
    rec = rec.get("up", rec) if rec else rec  # sweeps store the "up" pick under "up" (older runs: at top level)
    if not rec:
        return {"recommended": None, "note": run["val"]["note"]}
    neutral = {row["sign"]: row for row in t["neutral"]}
    controls = {
        k: [v[0]["vader"], v[1]["vader"]] for k, v in t.items() if k != "neutral" and not k.endswith(" prompts")
    }
    return {
        "recommended": {k: rec[k] for k in ("layer", "value", "multiplier")},
        "neutral_vader": [neutral[-1.0]["vader"], neutral[0.0]["vader"], neutral[1.0]["vader"]],
        "neutral_fluency": [neutral[0.0]["fluency"], neutral[1.0]["fluency"]],
        "controls": controls,
        "seconds": run["seconds"],
    }


def draw_figures(model: str, record: dict) -> None:
    """The per-layer curves of each behaviour and the sentiment validation heatmap (copied from its sweep)."""
    for b, run in record["behaviours"].items():
        png = curves_png(
            record["layers"],
            {name: run["per_layer"][name] for name in CURVES},
            title=f"{b}: {record['model']}, test set, both orders",
            y_label="p(matching), debiased",
            reference=run["unsteered"]["p_matching"],
            limits=(0.0, 1.0),
        )
        write_file(FIGURES / f"ab_{b}_{model}.png", png, overwrite=True)
    heatmap = OUT / model / "sentiment-val-sweep" / "effect.png"
    if heatmap.exists():
        write_file(FIGURES / f"sentiment_effect_{model}.png", heatmap.read_bytes(), overwrite=True)


def distil(model: str) -> None:
    """This model's part of results.json from out/<model>/, and its figures."""
    out = OUT / model
    runs = {b: r for b in CAA_BEHAVIOURS if (r := read(out / f"{b}.json"))}
    sentiment = read(out / "sentiment.json")
    results = read(RESULTS) or {}
    record = results.get(model, {})
    if runs:
        first = next(iter(runs.values()))
        record.update({k: first[k] for k in ("train_pairs", "val_items", "test_items", "layers", "threads")})
        side = read(out / "side_effects.json")
        record.update(
            model=DISPLAY.get(first["model"], first["model"]),
            steered_cells=len(first["test"]) - 1,
            behaviours={b: distil_behaviour(r) for b, r in runs.items()},
            side_effects={
                "limit": side["limit"],
                "labels": side["labels"],
                **{k: [s["accuracy"] for s in side[k]] for k in ("mmlu", "truthfulqa")},
            }
            if side
            else None,
        )
    if sentiment:
        record["sentiment"] = {
            "model": DISPLAY.get(sentiment["model"], sentiment["model"]),
            **distil_sentiment(sentiment),
        }
    if runs and sentiment:
        record.pop("provenance", None)  # nothing reconstructed is left in this model's record
    results[model] = record
    save_json(RESULTS, results)
    draw_figures(model, record)


# ---- render -------------------------------------------------------------------------------------------


def _f(x: float) -> str:
    return f"{x:.2f}"


def unsteered_lines(record: dict) -> list[str]:
    lines = [
        "**Unsteered model.** p(matching) is normalised over the two answers; *debiased* averages the two "
        "choice orders. 'A-share' is the mean p(A)/(p(A)+p(B)); 'A in both orders' counts questions whose "
        "preferred letter is A whatever text it labels.\n",
        "| behaviour | p(matching) debiased | file order only | accuracy | A-share | A in both orders | B in both orders | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    n = record["test_items"]
    for b, run in record["behaviours"].items():
        s = run["unsteered"]
        chance = "**at chance**" if s["at_chance"] else ""
        lines.append(
            f"| {b} | {_f(s['p_matching'])} | {_f(s['p_matching_file_order'])} | {_f(s['accuracy'])} | "
            f"{_f(s['first_answer_share'])} | {s['first_in_both']}/{n} | {s['second_in_both']}/{n} | {chance} |"
        )
    return [
        *lines,
        "\n'At chance': accuracy within two binomial standard errors of 0.5 and debiased p(matching) "
        "within 0.05 of 0.5.\n",
    ]


def recommended_lines(record: dict) -> list[str]:
    lines = [
        "**At the recommended layer.** The layer and strength come from the validation sweep (largest rise "
        "in debiased p(matching) among norm-relative strengths 0.2 and 0.4 whose answer mass p(A)+p(B) keeps "
        "90% of the unsteered one); the numbers are test-set debiased p(matching) at -/0/+. 'flipped' is the "
        "share of test questions whose preferred answer (order-averaged) differs from the unsteered model's "
        "under +; the bracket gives the standard error of the mean per-question change at -s and +s.\n",
        "| behaviour | layer (val) | raw -1 / 0 / +1 | norm-relative -s / 0 / +s | s | flipped at +s | answer mass at +s | Llama-2-7b-chat, layer 13, -1 / 0 / +1 (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, run in record["behaviours"].items():
        rec, base = run["recommended"], run["unsteered"]
        raw = [run["raw"][0], base["p_matching"], run["raw"][1]]
        rel = [run["relative"][0], base["p_matching"], run["relative"][1]]
        note = " (no cell passed on val; middle layer shown)" if rec.get("fallback") else ""
        se = " (+-" + " / +-".join(f"{x:.3f}" for x in run["se"]) + ")" if run["se"] else ""
        lines.append(
            f"| {b} | {rec['layer']}{note} | {' / '.join(map(_f, raw))} | {' / '.join(map(_f, rel))}{se} | "
            f"{rec['value']:g} (x{rec['multiplier']:.1f}) | {_f(run['flipped_plus'])} | "
            f"{_f(run['mass_plus'])} (unsteered {_f(base['answer_mass'])}) | {' / '.join(map(str, PAPER[b]))} |"
        )
    spread = [
        f"{b}: {r['steered_range']['p_matching'][0]:.3f}-{r['steered_range']['p_matching'][1]:.3f} (unsteered "
        f"{r['unsteered']['p_matching']:.3f}; answer mass {r['steered_range']['answer_mass'][0]:.2f}-"
        f"{r['steered_range']['answer_mass'][1]:.2f}, unsteered {r['unsteered']['answer_mass']:.2f})"
        for b, r in record["behaviours"].items()
    ]
    lines.append(
        f"\nDebiased p(matching) over all {record['steered_cells']} steered test cells (every layer, raw and "
        "relative, both signs): " + "; ".join(spread) + ".\n"
    )
    runs = {b: r for b, r in record["behaviours"].items() if r["all_positions"]}
    if runs:
        lines += [
            "\n**Steering every token instead** (the question's tokens too), same layer and strength, test set:\n",
            "| behaviour | answer tokens only: -s / +s | all tokens: -s / +s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {b} | {' / '.join(map(_f, r['relative']))} | {' / '.join(map(_f, r['all_positions']))} |"
            for b, r in runs.items()
        ]
    return lines


def per_layer_lines(record: dict, model: str) -> list[str]:
    lines = ["\n**Per layer** (test set, debiased p(matching); raw multiplier +-1 and norm-relative +-0.2):\n"]
    for b, run in record["behaviours"].items():
        curves = run["per_layer"]
        lines += [
            f"![{b} per layer](results/ab_{b}_{model}.png)\n",
            f"<details><summary>{b}: table per layer</summary>\n",
            "| layer | raw -1 | raw +1 | rel -0.2 | rel +0.2 | multiplier for rel 0.2 | vector norm / residual norm |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, layer in enumerate(record["layers"]):
            lines.append(
                f"| {layer} | "
                + " | ".join(_f(curves[name][i]) for name in CURVES)
                + f" | {curves['multiplier'][i]:.1f} | {curves['norm_ratio'][i]:.3f} |"
            )
        lines.append("\n</details>\n")
    return lines


def ab_section(record: dict | None, model: str) -> str:
    if not record or not record.get("behaviours"):
        return f"_No A/B measurements for {model} yet: run `python experiments/caa_ab/run.py measure ab {model}`._\n"
    n_layers = len(record["layers"])
    lines = [
        f"Model: {record['model']}; {record['train_pairs']} training pairs per behaviour (from the CAA generate "
        f"set less its last 50), the last 50 generate items as validation ({record['val_items']} scored), "
        f"{record['test_items']} held-out test questions, each asked in both choice orders; "
        f"{n_layers} layers ({', '.join(map(str, record['layers'])) if n_layers < 30 else '0-29'}); "
        f"torch threads {record['threads']}.\n"
    ]
    lines += unsteered_lines(record) + recommended_lines(record) + per_layer_lines(record, model)
    side = record.get("side_effects")
    if side:
        lines += [
            f"**Side effects** (CAA's checks): A/B accuracy on the first {side['limit']} MMLU and TruthfulQA "
            "questions of the shared sets, both orders averaged, with each vector at its recommended layer "
            "and strength:\n",
            "| steering | " + " | ".join(side["labels"]) + " |",
            "|---|" + "---|" * len(side["labels"]),
        ]
        lines += [f"| {name} accuracy | " + " | ".join(map(_f, side[name])) + " |" for name in ("mmlu", "truthfulqa")]
    lines.append(
        "\nTime (seconds, this shared CPU): "
        + "; ".join(
            f"{b}: vectors {r['seconds']['fit']:.0f}, validation sweep {r['seconds']['val']:.0f}, test grid "
            f"{r['seconds']['test']:.0f}"
            for b, r in record["behaviours"].items()
        )
        + ".\n"
    )
    return "\n".join(lines) + "\n"


def sentiment_row(s: dict | None) -> list[str]:
    if not s:
        return []
    if not s["recommended"]:
        return [f"| {s['model']} | {s['note']} | | | | |"]
    rec, vader, fluency = s["recommended"], s["neutral_vader"], s["neutral_fluency"]
    ctrl = "; ".join(f"{k}: {a:+.2f} -> {b:+.2f}" for k, (a, b) in s["controls"].items())
    return [
        f"| {s['model']} | layer {rec['layer']}, strength {rec['value']:g} (x{rec['multiplier']:.1f}) | "
        f"{' / '.join(f'{v:+.2f}' for v in vader)} | {fluency[0]:.2f} -> {fluency[1]:.2f} | {ctrl} | "
        f"{s['seconds']:.0f} |"
    ]


def smollm2_section(results: dict) -> str:
    return "\n".join(
        [
            "## 1. The CAA A/B protocol on SmolLM2-135M-Instruct\n",
            ab_section(results.get("smollm2"), "smollm2"),
            "Commands: `python experiments/caa_ab/run.py measure ab smollm2 --all-positions` (it renders "
            "the sections when done; `python experiments/caa_ab/run.py render` alone re-renders them from "
            "experiments/caa_ab/results.json); one behaviour's sweep alone: `steerlab sweep --task refusal "
            "--train-limit 200 --strengths=-0.2,0.2,0.4 --out sweeps/refusal`.\n",
        ]
    )


def qwen_section(results: dict) -> str:
    sentiment = {m: results.get(m, {}).get("sentiment") for m in MODELS}
    figures = [f"![sentiment sweep, {m}](results/sentiment_effect_{m}.png)" for m in MODELS if sentiment[m]]
    return "\n".join(
        [
            "## 3. A larger model: Qwen2.5-Coder-0.5B-Instruct\n",
            "The same A/B protocol on Qwen2.5-Coder-0.5B-Instruct (24 layers, hidden size 896), made smaller to fit this "
            "CPU: fewer layers, test questions and training pairs, as listed below.\n",
            ab_section(results.get("qwen"), "qwen"),
            "**Sentiment, SmolLM2 beside Qwen.** Task `sentiment`: vector from steerlab's 72 shipped contrastive "
            "reply pairs; strengths 0.1, 0.2, 0.4 swept on validation prompts (VADER of greedy continuations, fluency = "
            "weighted n-gram entropy, bound 20%); test: DExperts neutral prompts steered -/0/+, negative prompts steered + "
            "and positive prompts steered -.\n",
            "| model | recommended (val) | neutral VADER -/0/+ | fluency 0 -> + | controls (0 -> steered) | seconds |",
            "|---|---|---|---|---|---|",
            *sentiment_row(sentiment["smollm2"]),
            *sentiment_row(sentiment["qwen"]),
            "",
            "Validation sweeps (effect = change in mean VADER; the outlined cell is the recommendation):\n",
            *figures,
            "\nCommands: `python experiments/caa_ab/run.py measure ab qwen --limit 20 --train-limit 64 --layer-step 3 "
            "--side-limit 20`, `python experiments/caa_ab/run.py measure sentiment smollm2 --limit 8 --layer-step 3` and "
            "the same with `qwen`.\n",
        ]
    )


def render(doc: Path) -> None:
    results = read(RESULTS) or {}
    write_results_section("caa_ab_smollm2", smollm2_section(results), doc)
    write_results_section("caa_ab_qwen", qwen_section(results), doc)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__.splitlines()[0], ["ab", "sentiment"])
    parser.add_argument("model", nargs="?", choices=MODELS, default="smollm2")
    parser.add_argument("--limit", type=int, help="items (A/B) or val prompts (sentiment) per cell")
    parser.add_argument("--train-limit", type=int, default=200, help="training pairs")
    parser.add_argument("--layer-step", type=int, default=1, help="sweep every Nth layer")
    parser.add_argument("--no-side-effects", dest="side_effects", action="store_false")
    parser.add_argument("--side-limit", type=int, default=100, help="MMLU / TruthfulQA questions each")
    parser.add_argument(
        "--all-positions", action="store_true", help="also score the recommended cell steering all tokens"
    )
    parser.add_argument("--test-limit", type=int, default=16, help="sentiment: prompts per test group")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    if args.action == "measure":
        if args.step is None:
            parser.error("measure needs a step: ab or sentiment")
        torch.set_num_threads(args.threads)
        {"ab": run_ab, "sentiment": run_sentiment}[args.step](args)
        distil(args.model)
    render(args.doc)


if __name__ == "__main__":
    main()
