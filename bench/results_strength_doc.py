"""Render the docs/results.md subsection of bench/results_strength.py from its saved JSON (no model runs)."""

from __future__ import annotations

import json
from pathlib import Path

import sys

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from steerlab.vector import write_atomic  # noqa: E402

INTRO = """## 5. Intervals, per-direction recommendations and calibrated strength (issue 12)

What changed: every sweep cell now carries a paired bootstrap 95% interval of its effect against the unsteered
model on the same items, and the sweep recommends a layer and strength per direction (up and down) only where
that interval excludes zero, the effect is at least 2% of the metric's range (0.02 of p(matching), 0.04 of
VADER compound) and fluency (n-gram entropy, distinct-2 and repetition for generation; answer mass for A/B)
holds; otherwise it stores "no reliable effect" and no default. The minimum effect was added after the
SmolLM2 sweeps below had run; `bench/results_strength.py rerecommend` applied it to their saved scores (the
refusal sweep's "up" cell, +0.004 [+0.002, +0.006], was recommended without it). A/B answers are read at the
tokens the model's own tokenizer writes (Qwen2.5: "(A" is one token). The numbers in sections 1-3 were
measured before these changes and are kept as history: their recommendations were the single cell with the
largest point effect, with no interval, and Qwen's vectors were read after a lone "(" token.

Every layer and strength below was chosen by `steerlab.evaluation.sweep` on validation items; the test
numbers are on other prompts or questions. Sizes were cut to fit a 2-core CPU shared with four other jobs
(load average about 11); each is given with its table. Reproduce with `python bench/results_strength.py
sentiment|refusal|ab|calibrate` then `write`.
"""


def _f(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _iv(pair) -> str:
    return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def _cell_words(cell: dict | None) -> str:
    if not cell:
        return "no reliable effect"
    value = f"strength {cell['value']:+g} (x{cell['multiplier']:+.3g})" if cell.get("mode") == "relative" \
        else f"multiplier {cell['multiplier']:+g}"
    return (f"layer {cell['layer']}, {value}: effect {cell['effect']:+.3f} {_iv(cell['interval'])}, "
            f"wrong way {cell['wrong_way']:.0%}")


def sentiment_section(data: dict) -> str:
    sweep, test, sizes = data["sweep"], data["test"], data["sizes"]
    base = test["unsteered"]
    lines = ["### SmolLM2-135M-Instruct: sentiment on DExperts neutral prompts", "",
             f"Sweep: CAA vectors from steerlab's 72 shipped pairs at layers {', '.join(map(str, sweep['layers']))}, "
             f"default strengths {', '.join(f'{v:+g}' for v in sweep['values'])}, the last {sweep['items']} "
             f"validation prompts, {sizes['tokens']} greedy tokens (mean VADER compound; fluency bound 0.1). "
             f"Test: the first {sizes['test']} test prompts, {sizes['test_tokens']} greedy tokens. Positive share = "
             "VADER compound >= 0.05, negative share <= -0.05 (VADER's own thresholds). Time: sweep "
             f"{data['seconds']['sweep']} s, test {data['seconds']['test']} s, {data['threads']} thread.", "",
             f"Sweep's choice (val): up: {_cell_words(sweep['directions'].get('up'))}; "
             f"down: {_cell_words(sweep['directions'].get('down'))}.", "",
             "| arm (test) | positive share | negative share | mean compound | change toward the arm's direction [95% interval] | wrong way | "
             "distinct-2 (x unsteered) | repetition |",
             "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| unsteered | {base['positive_share']:.2f} | {base['negative_share']:.2f} | "
                 f"{base['mean_compound']:+.3f} | | | {base['distinct2']:.3f} | {base['repetition']:.3f} |")
    for name in ("up", "down"):
        arm = test.get(name)
        if not arm:
            lines.append(f"| {name} | no reliable effect on val: nothing applied | | | | | | |")
            continue
        c = arm["cell"]
        lines.append(f"| {name}: layer {c['layer']}, {c['value']:+g} | {arm['positive_share']:.2f} | "
                     f"{arm['negative_share']:.2f} | {arm['mean_compound']:+.3f} | {arm['test_change']:+.3f} "
                     f"{_iv(arm['test_interval'])} | {arm['wrong_way']:.0%} | {arm['distinct2']:.3f} "
                     f"({arm['distinct2'] / base['distinct2']:.2f}x) | {arm['repetition']:.3f} |")
    lines.append("")
    up, down = test.get("up"), test.get("down")
    goal = []
    if up:
        ok = up["positive_share"] >= 0.85 and up["distinct2"] >= 0.9 * base["distinct2"]
        goal.append(f"up: positive share {up['positive_share']:.2f} (goal >= 0.85) with distinct-2 "
                    f"{up['distinct2'] / base['distinct2']:.2f}x (goal >= 0.9x): {'met' if ok else 'not met'}")
    if down:
        ok = down["negative_share"] >= 0.60 and down["distinct2"] >= 0.9 * base["distinct2"]
        goal.append(f"down: negative share {down['negative_share']:.2f} (goal >= 0.60) with distinct-2 "
                    f"{down['distinct2'] / base['distinct2']:.2f}x: {'met' if ok else 'not met'}")
    lines.append("Against the issue's goal: " + "; ".join(goal) + ".\n")
    if down and down["negative_share"] < 0.60:
        neg = [(sweep["effect"][i][j], sweep["fluent"][i][j], sweep["layers"][i], v)
               for i in range(len(sweep["layers"])) for j, v in enumerate(sweep["values"]) if v < 0]
        fluent = [x for x in neg if x[1]]
        best = min(fluent)
        lines.append(f"Why the downward goal is missed: on validation the strongest fluent downward cell moved VADER "
                     f"compound by {best[0]:+.3f} (layer {best[2]}, {best[3]:+g}); {len(neg) - len(fluent)} of "
                     f"{len(neg)} downward cells broke the fluency bound (repetition rose by more than 0.1, distinct-2 fell), and the sweep's default grid "
                     "stops at -0.25. Steering neutral prompts negative with this vector is about half as strong as "
                     "steering them positive at the same fluency, so the sweep's downward pick (the fluent cell whose "
                     "interval lies furthest below zero) reaches a negative share of "
                     f"{down['negative_share']:.2f}, not 0.60. The calibrated downward strength is smaller still "
                     "(below).\n")
    return "\n".join(lines)


def refusal_section(data: dict) -> str:
    sweep, sizes = data["sweep"], data["sizes"]
    cells = [(abs(e), e, iv) for row, ivs in zip(sweep["effect"], sweep["interval"]) for e, iv in zip(row, ivs)]
    biggest = max(cells)
    reliable = sum(1 for _, _, iv in cells if iv[0] > 0 or iv[1] < 0)
    stored = data["stored"]
    what = "no default" if "layer" not in stored else f"layer {stored['layer']}, multiplier {stored['multiplier']:g}"
    return "\n".join([
        "### SmolLM2-135M-Instruct: the CAA refusal A/B sweep", "",
        f"Layers {', '.join(map(str, sizes['layers'] or ['all']))}, default strengths, "
        f"{sweep['items']} validation questions in both orders, "
        f"{sizes['train'] or 'all'} training pairs. Unsteered debiased p(matching) {sweep['base_score']:.3f}"
        f"{' (at chance)' if data['at_chance'] else ''}. The largest |effect| of any cell was {biggest[1]:+.3f} "
        f"{_iv(biggest[2])}; {reliable} of {len(cells)} cells had an interval excluding zero.", "",
        f"Verdict printed and stored: {sweep['verdict']}. Stored in the vector: {what} "
        f"(`{json.dumps({k: v for k, v in stored.items() if k in ('verdict', 'layer', 'multiplier')})}`).", ""])


def ab_figures(data: dict, docs: Path) -> list[str]:
    """Per behaviour, val p(matching) per layer for each strength with its 95% band, on a fixed 0-1 axis."""
    from steerlab.evaluation.sweep_plots import curves_png

    lines = []
    for behaviour, run in data.items():
        sweep = run["sweep"]
        base = sweep["base_score"]
        curves, bands = {}, {}
        for j, value in enumerate(sweep["values"]):
            name = f"strength {value:+g}"
            curves[name] = [base + row[j] for row in sweep["effect"]]
            bands[name] = [[base + lo, base + hi] for lo, hi in (row[j] for row in sweep["interval"])]
        png = docs / "results" / f"strength_ab_{behaviour}_qwen.png"
        write_atomic(png, curves_png(sweep["layers"], curves, title=f"{behaviour}: Qwen2.5-Coder-0.5B, val, both orders",
                                     y_label="p(matching), debiased", reference=base, bands=bands, limits=(0.0, 1.0)),
                     overwrite=True)
        lines.append(f"![{behaviour}](results/{png.name})")
    return lines


def ab_section(data: dict) -> str:
    first = next(iter(data.values()))
    sizes = first["sizes"]
    lines = ["### Qwen2.5-Coder-0.5B-Instruct: CAA A/B behaviours", "",
             f"Reduced sizes: {sizes['train']} training pairs per behaviour, layers "
             f"{', '.join(map(str, sizes['layers']))}, strengths {', '.join(f'{v:+g}' for v in sizes['strengths'])}, "
             f"{sizes['val']} validation questions for the sweep, {sizes['test']} held-out test questions; both choice "
             "orders everywhere. Spread = debiased p(matching) at +s minus at -s, per question (paired), with its "
             "bootstrap 95% interval; letter shift = the change in the A-share p(A)/(p(A)+p(B)) from -s to +s. "
             "When the sweep found no reliable cell, the cell with the largest |effect| on val is measured anyway "
             "so the table is not empty; it is not a recommendation.", "",
             "| behaviour | unsteered p(matching), A-share (test) | sweep verdict (val) | test cell | p(matching) -s / +s | "
             "spread [95% interval] | A-share -s / +s | answer mass -s / +s | the tool's words |",
             "|---|---|---|---|---|---|---|---|---|"]
    for behaviour, run in data.items():
        base = run["unsteered_test"]
        chance = " **at chance**" if run["at_chance_test"] else ""
        for t in run["test"]:
            reliable = "reliable" if t["spread_interval"][0] > 0 or t["spread_interval"][1] < 0 else "interval includes 0"
            lines.append(f"| {behaviour} | {base['p_matching']:.3f}, {base['first_answer_share']:.2f}{chance} | "
                         f"{run['sweep']['verdict']} | layer {t['layer']}, strength {t['strength']:.2g} "
                         f"(x{t['multiplier']:.3g}) | {t['p_minus']:.3f} / {t['p_plus']:.3f} | {t['spread']:+.3f} "
                         f"{_iv(t['spread_interval'])} ({reliable}) | {t['letter_share_minus']:.2f} / "
                         f"{t['letter_share_plus']:.2f} | {t['mass_minus']:.2f} / {t['mass_plus']:.2f} "
                         f"(unsteered {base['answer_mass']:.2f}) | {t['words']} |")
    lines += ["", "These runs predate the minimum effect size; their only recommended cell (refusal, down, -0.036) "
              "is above it, so the verdicts are the ones the current rule gives."]
    secs = "; ".join(f"{b}: {r['seconds']} s" for b, r in data.items())
    lines += ["", f"Time per behaviour (vectors, val sweep and test grid): {secs}.", ""]
    return "\n".join(lines)


def calibrate_section(data: dict) -> str:
    up = ", ".join(f"{float(s):+g}: {v:.3f}" for s, v in data["kl"]["up"].items())
    down = ", ".join(f"{-float(s):+g}: {v:.3f}" for s, v in data["kl"]["down"].items())
    return "\n".join([
        "### Calibrated strength (SmolLM2, the sentiment vector at the sweep's up layer)", "",
        f"`steerlab vector calibrate` at layer {data['layer']}: mean per-token KL(steered || unsteered) in nats over "
        f"steerlab's {data['prompts']} neutral prompts, budget {data['kl_budget']:g}:", "",
        f"- up: {up}", f"- down: {down}",
        "- reference, a one-sentence instruction before the same text (KL(with || without) over the text's tokens): "
        + ", ".join(f'"{k}" {v:.3f}' for k, v in data.get("instruction_kl", {}).items()), "",
        f"Calibrated: up {_f(data['up'], '{:+g}')}, down {_f(data['down'], '{:+g}')} (fluency bound "
        f"{data['fluency_bound']:g}; fluency at the strengths checked: {json.dumps(data['fluency'])}). "
        f"{data.get('note', '')} Time {data['seconds']} s.", ""])


def write_doc(out: Path, doc: Path, begin: str, end: str) -> None:
    parts = [INTRO]
    ab_path = out / "ab_qwen.json"
    figures = ab_figures(json.loads(ab_path.read_text()), doc.parent) if ab_path.exists() else []
    for name, render in (("sentiment", sentiment_section), ("calibrate", calibrate_section),
                         ("refusal", refusal_section), ("ab_qwen", ab_section)):
        path = out / f"{name}.json"
        parts.append(render(json.loads(path.read_text())) if path.exists()
                     else f"_{name}: not measured in this run (see the report for why)._\n")
    if figures:
        parts.append("Validation sweep per layer (bands: paired bootstrap 95% intervals; the axis is fixed at 0-1 so "
                     "noise looks as small as it is):\n\n" + "\n".join(figures) + "\n")
    block = f"{begin}\n" + "\n".join(parts) + f"\n{end}"
    text = doc.read_text()
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(doc, text.encode(), overwrite=True)
