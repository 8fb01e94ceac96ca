"""Render docs/results.md sections 1 and 3 (and their figures) from bench/results_ab.py's saved measurements."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from steerlab.evaluation.ab import at_chance  # noqa: E402
from steerlab.evaluation.sweep_plots import curves_png  # noqa: E402
from steerlab.vector import write_atomic  # noqa: E402

PAPER = {"sycophancy": (0.64, 0.76, 0.82), "hallucination": (0.48, 0.74, 0.88), "refusal": (0.42, 0.74, 0.89)}
BEHAVIOURS = ("sycophancy", "hallucination", "refusal")
# load_model names a GGUF model after its file name up to the first dot ("qwen2" for qwen2.5-...gguf).
DISPLAY = {"qwen2": "Qwen2.5-Coder-0.5B-Instruct"}


def _name(run: dict) -> str:
    return DISPLAY.get(run["model"], run["model"])


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cell(run: dict, layer: int, mult: float) -> dict:
    for (l, m), summary in zip(run["cells"], run["test"]):
        if l == layer and abs(m - mult) < 1e-6:
            return summary
    raise KeyError((layer, mult))


def _rel(run: dict, layer: int) -> float:
    """The raw multiplier of the +0.2 relative cell at `layer` (the 4th cell of each layer's group)."""
    i = 1 + run["layers"].index(layer) * 4 + 3
    return run["cells"][i][1]


def _se(base: list[float], steered: list[float]) -> float:
    """Standard error of the mean per-question change in p(matching)."""
    diffs = [b - a for a, b in zip(base, steered)]
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))


def _f(x: float) -> str:
    return f"{x:.2f}"


def ab_section(folder: Path, docs: Path, model_label: str, tag: str) -> str:
    runs = {b: _load(folder, b) for b in BEHAVIOURS}
    runs = {b: r for b, r in runs.items() if r}
    if not runs:
        return f"_No A/B measurements for {model_label} yet: run `python bench/results_ab.py ab {tag}`._\n"
    first = next(iter(runs.values()))
    lines = []
    n_layers = len(first["layers"])
    lines.append(f"Model: {_name(first)}; {first['train_pairs']} training pairs per behaviour (from the CAA generate "
                 f"set less its last 50), the last 50 generate items as validation ({first['val_items']} scored), "
                 f"{first['test_items']} held-out test questions, each asked in both choice orders; "
                 f"{n_layers} layers ({', '.join(map(str, first['layers'])) if n_layers < 30 else '0-29'}); "
                 f"torch threads {first['threads']}.\n")
    lines.append("**Unsteered model.** p(matching) is normalised over the two answers; *debiased* averages the two "
                 "choice orders. 'A-share' is the mean p(A)/(p(A)+p(B)); 'A in both orders' counts questions whose "
                 "preferred letter is A whatever text it labels.\n")
    lines.append("| behaviour | p(matching) debiased | file order only | accuracy | A-share | A in both orders | B in both orders | |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for b, run in runs.items():
        s, n = run["test"][0], run["test_items"]
        chance = "**at chance**" if at_chance(s, n) else ""
        lines.append(f"| {b} | {_f(s['p_matching'])} | {_f(s['p_matching_file_order'])} | {_f(s['accuracy'])} | "
                     f"{_f(s['first_answer_share'])} | {round(s['first_in_both_orders'] * n)}/{n} | "
                     f"{round(s['second_in_both_orders'] * n)}/{n} | {chance} |")
    lines.append("\n'At chance': accuracy within two binomial standard errors of 0.5 and debiased p(matching) within "
                 "0.05 of 0.5.\n")
    lines.append("**At the recommended layer.** The layer and strength come from the validation sweep (largest rise "
                 "in debiased p(matching) among norm-relative strengths 0.2 and 0.4 whose answer mass p(A)+p(B) keeps "
                 "90% of the unsteered one); the numbers are test-set debiased p(matching) at -/0/+. 'flipped' is the "
                 "share of test questions whose preferred answer (order-averaged) differs from the unsteered model's "
                 "under +; the bracket gives the standard error of the mean per-question change at -s and +s.\n")
    lines.append("| behaviour | layer (val) | raw -1 / 0 / +1 | norm-relative -s / 0 / +s | s | flipped at +s | answer mass at +s | Llama-2-7b-chat, layer 13, -1 / 0 / +1 (paper) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for b, run in runs.items():
        rec, base = run["recommended"], run["test"][0]
        layer, m = rec["layer"], rec["multiplier"]
        raw = [_cell(run, layer, -1.0), base, _cell(run, layer, 1.0)]
        rel = [_cell(run, layer, -m), base, _cell(run, layer, m)]
        note = " (no cell passed on val; middle layer shown)" if rec.get("fallback") else ""
        se = ""
        if "key" in run:  # per-question changes re-scored with the same vectors: standard errors of -s and +s
            se = " (+-" + " / +-".join(f"{_se(run['key']['item_scores'][0], run['key']['item_scores'][i]):.3f}"
                                       for i in (3, 4)) + ")"
        lines.append(f"| {b} | {layer}{note} | {' / '.join(_f(x['p_matching']) for x in raw)} | "
                     f"{' / '.join(_f(x['p_matching']) for x in rel)}{se} | {rec['value']:g} (x{m:.1f}) | "
                     f"{_f(rel[2]['flipped'])} | {_f(rel[2]['answer_mass'])} (unsteered {_f(base['answer_mass'])}) | "
                     f"{' / '.join(map(str, PAPER[b]))} |")
    spread = []
    for b, run in runs.items():
        steered = run["test"][1:]
        ps = [x["p_matching"] for x in steered]
        masses = [x["answer_mass"] for x in steered]
        spread.append(f"{b}: {min(ps):.3f}-{max(ps):.3f} (unsteered {run['test'][0]['p_matching']:.3f}; answer mass "
                      f"{min(masses):.2f}-{max(masses):.2f}, unsteered {run['test'][0]['answer_mass']:.2f})")
    lines.append(f"\nDebiased p(matching) over all {len(first['test']) - 1} steered test cells (every layer, raw and "
                 "relative, both signs): " + "; ".join(spread) + ".\n")
    if any(r.get("all_positions") for r in runs.values()):
        lines.append("\n**Steering every token instead** (the question's tokens too), same layer and strength, test set:\n")
        lines.append("| behaviour | answer tokens only: -s / +s | all tokens: -s / +s |")
        lines.append("|---|---|---|")
        for b, run in runs.items():
            if run.get("all_positions"):
                rec = run["recommended"]
                only = [_cell(run, rec["layer"], -rec["multiplier"]), _cell(run, rec["layer"], rec["multiplier"])]
                lines.append(f"| {b} | {' / '.join(_f(x['p_matching']) for x in only)} | "
                             f"{' / '.join(_f(x['p_matching']) for x in run['all_positions'])} |")
    lines.append("\n**Per layer** (test set, debiased p(matching); raw multiplier +-1 and norm-relative +-0.2):\n")
    for b, run in runs.items():
        layers = run["layers"]
        curves = {"raw -1": [], "raw +1": [], "relative -0.2": [], "relative +0.2": []}
        for i in range(len(layers)):
            group = run["test"][1 + 4 * i : 5 + 4 * i]
            for name, s in zip(curves, group):
                curves[name].append(s["p_matching"])
        png = docs / "results" / f"ab_{b}_{tag}.png"
        write_atomic(png, curves_png(layers, curves, title=f"{b}: {_name(run)}, test set, both orders",
                                     y_label="p(matching), debiased", reference=run["test"][0]["p_matching"],
                                     limits=(0.0, 1.0)),
                     overwrite=True)
        lines.append(f"![{b} per layer](results/{png.name})\n")
        lines.append(f"<details><summary>{b}: table per layer</summary>\n")
        lines.append("| layer | raw -1 | raw +1 | rel -0.2 | rel +0.2 | multiplier for rel 0.2 | vector norm / residual norm |")
        lines.append("|---|---|---|---|---|---|---|")
        for i, layer in enumerate(layers):
            ratio = run["vector_norms"][str(layer)] / run["residual_norms"][str(layer)]
            lines.append(f"| {layer} | " + " | ".join(_f(c[i]) for c in curves.values()) +
                         f" | {_rel(run, layer):.1f} | {ratio:.3f} |")
        lines.append("\n</details>\n")
    side = _load(folder, "side_effects")
    if side:
        lines.append(f"**Side effects** (CAA's checks): A/B accuracy on the first {side['limit']} MMLU and TruthfulQA "
                     "questions of the shared sets, both orders averaged, with each vector at its recommended layer "
                     "and strength:\n")
        lines.append("| steering | " + " | ".join(side["labels"]) + " |")
        lines.append("|---|" + "---|" * len(side["labels"]))
        for name in ("mmlu", "truthfulqa"):
            lines.append(f"| {name} accuracy | " + " | ".join(_f(s["accuracy"]) for s in side[name]) + " |")
    secs = {b: r["seconds"] for b, r in runs.items()}
    lines.append("\nTime (seconds, this shared CPU): " + "; ".join(
        f"{b}: vectors {s['fit']:.0f}, validation sweep {s['val']:.0f}, test grid {s['test']:.0f}" for b, s in secs.items()) + ".\n")
    return "\n".join(lines) + "\n"


def sentiment_figures(out: Path, docs: Path) -> list[str]:
    """Copy each model's sentiment validation heatmap (effect) next to results.md and link it."""
    lines = []
    for tag in ("smollm2", "qwen"):
        png = out / tag / "sentiment-val-sweep" / "effect.png"
        if png.exists():
            target = docs / "results" / f"sentiment_effect_{tag}.png"
            write_atomic(target, png.read_bytes(), overwrite=True)
            lines.append(f"![sentiment sweep, {tag}](results/{target.name})")
    return lines


def sentiment_rows(folder: Path) -> list[str]:
    run = _load(folder, "sentiment")
    if not run:
        return []
    val, rec = run["val"], run["val"]["recommended"]
    rec = rec.get("up", rec) if rec else rec  # sweeps store the "up" pick under "up" (older runs: at top level)
    if not rec:
        return [f"| {_name(run)} | {val['note']} | | | | |"]
    t = run["test"]
    neutral = t["neutral"]
    controls = [k for k in t if k not in ("neutral",) and not k.endswith(" prompts")]
    ctrl = "; ".join(f"{k}: {t[k][0]['vader']:+.2f} -> {t[k][1]['vader']:+.2f}" for k in controls)
    return [f"| {_name(run)} | layer {rec['layer']}, strength {rec['value']:g} (x{rec['multiplier']:.1f}) | "
            f"{neutral[2]['vader']:+.2f} / {neutral[0]['vader']:+.2f} / {neutral[1]['vader']:+.2f} | "
            f"{neutral[0]['fluency']:.2f} -> {neutral[1]['fluency']:.2f} | {ctrl} | {run['seconds']:.0f} |"]


def write_sections(out: Path, docs: Path) -> None:
    s1 = ["## 1. The CAA A/B protocol on SmolLM2-135M-Instruct\n", ab_section(out / "smollm2", docs, "SmolLM2", "smollm2"),
          "Commands: `python bench/results_ab.py ab smollm2 --all-positions` then `python bench/results_ab.py write`; "
          "one behaviour's sweep alone: `steerlab sweep --task refusal --train-limit 200 --strengths=-0.2,0.2,0.4 "
          "--out sweeps/refusal`.\n"]
    qwen = ab_section(out / "qwen", docs, "Qwen2.5-Coder-0.5B-Instruct", "qwen")
    s3 = ["## 3. A larger model: Qwen2.5-Coder-0.5B-Instruct\n",
          "The same A/B protocol on Qwen2.5-Coder-0.5B-Instruct (24 layers, hidden size 896), made smaller to fit this "
          "CPU: fewer layers, test questions and training pairs, as listed below.\n", qwen,
          "**Sentiment, SmolLM2 beside Qwen.** Task `sentiment`: vector from steerlab's 72 shipped contrastive "
          "reply pairs; strengths 0.1, 0.2, 0.4 swept on "
          "validation prompts (VADER of greedy continuations, fluency = weighted n-gram entropy, bound 20%); test: "
          "DExperts neutral prompts steered -/0/+, negative prompts steered + and positive prompts steered -.\n",
          "| model | recommended (val) | neutral VADER -/0/+ | fluency 0 -> + | controls (0 -> steered) | seconds |",
          "|---|---|---|---|---|---|", *sentiment_rows(out / "smollm2"), *sentiment_rows(out / "qwen"), "",
          "Validation sweeps (effect = change in mean VADER; the outlined cell is the recommendation):\n",
          *sentiment_figures(out, docs),
          "\nCommands: `python bench/results_ab.py ab qwen --limit 20 --train-limit 64 --layer-step 3 "
          "--side-limit 20`, `python bench/results_ab.py sentiment smollm2 --limit 8 --layer-step 3` and the same "
          "with `qwen`, then `python bench/results_ab.py write`.\n"]
    path = docs / "results.md"
    text = path.read_text() if path.exists() else "# Measured results\n\n"
    for number, body in (("1", "\n".join(s1)), ("3", "\n".join(s3))):
        begin, end = f"<!-- results_ab section {number} begin -->", f"<!-- results_ab section {number} end -->"
        block = f"{begin}\n{body}\n{end}"
        if begin in text:
            text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(path, text.encode(), overwrite=True)
