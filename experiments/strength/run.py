"""Strength you can trust (issue 12): sweeps whose recommendations carry intervals, checked on held-out data
(docs/results.md section 5).

  python experiments/strength/run.py measure sentiment  # SmolLM2: sentiment sweep (val), then up/down cells on test prompts
  python experiments/strength/run.py measure refusal    # SmolLM2: CAA refusal A/B sweep: does it store a default?
  python experiments/strength/run.py measure ab         # Qwen2.5-Coder-0.5B: sycophancy, hallucination, refusal A/B
  python experiments/strength/run.py measure calibrate  # SmolLM2: KL per strength for the sentiment vector's up layer
  python experiments/strength/run.py render             # the section from results.json (no model)

Every layer and strength is chosen by `steerlab.evaluation.sweep` on the validation split (no hand tuning);
the test numbers come from other prompts or questions. Sizes are reduced to fit a shared 2-core CPU and are
written into each JSON and the doc. Each step saves its full JSON (sweep grids, vectors) under
experiments/strength/out/ (not committed), then distils what the section shows into results.json (committed);
`measure ab` also redraws the section's figures in docs/results/.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from common import (  # noqa: E402
    load_study_model,
    reset_stage_progress,
    save_json,
    sentiment_arm,
    stage_progress,
    study_parser,
    write_results_section,
)

from steerlab.evaluation.ab import UNSTEERED, Cell, at_chance, first_answer, letter_words, score_ab  # noqa: E402
from steerlab.evaluation.calibrate import CalibrationConfig, calibrate  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.stats import paired_interval  # noqa: E402
from steerlab.evaluation.sweep import SweepConfig, generate_grid, save_sweep, sweep  # noqa: E402
from steerlab.evaluation.sweep_plots import curves_png  # noqa: E402
from steerlab.evaluation.tasks import get_task  # noqa: E402
from steerlab.files import write_file  # noqa: E402
from steerlab.strength import neutral_texts, strength_of  # noqa: E402
from steerlab.vector import SteeringVector  # noqa: E402

OUT = HERE / "out"
RESULTS = HERE / "results.json"
FIGURES = ROOT / "docs" / "results"


def _sweep_summary(result) -> dict:
    return {
        "verdict": result.verdict,
        "directions": result.to_dict()["directions"],
        "layers": result.layers,
        "values": result.values,
        "effect": result.effect,
        "interval": result.interval,
        "fluent": result.fluent,
        "wrong_way": result.wrong_way,
        "base_score": result.base_score,
        "items": result.items,
        "split": result.split,
    }


# ---- measure ------------------------------------------------------------------------------------------


def run_sentiment(args) -> None:
    """Sweep on the last val prompts, then generate the test prompts unsteered, at the up cell and at the down cell."""
    lm = load_study_model("smollm2")
    task = get_task("sentiment")
    config = SweepConfig(layers=args.layers, limit=args.val, max_new_tokens=args.tokens, batch_rows=64)
    start = time.perf_counter()
    result, vector = sweep(lm, task, config, progress=stage_progress)
    save_sweep(OUT / "sentiment_sweep", result, vector, overwrite=True)
    swept = time.perf_counter() - start
    prompts = task.eval_items("test", limit=args.test)
    chosen = {name: cell.to_json() for name, cell in result.directions.items() if cell}
    cells = [UNSTEERED] + [Cell(c["layer"], c["multiplier"]) for c in chosen.values()]
    texts = generate_grid(lm, prompts, vector, cells, chat=task.chat, max_new_tokens=args.test_tokens, batch_rows=64)
    scores = [vader_scores(t) for t in texts]
    arms = {}
    for name, t, s in zip(["unsteered", *chosen], texts, scores, strict=False):
        if name == "unsteered":
            arms[name] = sentiment_arm(t, s)
        else:
            arms[name] = dict(sentiment_arm(t, s, scores[0], 1.0 if name == "up" else -1.0), cell=chosen[name])
    save_json(
        OUT / "sentiment.json",
        {
            "sweep": _sweep_summary(result),
            "test": arms,
            "sizes": {"tokens": args.tokens, "test": args.test, "test_tokens": args.test_tokens},
            "seconds": {"sweep": round(swept), "test": round(time.perf_counter() - start - swept)},
            "threads": torch.get_num_threads(),
        },
    )
    print(json.dumps(arms, indent=1))


def run_refusal(args) -> None:
    """The CAA refusal A/B sweep on SmolLM2 that once stored a default from a +0.003 effect."""
    lm = load_study_model("smollm2")
    result, vector = sweep(
        lm,
        get_task("refusal"),
        SweepConfig(layers=args.layers, limit=args.val, train_limit=args.train),
        progress=stage_progress,
    )
    save_sweep(OUT / "refusal_sweep", result, vector, overwrite=True)
    save_json(
        OUT / "refusal.json",
        {
            "sweep": _sweep_summary(result),
            "stored": vector.meta.recommended.to_json(),
            "letter_shift": result.details["letter_shift"],
            "at_chance": result.details["at_chance"],
            "sizes": {"layers": args.layers, "val": args.val, "train": args.train},
        },
    )
    print(result.verdict, vector.meta.recommended)


def ab_test_cells(result) -> dict[int, float]:
    """The up cell's and the down cell's layer with |multiplier| (a user applies it and its mirror); when nothing
    was reliable on val, the cell the sweep scored best anyway, so it can be reported."""
    layer_cells = {
        cell.layer: abs(cell.multiplier) for cell in (result.directions["up"], result.directions["down"]) if cell
    }
    if not layer_cells:
        i, j = max(
            ((i, j) for i in range(len(result.layers)) for j in range(len(result.values))),
            key=lambda ij: abs(result.effect[ij[0]][ij[1]]),
        )
        layer_cells[result.layers[i]] = abs(result.multipliers[i][j])
    return layer_cells


def run_ab(args) -> None:
    """Per behaviour: sweep on val; on test, p(matching) at -s / 0 / +s of each direction's cell, with intervals."""
    lm = load_study_model("qwen")
    out = {}
    for behaviour in args.behaviours:
        reset_stage_progress()
        task = get_task(behaviour)
        start = time.perf_counter()
        result, vector = sweep(
            lm,
            task,
            SweepConfig(
                layers=args.layers, strengths=args.strengths, limit=args.val, train_limit=args.train, batch_rows=32
            ),
            progress=stage_progress,
        )
        items = task.eval_items("test", limit=args.test)
        layer_cells = ab_test_cells(result)
        cells = [UNSTEERED] + [Cell(layer, sign * m) for layer, m in layer_cells.items() for sign in (-1.0, 1.0)]
        grid = score_ab(lm, items, vector, cells, batch_rows=32, task=behaviour)
        groups = [p.positive == first_answer(p) for p in items] if grid.orders == 1 else None
        base = grid.summary(0)
        tests = []
        for k, (layer, m) in enumerate(layer_cells.items()):
            minus, plus = 1 + 2 * k, 2 + 2 * k
            spread = paired_interval(grid.item_scores(plus).tolist(), grid.item_scores(minus).tolist(), groups=groups)
            s_minus, s_plus = grid.summary(minus), grid.summary(plus)
            letter = s_plus["first_answer_share"] - s_minus["first_answer_share"]
            tests.append(
                {
                    "layer": layer,
                    "multiplier": m,
                    "strength": round(strength_of(vector, layer, m), 4),
                    "p_minus": s_minus["p_matching"],
                    "p_plus": s_plus["p_matching"],
                    "spread": spread.mean,
                    "spread_interval": [spread.low, spread.high],
                    "letter_share_minus": s_minus["first_answer_share"],
                    "letter_share_plus": s_plus["first_answer_share"],
                    "mass_minus": s_minus["answer_mass"],
                    "mass_plus": s_plus["answer_mass"],
                    "words": letter_words(spread.mean, letter, min_effect=result.min_effect),
                }
            )
        out[behaviour] = {
            "sweep": _sweep_summary(result),
            "letter_shift_val": result.details["letter_shift"],
            "at_chance_val": result.details["at_chance"],
            "unsteered_test": base,
            "at_chance_test": at_chance(base, len(items)),
            "test": tests,
            "sizes": {
                "layers": args.layers,
                "strengths": args.strengths,
                "val": args.val,
                "train": args.train,
                "test": len(items),
            },
            "seconds": round(time.perf_counter() - start),
        }
        save_json(OUT / "ab_qwen.json", out)
        print(behaviour, result.verdict, json.dumps(tests, indent=1), flush=True)
    draw_ab_figures(out)


def draw_ab_figures(data: dict) -> None:
    """Per behaviour, val p(matching) per layer for each strength with its 95% band, on a fixed 0-1 axis."""
    for behaviour, run in data.items():
        sweep_ = run["sweep"]
        base = sweep_["base_score"]
        curves, bands = {}, {}
        for j, value in enumerate(sweep_["values"]):
            name = f"strength {value:+g}"
            curves[name] = [base + row[j] for row in sweep_["effect"]]
            bands[name] = [[base + lo, base + hi] for lo, hi in (row[j] for row in sweep_["interval"])]
        png = curves_png(
            sweep_["layers"],
            curves,
            title=f"{behaviour}: Qwen2.5-Coder-0.5B, val, both orders",
            y_label="p(matching), debiased",
            reference=base,
            bands=bands,
            limits=(0.0, 1.0),
        )
        write_file(FIGURES / f"strength_ab_{behaviour}_qwen.png", png, overwrite=True)


INSTRUCTIONS = ("Answer cheerfully.", "Answer gloomily.", "Be brief.", "You are a pirate.")


@torch.inference_mode()
def instruction_kl(lm, texts) -> dict[str, float]:
    """The budget's reference: mean per-token KL(with instruction || without) over each neutral text's own tokens
    (first left out), when a one-sentence instruction and a newline precede the text."""
    tok = lm.tokenizer
    start = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    out = {}
    for instruction in INSTRUCTIONS:
        head = tok(instruction + "\n", add_special_tokens=False)["input_ids"]
        total, count = 0.0, 0
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            plain = torch.log_softmax(lm.model(torch.tensor([start + ids])).logits[0, 1:].float(), -1)
            told = torch.log_softmax(
                lm.model(torch.tensor([start + head + ids])).logits[0, 1 + len(head) :].float(), -1
            )
            total += float((told.exp() * (told - plain)).sum(-1)[1:].sum())
            count += len(ids) - 1
        out[instruction] = round(total / count, 4)
    return out


def run_calibrate(args) -> None:
    """Calibrate the sentiment sweep's vector at its up layer: KL per strength and the chosen strengths."""
    lm = load_study_model("smollm2")
    vector = SteeringVector.load(OUT / "sentiment_sweep" / "vector.safetensors")
    saved = json.loads((OUT / "sentiment.json").read_text())
    layer = (saved["sweep"]["directions"]["up"] or {"layer": 15})["layer"]
    start = time.perf_counter()
    result, _ = calibrate(lm, vector, CalibrationConfig(layers=[layer]), progress=stage_progress)
    reference = instruction_kl(lm, neutral_texts())
    save_json(
        OUT / "calibrate.json",
        {
            "layer": layer,
            **result.to_json(),
            "instruction_kl": reference,
            "seconds": round(time.perf_counter() - start),
        },
    )
    print(json.dumps(result.to_json(), indent=1))


def distil_sentiment(data: dict) -> dict:
    """Drop the sweep's grids, keeping what the section says about them: the strongest fluent downward cell."""
    sweep_ = data["sweep"]
    neg = [
        (sweep_["effect"][i][j], sweep_["fluent"][i][j], sweep_["layers"][i], v)
        for i in range(len(sweep_["layers"]))
        for j, v in enumerate(sweep_["values"])
        if v < 0
    ]
    fluent = [x for x in neg if x[1]]
    best = min(fluent) if fluent else None
    downward = {
        "cells": len(neg),
        "unfluent": len(neg) - len(fluent),
        "best_fluent": {"effect": best[0], "layer": best[2], "value": best[3]} if best else None,
    }
    kept = {k: sweep_[k] for k in ("directions", "layers", "values", "items")}
    test = {name: {k: v for k, v in arm.items() if k != "example"} for name, arm in data["test"].items()}
    return {**data, "sweep": {**kept, "downward": downward}, "test": test}


def distil_refusal(data: dict) -> dict:
    sweep_ = data["sweep"]
    cells = [
        (abs(e), e, iv)
        for row, ivs in zip(sweep_["effect"], sweep_["interval"], strict=False)
        for e, iv in zip(row, ivs, strict=False)
    ]
    _, effect, interval = max(cells)
    reliable = sum(1 for _, _, iv in cells if iv[0] > 0 or iv[1] < 0)
    kept = {k: sweep_[k] for k in ("verdict", "items", "base_score")}
    return {
        "sweep": {
            **kept,
            "cells": len(cells),
            "reliable": reliable,
            "largest": {"effect": effect, "interval": interval},
        },
        "stored": data["stored"],
        "at_chance": data["at_chance"],
        "sizes": data["sizes"],
    }


def distil() -> None:
    """results.json from out/: each step's numbers as the section shows them, without grids, vectors or texts."""

    def read(name: str) -> dict | None:
        path = OUT / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    results = {
        "sentiment": read("sentiment"),
        "calibrate": read("calibrate"),
        "refusal": read("refusal"),
        "ab_qwen": read("ab_qwen"),
    }
    if results["sentiment"]:
        results["sentiment"] = distil_sentiment(results["sentiment"])
    if results["refusal"]:
        results["refusal"] = distil_refusal(results["refusal"])
    for run in (results["ab_qwen"] or {}).values():
        run["sweep"] = {"verdict": run["sweep"]["verdict"]}
    save_json(RESULTS, results)


# ---- render -------------------------------------------------------------------------------------------

INTRO = """## 5. Intervals, per-direction recommendations and calibrated strength (issue 12)

What changed: every sweep cell now carries a paired bootstrap 95% interval of its effect against the unsteered
model on the same items, and the sweep recommends a layer and strength per direction (up and down) only where
that interval excludes zero, the effect is at least 2% of the metric's range (0.02 of p(matching), 0.04 of
VADER compound) and fluency (n-gram entropy, distinct-2 and repetition for generation; answer mass for A/B)
holds; otherwise it stores "no reliable effect" and no default. The minimum effect was added after the
SmolLM2 sweeps below had run; a one-off re-recommendation applied it to their saved scores (the
refusal sweep's "up" cell, +0.004 [+0.002, +0.006], was recommended without it). A/B answers are read at the
tokens the model's own tokenizer writes (Qwen2.5: "(A" is one token). The numbers in sections 1-3 were
measured before these changes and are kept as history: their recommendations were the single cell with the
largest point effect, with no interval, and Qwen's vectors were read after a lone "(" token.

Every layer and strength below was chosen by `steerlab.evaluation.sweep` on validation items; the test
numbers are on other prompts or questions. Sizes were cut to fit a 2-core CPU shared with four other jobs
(load average about 11); each is given with its table. Reproduce with `python experiments/strength/run.py
measure sentiment|refusal|ab|calibrate`; `python experiments/strength/run.py render` rewrites this section
from experiments/strength/results.json.
"""


def _f(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _iv(pair) -> str:
    return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def _cell_words(cell: dict | None) -> str:
    if not cell:
        return "no reliable effect"
    value = (
        f"strength {cell['value']:+g} (x{cell['multiplier']:+.3g})"
        if cell.get("mode") == "relative"
        else f"multiplier {cell['multiplier']:+g}"
    )
    return (
        f"layer {cell['layer']}, {value}: effect {cell['effect']:+.3f} {_iv(cell['interval'])}, "
        f"wrong way {cell['wrong_way']:.0%}"
    )


def _arm_row(name: str, arm: dict | None, base: dict) -> str:
    if not arm:
        return f"| {name} | no reliable effect on val: nothing applied | | | | | | |"
    c = arm["cell"]
    return (
        f"| {name}: layer {c['layer']}, {c['value']:+g} | {arm['positive_share']:.2f} | "
        f"{arm['negative_share']:.2f} | {arm['mean_compound']:+.3f} | {arm['test_change']:+.3f} "
        f"{_iv(arm['test_interval'])} | {arm['wrong_way']:.0%} | {arm['distinct2']:.3f} "
        f"({arm['distinct2'] / base['distinct2']:.2f}x) | {arm['repetition']:.3f} |"
    )


def _goal_lines(test: dict, downward: dict) -> list[str]:
    base, up, down = test["unsteered"], test.get("up"), test.get("down")
    goal = []
    if up:
        ok = up["positive_share"] >= 0.85 and up["distinct2"] >= 0.9 * base["distinct2"]
        goal.append(
            f"up: positive share {up['positive_share']:.2f} (goal >= 0.85) with distinct-2 "
            f"{up['distinct2'] / base['distinct2']:.2f}x (goal >= 0.9x): {'met' if ok else 'not met'}"
        )
    if down:
        ok = down["negative_share"] >= 0.60 and down["distinct2"] >= 0.9 * base["distinct2"]
        goal.append(
            f"down: negative share {down['negative_share']:.2f} (goal >= 0.60) with distinct-2 "
            f"{down['distinct2'] / base['distinct2']:.2f}x: {'met' if ok else 'not met'}"
        )
    lines = ["Against the issue's goal: " + "; ".join(goal) + ".\n"]
    best = downward["best_fluent"]
    if down and down["negative_share"] < 0.60 and best:
        lines.append(
            f"Why the downward goal is missed: on validation the strongest fluent downward cell moved VADER "
            f"compound by {best['effect']:+.3f} (layer {best['layer']}, {best['value']:+g}); "
            f"{downward['unfluent']} of {downward['cells']} downward cells broke the fluency bound (repetition "
            "rose by more than 0.1, distinct-2 fell), and the sweep's default grid "
            "stops at -0.25. Steering neutral prompts negative with this vector is about half as strong as "
            "steering them positive at the same fluency, so the sweep's downward pick (the fluent cell whose "
            "interval lies furthest below zero) reaches a negative share of "
            f"{down['negative_share']:.2f}, not 0.60. The calibrated downward strength is smaller still "
            "(below).\n"
        )
    return lines


def sentiment_section(data: dict) -> str:
    sweep_, test, sizes = data["sweep"], data["test"], data["sizes"]
    base = test["unsteered"]
    lines = [
        "### SmolLM2-135M-Instruct: sentiment on DExperts neutral prompts",
        "",
        f"Sweep: CAA vectors from steerlab's 72 shipped pairs at layers {', '.join(map(str, sweep_['layers']))}, "
        f"default strengths {', '.join(f'{v:+g}' for v in sweep_['values'])}, the last {sweep_['items']} "
        f"validation prompts, {sizes['tokens']} greedy tokens (mean VADER compound; fluency bound 0.1). "
        f"Test: the first {sizes['test']} test prompts, {sizes['test_tokens']} greedy tokens. Positive share = "
        "VADER compound >= 0.05, negative share <= -0.05 (VADER's own thresholds). Time: sweep "
        f"{data['seconds']['sweep']} s, test {data['seconds']['test']} s, {data['threads']} thread.",
        "",
        f"Sweep's choice (val): up: {_cell_words(sweep_['directions'].get('up'))}; "
        f"down: {_cell_words(sweep_['directions'].get('down'))}.",
        "",
        "| arm (test) | positive share | negative share | mean compound | change toward the arm's direction [95% interval] | wrong way | "
        "distinct-2 (x unsteered) | repetition |",
        "|---|---|---|---|---|---|---|---|",
        f"| unsteered | {base['positive_share']:.2f} | {base['negative_share']:.2f} | "
        f"{base['mean_compound']:+.3f} | | | {base['distinct2']:.3f} | {base['repetition']:.3f} |",
        _arm_row("up", test.get("up"), base),
        _arm_row("down", test.get("down"), base),
        "",
    ]
    return "\n".join(lines + _goal_lines(test, sweep_["downward"]))


def refusal_section(data: dict) -> str:
    sweep_, sizes, stored = data["sweep"], data["sizes"], data["stored"]
    what = "no default" if "layer" not in stored else f"layer {stored['layer']}, multiplier {stored['multiplier']:g}"
    return "\n".join(
        [
            "### SmolLM2-135M-Instruct: the CAA refusal A/B sweep",
            "",
            f"Layers {', '.join(map(str, sizes['layers'] or ['all']))}, default strengths, "
            f"{sweep_['items']} validation questions in both orders, "
            f"{sizes['train'] or 'all'} training pairs. Unsteered debiased p(matching) {sweep_['base_score']:.3f}"
            f"{' (at chance)' if data['at_chance'] else ''}. The largest |effect| of any cell was "
            f"{sweep_['largest']['effect']:+.3f} {_iv(sweep_['largest']['interval'])}; {sweep_['reliable']} of "
            f"{sweep_['cells']} cells had an interval excluding zero.",
            "",
            f"Verdict printed and stored: {sweep_['verdict']}. Stored in the vector: {what} "
            f"(`{json.dumps({k: v for k, v in stored.items() if k in ('verdict', 'layer', 'multiplier')})}`).",
            "",
        ]
    )


def ab_section(data: dict) -> str:
    sizes = next(iter(data.values()))["sizes"]
    lines = [
        "### Qwen2.5-Coder-0.5B-Instruct: CAA A/B behaviours",
        "",
        f"Reduced sizes: {sizes['train']} training pairs per behaviour, layers "
        f"{', '.join(map(str, sizes['layers']))}, strengths {', '.join(f'{v:+g}' for v in sizes['strengths'])}, "
        f"{sizes['val']} validation questions for the sweep, {sizes['test']} held-out test questions; both choice "
        "orders everywhere. Spread = debiased p(matching) at +s minus at -s, per question (paired), with its "
        "bootstrap 95% interval; letter shift = the change in the A-share p(A)/(p(A)+p(B)) from -s to +s. "
        "When the sweep found no reliable cell, the cell with the largest |effect| on val is measured anyway "
        "so the table is not empty; it is not a recommendation.",
        "",
        "| behaviour | unsteered p(matching), A-share (test) | sweep verdict (val) | test cell | p(matching) -s / +s | "
        "spread [95% interval] | A-share -s / +s | answer mass -s / +s | the tool's words |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for behaviour, run in data.items():
        base = run["unsteered_test"]
        chance = " **at chance**" if run["at_chance_test"] else ""
        for t in run["test"]:
            reliable = (
                "reliable" if t["spread_interval"][0] > 0 or t["spread_interval"][1] < 0 else "interval includes 0"
            )
            lines.append(
                f"| {behaviour} | {base['p_matching']:.3f}, {base['first_answer_share']:.2f}{chance} | "
                f"{run['sweep']['verdict']} | layer {t['layer']}, strength {t['strength']:.2g} "
                f"(x{t['multiplier']:.3g}) | {t['p_minus']:.3f} / {t['p_plus']:.3f} | {t['spread']:+.3f} "
                f"{_iv(t['spread_interval'])} ({reliable}) | {t['letter_share_minus']:.2f} / "
                f"{t['letter_share_plus']:.2f} | {t['mass_minus']:.2f} / {t['mass_plus']:.2f} "
                f"(unsteered {base['answer_mass']:.2f}) | {t['words']} |"
            )
    lines += [
        "",
        "These runs predate the minimum effect size; their only recommended cell (refusal, down, -0.036) "
        "is above it. They also predate the letter rule (a cell whose A-share moved more than twice its "
        "p(matching) is never recommended; issue 21), and the validation letter shifts were not kept, so whether "
        "that cell would now be left out is not known from these results.",
    ]
    secs = "; ".join(f"{b}: {r['seconds']} s" for b, r in data.items())
    figures = [f"![{behaviour}](results/strength_ab_{behaviour}_qwen.png)" for behaviour in data]
    return "\n".join(
        [
            *lines,
            "",
            f"Time per behaviour (vectors, val sweep and test grid): {secs}.",
            "",
            "Validation sweep per layer (bands: paired bootstrap 95% intervals; the axis is fixed at "
            "0-1 so noise looks as small as it is):\n",
            *figures,
            "",
        ]
    )


def calibrate_section(data: dict) -> str:
    up = ", ".join(f"{float(s):+g}: {v:.3f}" for s, v in data["kl"]["up"].items())
    down = ", ".join(f"{-float(s):+g}: {v:.3f}" for s, v in data["kl"]["down"].items())
    return "\n".join(
        [
            "### Calibrated strength (SmolLM2, the sentiment vector at the sweep's up layer)",
            "",
            f"`steerlab vector calibrate` at layer {data['layer']}: mean per-token KL(steered || unsteered) in nats over "
            f"steerlab's {data['prompts']} neutral prompts, budget {data['kl_budget']:g}:",
            "",
            f"- up: {up}",
            f"- down: {down}",
            "- reference, a one-sentence instruction before the same text (KL(with || without) over the text's tokens): "
            + ", ".join(f'"{k}" {v:.3f}' for k, v in data.get("instruction_kl", {}).items()),
            "",
            f"Calibrated: up {_f(data['up'], '{:+g}')}, down {_f(data['down'], '{:+g}')} (fluency bound "
            f"{data['fluency_bound']:g}; fluency at the strengths checked: {json.dumps(data['fluency'])}). "
            f"{data.get('note', '')} Time {data['seconds']} s.",
            "",
        ]
    )


def render(doc: Path) -> None:
    results = json.loads(RESULTS.read_text())
    parts = [INTRO]
    for name, section in (
        ("sentiment", sentiment_section),
        ("calibrate", calibrate_section),
        ("refusal", refusal_section),
        ("ab_qwen", ab_section),
    ):
        parts.append(
            section(results[name])
            if results.get(name)
            else f"_{name}: not measured in this run (see the report for why)._\n"
        )
    write_results_section("strength", "\n".join(parts), doc)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__.splitlines()[0], ["sentiment", "refusal", "ab", "calibrate"])
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--strengths", type=lambda s: [float(x) for x in s.split(",")], default=[-0.4, -0.2, 0.2, 0.4])
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--test-tokens", type=int, default=32)
    parser.add_argument("--behaviours", type=lambda s: s.split(","), default=["sycophancy", "hallucination", "refusal"])
    args = parser.parse_args(argv)
    if args.action == "measure":
        if args.step is None:
            parser.error("measure needs a step: sentiment, refusal, ab or calibrate")
        torch.set_num_threads(args.threads)
        OUT.mkdir(parents=True, exist_ok=True)
        {"sentiment": run_sentiment, "refusal": run_refusal, "ab": run_ab, "calibrate": run_calibrate}[args.step](args)
        distil()
    render(args.doc)


if __name__ == "__main__":
    main()
