"""Steering vectors trained to steer (issue 21): BiPO beside CAA at the same calibrated KL budget
(docs/results.md section 7).

  python experiments/trained/run.py measure sentiment  # SmolLM2: CAA and BiPO at layer 8, calibrated, on test prompts
  python experiments/trained/run.py measure cost       # fit seconds and peak RSS, 100 pairs at one layer, CAA beside
  python experiments/trained/run.py render             # the section from results.json (no model)

Both vectors are built from the same pairs at the same layer and each is calibrated by
`steerlab.evaluation.calibrate` (the KL budget and fluency bound every vector gets); the test numbers are
on held-out DExperts neutral prompts no fit or calibration saw. Each measure step runs in its own process
so its peak RSS is its own; `cost` starts one process per (model, method).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from common import load_study_model, save_json, study_parser, write_results_section  # noqa: E402

from steerlab.evaluation.ab import UNSTEERED, Cell  # noqa: E402
from steerlab.evaluation.calibrate import CalibrationConfig, calibrate  # noqa: E402
from steerlab.evaluation.compare import peak_memory_mib, reset_peak_memory  # noqa: E402
from steerlab.evaluation.fluency import distinct_n, repetition_rate  # noqa: E402
from steerlab.evaluation.sentiment import vader_scores  # noqa: E402
from steerlab.evaluation.stats import paired_interval  # noqa: E402
from steerlab.evaluation.sweep import generate_grid  # noqa: E402
from steerlab.evaluation.tasks import get_task  # noqa: E402
from steerlab.methods import fit  # noqa: E402
from steerlab.strength import multiplier_for  # noqa: E402

OUT = HERE / "out"
RESULTS = HERE / "results.json"
METHODS = ("caa", "bipo")
# The sentiment sweep's "up" layer on validation prompts in experiments/strength (the CAA reference protocol).
SENTIMENT_LAYER = 8
MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "qwen": "Qwen2.5-Coder-0.5B-Instruct"}


def _progress(stage: str, done: int, total: int) -> None:
    print(f"  {stage}: {done}/{total}", flush=True)


def _arm(texts: list[str], scores: list[float]) -> dict:
    return {
        "positive_share": sum(x >= 0.05 for x in scores) / len(scores),
        "negative_share": sum(x <= -0.05 for x in scores) / len(scores),
        "mean_compound": sum(scores) / len(scores),
        "distinct2": sum(distinct_n(x, 2) for x in texts) / len(texts),
        "repetition": sum(repetition_rate(x) for x in texts) / len(texts),
        "example": texts[0],
    }


def run_sentiment(args) -> dict:
    """Fit CAA and BiPO on the shipped pairs, calibrate each, then generate the test prompts at each calibrated strength."""
    lm = load_study_model("smollm2")
    task = get_task("sentiment")
    data = task.train_data()
    prompts = task.eval_items("test", limit=args.test)
    out: dict = {"methods": {}}
    base_scores: list[float] = []
    for method in METHODS:
        start = time.perf_counter()
        vector = fit(lm, data, method, layers=[SENTIMENT_LAYER])
        fitted = time.perf_counter() - start
        if not base_scores:  # the unsteered arm, once
            base = generate_grid(lm, prompts, vector, [UNSTEERED], chat=task.chat, max_new_tokens=args.tokens)[0]
            base_scores = vader_scores(base)
            out["unsteered"] = _arm(base, base_scores)
            start = time.perf_counter() - fitted
        record, vector = calibrate(lm, vector, CalibrationConfig(layers=[SENTIMENT_LAYER]), progress=_progress)
        calibrated = time.perf_counter() - start - fitted
        arms = {}
        for name, strength in (("up", record.up), ("down", record.down)):
            if strength is None:
                arms[name] = None
                continue
            cell = Cell(SENTIMENT_LAYER, multiplier_for(vector, SENTIMENT_LAYER, strength))
            texts = generate_grid(lm, prompts, vector, [cell], chat=task.chat, max_new_tokens=args.tokens)[0]
            scores = vader_scores(texts)
            iv = paired_interval(scores, base_scores).signed(1.0 if name == "up" else -1.0)
            arms[name] = dict(
                _arm(texts, scores), strength=strength, change=iv.mean, interval=[iv.low, iv.high], wrong_way=iv.fell
            )
        out["methods"][method] = {
            "arms": arms,
            "calibration": {"up": record.up, "down": record.down, "kl": record.kl, "note": record.note},
            "fit_stats": vector.meta.fit_stats,
            "seconds": {
                "fit": round(fitted, 1),
                "calibrate": round(calibrated),
                "test": round(time.perf_counter() - start - fitted - calibrated),
            },
        }
        print(json.dumps(out["methods"][method]["arms"], indent=1), flush=True)
    out["sizes"] = {"pairs": len(data.pairs), "layer": SENTIMENT_LAYER, "test": len(prompts), "tokens": args.tokens}
    out["threads"] = torch.get_num_threads()
    return out


def fit_cost(model: str, method: str, pairs: int) -> dict:
    """One fit in this process: seconds, the peak RSS of loading, and the peak RSS while fitting (model included)."""
    lm = load_study_model(model)
    loaded = peak_memory_mib()
    data = get_task("refusal").train_data(limit=pairs)
    reset_peak_memory()  # loading a GGUF peaks above the loaded model; the fit's own peak starts here
    start = time.perf_counter()
    vector = fit(lm, data, method, layers=[lm.default_layer()])
    return {
        "model": MODEL_NAMES[model],
        "method": method,
        "pairs": len(data.pairs),
        "layer": lm.default_layer(),
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib_loaded": loaded,
        "peak_rss_mib": peak_memory_mib(),
        "epochs_run": vector.meta.fit_stats.get("epochs_run"),
        "threads": torch.get_num_threads(),
    }


def run_cost(args) -> list[dict]:
    rows = []
    for model in ("smollm2", "qwen"):
        for method in METHODS:
            cmd = [sys.executable, __file__, "fit-one", model, method, str(args.pairs), "--threads", str(args.threads)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


# ---- render -------------------------------------------------------------------------------------------

INTRO = """## 7. Steering vectors trained to steer: BiPO beside CAA (issue 21)

BiPO (Cao et al., NeurIPS 2024) trains the vector itself: for each pair and a random sign d, adding d*v should
make the positive answer more likely than the negative one (d = +1) or the reverse (d = -1), each relative to the
unsteered model (`steerlab vector build --method bipo`; only the vector gets gradients; early stopping on a
held-out fifth of the pairs). Both methods below use the same pairs and layer, and each vector is calibrated by
`steerlab vector calibrate`'s rule (KL budget 0.5 nats per token on steerlab's neutral prompts, fluency bound
0.1), so they are compared at the same cost in next-token distribution, not at the same raw number.
Reproduce with `python experiments/trained/run.py measure sentiment|cost --threads 1`;
`python experiments/trained/run.py render` rewrites this section from experiments/trained/results.json.
"""


WHY_SENTIMENT = (
    "Why the goals are missed: upward, BiPO moves VADER further than CAA at the calibrated strength (+0.43 vs +0.36, "
    "intervals overlapping) but the positive share stays below 0.85 at this budget for both; section 5 reached 0.87 "
    "with CAA only at strength +0.25, beyond the fluency-calibrated +0.15. Downward, neither vector steers at its "
    "calibrated strength: the KL budget allows -0.25 for both, but the calibration's fluency check (greedy "
    "continuations of 8 neutral prompts, repetition at most 0.1 above unsteered) stops at -0.06 (CAA) and -0.04 "
    "(BiPO), where the change in compound is within noise. BiPO's validation loss was still falling at its last "
    "epoch (10 of 10), and its vector grew to 2.4x the CAA norm while turning away from it (cosine 0.72), so more "
    "epochs may move it further; what limits the downward arm here is fluency on neutral prompts, which the "
    "preference objective (log-probabilities of the pairs' answers) does not see."
)


def _f(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def sentiment_section(data: dict) -> str:
    base = data["unsteered"]
    sizes = data["sizes"]
    lines = [
        "### SmolLM2-135M-Instruct: sentiment on held-out DExperts neutral prompts",
        "",
        f"Vectors from steerlab's {sizes['pairs']} shipped reply pairs at layer {sizes['layer']} (the CAA sentiment "
        f"sweep's up layer on validation prompts, section 5); test: the first {sizes['test']} test prompts, "
        f"{sizes['tokens']} greedy tokens; positive share = VADER compound >= 0.05, negative share <= -0.05. "
        f"Change = mean compound moved toward the arm's direction, paired bootstrap 95% interval. "
        f"{data['threads']} thread.",
        "",
        "| method, arm | calibrated strength | positive share | negative share | mean compound | change [95% interval] "
        "| wrong way | distinct-2 (x unsteered) | repetition |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| unsteered | | {base['positive_share']:.2f} | {base['negative_share']:.2f} | {base['mean_compound']:+.3f} "
        f"| | | {base['distinct2']:.3f} | {base['repetition']:.3f} |",
    ]
    for method, result in data["methods"].items():
        for name in ("up", "down"):
            arm = result["arms"].get(name)
            if arm is None:
                lines.append(f"| {method}, {name} | none within the budget | | | | | | | |")
                continue
            lines.append(
                f"| {method}, {name} | {arm['strength']:+g} | {arm['positive_share']:.2f} | {arm['negative_share']:.2f} "
                f"| {arm['mean_compound']:+.3f} | {arm['change']:+.3f} [{arm['interval'][0]:+.3f}, "
                f"{arm['interval'][1]:+.3f}] | {arm['wrong_way']:.0%} | {arm['distinct2']:.3f} "
                f"({arm['distinct2'] / base['distinct2']:.2f}x) | {arm['repetition']:.3f} |"
            )
    lines.append("")
    for method, result in data["methods"].items():
        stats, secs = result["fit_stats"], result["seconds"]
        what = f"{method}: fit {secs['fit']} s, calibration {secs['calibrate']} s, test {secs['test']} s"
        if method == "bipo":
            layer = str(sizes["layer"])
            what += (
                f"; {stats['train_pairs']} training / {stats['val_pairs']} validation pairs, {stats['epochs_run']} "
                f"epochs, kept epoch {stats['best_epoch']}; loss train {stats['loss_train']}, val {stats['loss_val']}; "
                f"norm {stats['caa_norm'][layer]} (CAA start) -> {stats['norm'][layer]}, cosine to CAA "
                f"{stats['cosine_to_caa'][layer]}"
            )
        lines.append(f"- {what}.")
    lines += ["", *_calibration_lines(data), "", *_sentiment_goals(data), "", WHY_SENTIMENT]
    return "\n".join(lines) + "\n"


def _calibration_lines(data: dict) -> list[str]:
    """Per method and direction: the largest strength the KL budget allows, and what the fluency bound left."""
    out = []
    for method, result in data["methods"].items():
        cal = result["calibration"]
        parts = []
        for name, sign in (("up", 1), ("down", -1)):
            within = [float(s) for s, kl in cal["kl"][name].items() if kl <= 0.5]
            allowed = sign * max(within) if within else None
            parts.append(f"{name}: KL within 0.5 up to {_f(allowed, '{:+g}')}, fluent at {_f(cal[name], '{:+g}')}")
        out.append(f"- Calibration, {method}: " + "; ".join(parts) + ".")
    return out


def _sentiment_goals(data: dict) -> list[str]:
    base = data["unsteered"]["distinct2"]
    out = []
    for method, result in data["methods"].items():
        up, down = result["arms"].get("up"), result["arms"].get("down")
        parts = []
        for name, arm, key, goal in (("up", up, "positive_share", 0.85), ("down", down, "negative_share", 0.60)):
            if arm is None:
                parts.append(f"{name}: no calibrated strength, not met")
                continue
            met = arm[key] >= goal and arm["distinct2"] >= 0.9 * base
            parts.append(
                f"{name}: {key.replace('_', ' ')} {arm[key]:.2f} (goal >= {goal:.2f}), distinct-2 "
                f"{arm['distinct2'] / base:.2f}x (goal >= 0.9x): {'met' if met else 'not met'}"
            )
        out.append(f"Against the issue's goals, {method}: " + "; ".join(parts) + ".")
    return out


def cost_section(rows: list[dict]) -> str:
    lines = [
        "### Fit cost on this CPU: 100 pairs at one layer",
        "",
        "Refusal A/B training pairs (the first 100), each model's middle layer, one process per fit. Peak RSS while "
        "fitting includes the loaded model (its window starts after loading, Linux `clear_refs`); the column before "
        "it is the peak of loading (from steerlab's safetensors cache). BiPO at its default settings (at most 10 epochs, "
        "early stopping on 20 held-out pairs): its peak is one batch's activations of the blocks above the layer, "
        "kept for the backward pass, so `batch_tokens` (default 4096) bounds it. The 2-core machine was shared with "
        "another job, so the seconds are upper bounds.",
        "",
        "| model | method | layer | seconds | epochs | peak RSS of loading (MiB) | peak RSS while fitting (MiB) | threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['layer']} | {r['seconds']} | {r['epochs_run'] or '-'} "
            f"| {r['peak_rss_mib_loaded']} | {r['peak_rss_mib']} | {r['threads']} |"
        )
    return "\n".join(lines) + "\n"


def render(doc: Path) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    parts = [INTRO]
    for name, section in (("sentiment", sentiment_section), ("cost", cost_section)):
        parts.append(
            section(results[name]) if results.get(name) else f"_{name}: not measured in this run (see the report)._\n"
        )
    write_results_section("trained", "\n".join(parts), doc)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit-one"]:  # one fit in a fresh process, for `measure cost`
        model, method, pairs = argv[1], argv[2], int(argv[3])
        torch.set_num_threads(int(argv[5]) if len(argv) > 5 else 1)
        print(json.dumps(fit_cost(model, method, pairs)))
        return
    parser = study_parser(__doc__.splitlines()[0], ["sentiment", "cost"])
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=100)
    args = parser.parse_args(argv)
    if args.action == "measure":
        if args.step is None:
            parser.error("measure needs a step: sentiment or cost")
        torch.set_num_threads(args.threads)
        OUT.mkdir(parents=True, exist_ok=True)
        result = {"sentiment": run_sentiment, "cost": run_cost}[args.step](args)
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        saved[args.step] = result
        save_json(RESULTS, saved)
    render(args.doc)


if __name__ == "__main__":
    main()
